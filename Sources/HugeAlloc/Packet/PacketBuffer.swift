import Synchronization

/// A handle to one packet buffer of a ``PacketPool``: the address of the
/// buffer's 64-byte metadata block, nothing else.
///
/// A buffer is laid out mbuf-style, metadata first, in one pool element:
///
///     +0     metadata (64 bytes, one cache line; see ``PacketBuffer/Field``)
///     +64    headroom (``PacketPoolConfiguration/headroom`` bytes)
///     +64+H  data room (``PacketPoolConfiguration/dataRoom`` bytes)
///
/// The handle is a plain value of pointer size: copying it copies the
/// address, not the buffer, and no class instance or reference count exists
/// per handle. Ownership is by convention, as with DPDK's `rte_mbuf *`: a
/// handle obtained from ``PacketPool/allocate()`` is freed once, with
/// ``PacketPool/free(_:)-(PacketBuffer)``; ``retain()`` adds an owner.
///
/// Every accessor reads or writes the metadata in place; they are all
/// inlinable so a caller's loop compiles them to single loads and stores.
@frozen @safe
public struct PacketBuffer: Hashable, @unchecked Sendable {
    /// The buffer's metadata block (the pool element's first byte).
    public let metadata: UnsafeMutableRawPointer

    @inlinable @inline(__always)
    public init(metadata: UnsafeMutableRawPointer) { unsafe self.metadata = metadata }

    @inlinable public static func == (a: PacketBuffer, b: PacketBuffer) -> Bool {
        unsafe a.metadata == b.metadata
    }

    @inlinable public func hash(into hasher: inout Hasher) { unsafe hasher.combine(metadata) }

    /// Byte offsets of the metadata fields. Pinned by tests.
    @usableFromInline
    enum Field {
        /// UInt64: virtual address of the buffer the data lies in (its headroom
        /// start); another buffer's for an indirect clone.
        @inlinable static var bufferAddress: Int { 0 }
        /// UInt64: physical address of `bufferAddress`, 0 when unknown.
        @inlinable static var bufferPhysical: Int { 8 }
        /// UInt64: metadata address of the next segment, 0 for the last one.
        @inlinable static var next: Int { 16 }
        /// UInt16: data start, from `bufferAddress`.
        @inlinable static var dataOffset: Int { 24 }
        /// UInt16: data bytes in this segment.
        @inlinable static var dataLength: Int { 26 }
        /// UInt16: segments in the chain (meaningful in the first segment).
        @inlinable static var segmentCount: Int { 28 }
        /// UInt16: ``PacketBuffer/indirectFlag``.
        @inlinable static var flags: Int { 30 }
        /// UInt32: bytes in the whole chain (meaningful in the first segment).
        @inlinable static var packetLength: Int { 32 }
        /// Atomic<UInt32>: owners of this buffer's memory; 1 while in the pool.
        @inlinable static var referenceCount: Int { 36 }
        /// UInt32: headroom + data room of the buffer at `bufferAddress`.
        @inlinable static var bufferLength: Int { 40 }
        /// UInt32: the buffer's index in its pool (fixed at creation).
        @inlinable static var index: Int { 44 }
        /// UInt64: free for the application (port, flow hash, timestamp...).
        @inlinable static var userData: Int { 48 }
        /// UInt64: the owning pool's identity, its mempool's base address
        /// (the same in every process sharing the pool), fixed at creation.
        @inlinable static var pool: Int { 56 }
    }

    /// Bytes of metadata before the headroom.
    public static let metadataSize = 64
    /// Set in the flags of a buffer whose data is another buffer's (a clone).
    @usableFromInline static let indirectFlag: UInt16 = 1

    // MARK: raw field access (the only pointer arithmetic of the packet layer)

    @inlinable @inline(__always)
    func load<T>(_ offset: Int, as type: T.Type) -> T {
        unsafe metadata.load(fromByteOffset: offset, as: T.self)
    }

    @inlinable @inline(__always)
    func store<T>(_ value: T, _ offset: Int) {
        unsafe metadata.storeBytes(of: value, toByteOffset: offset, as: T.self)
    }

    @inlinable @inline(__always)
    var referenceCounter: UnsafeMutablePointer<Atomic<UInt32>> {
        unsafe (metadata + Field.referenceCount).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    // MARK: data

    /// The first byte of this segment's data.
    @inlinable public var data: UnsafeMutableRawPointer {
        @inline(__always) get {
            unsafe UnsafeMutableRawPointer(bitPattern: UInt(load(Field.bufferAddress, as: UInt64.self)))!
                + Int(load(Field.dataOffset, as: UInt16.self))
        }
    }

    /// This segment's data as a buffer pointer of ``length`` bytes.
    @inlinable public var bytes: UnsafeMutableRawBufferPointer {
        unsafe UnsafeMutableRawBufferPointer(start: data, count: length)
    }

    /// Bytes of data in this segment. Setting it adds the change to this
    /// segment's ``packetLength`` too, which keeps a one-segment packet
    /// consistent; grow a chain through its first segment's ``append(_:)``.
    /// The new length must fit in the ``tailroom`` (not checked here).
    @inlinable public var length: Int {
        @inline(__always) get { Int(load(Field.dataLength, as: UInt16.self)) }
        @inline(__always) nonmutating set {
            let old = load(Field.dataLength, as: UInt16.self)
            store(UInt16(truncatingIfNeeded: newValue), Field.dataLength)
            store(load(Field.packetLength, as: UInt32.self) &+ UInt32(truncatingIfNeeded: newValue) &- UInt32(old),
                  Field.packetLength)
        }
    }

    /// Where the data starts, in bytes from the start of the headroom.
    @inlinable public var dataOffset: Int {
        @inline(__always) get { Int(load(Field.dataOffset, as: UInt16.self)) }
        @inline(__always) nonmutating set { store(UInt16(truncatingIfNeeded: newValue), Field.dataOffset) }
    }

    /// Bytes free before the data (the headroom left to prepend headers).
    @inlinable public var headroom: Int { dataOffset }

    /// Bytes free after the data in this segment.
    @inlinable public var tailroom: Int { bufferLength - dataOffset - length }

    /// Headroom plus data room of the memory the data lies in.
    @inlinable public var bufferLength: Int { Int(load(Field.bufferLength, as: UInt32.self)) }

    /// Bytes of the whole packet, all segments (read it on the first segment).
    @inlinable public var packetLength: Int {
        @inline(__always) get { Int(load(Field.packetLength, as: UInt32.self)) }
        @inline(__always) nonmutating set { store(UInt32(truncatingIfNeeded: newValue), Field.packetLength) }
    }

    /// Segments in the packet (read it on the first segment).
    @inlinable public var segmentCount: Int { Int(load(Field.segmentCount, as: UInt16.self)) }

    /// The next segment, or nil for the last.
    @inlinable public var next: PacketBuffer? {
        let bits = load(Field.next, as: UInt64.self)
        guard bits != 0 else { return nil }
        return unsafe PacketBuffer(metadata: UnsafeMutableRawPointer(bitPattern: UInt(bits))!)
    }

    /// Application data carried with the buffer (not reset on allocation).
    @inlinable public var userData: UInt64 {
        @inline(__always) get { load(Field.userData, as: UInt64.self) }
        @inline(__always) nonmutating set { store(newValue, Field.userData) }
    }

    /// The buffer's index in its pool, 0..<count, fixed for its lifetime: the
    /// ixy / AF_XDP style name of a buffer.
    @inlinable public var index: Int { Int(load(Field.index, as: UInt32.self)) }

    /// Whether this buffer is an indirect clone sharing another buffer's data.
    @inlinable public var isIndirect: Bool { load(Field.flags, as: UInt16.self) & Self.indirectFlag != 0 }

    /// Owners of this segment: 1 for a buffer with one owner; ``retain()``
    /// adds one, and each indirect clone adds one to the buffer it shares.
    /// The segment goes back to its pool when the count drops to zero.
    @inlinable public var referenceCount: Int {
        Int(unsafe referenceCounter.pointee.load(ordering: .relaxed))
    }

    /// For an indirect clone, the buffer whose memory holds the data.
    @inlinable var directBuffer: PacketBuffer {
        unsafe PacketBuffer(
            metadata: UnsafeMutableRawPointer(bitPattern: UInt(load(Field.bufferAddress, as: UInt64.self)))!
                - PacketBuffer.metadataSize)
    }

    // MARK: physical addresses

    /// The physical address (IOVA) of the first data byte, for a device's
    /// descriptor; nil when the kernel hid physical addresses. Read from the
    /// metadata, where the pool stored it at creation from `/proc/self/pagemap`.
    @inlinable public var dataPhysicalAddress: PhysicalAddress? {
        let physical = load(Field.bufferPhysical, as: UInt64.self)
        guard physical != 0 else { return nil }
        return PhysicalAddress(rawValue: physical &+ UInt64(load(Field.dataOffset, as: UInt16.self)))
    }

    /// The physical address of the buffer's headroom start (DPDK's `buf_iova`).
    @inlinable public var bufferPhysicalAddress: PhysicalAddress? {
        let physical = load(Field.bufferPhysical, as: UInt64.self)
        return physical == 0 ? nil : PhysicalAddress(rawValue: physical)
    }

    // MARK: headroom and tailroom

    /// Moves the data start `count` bytes back into the headroom (to prepend
    /// a header) and returns the new start; nil, changing nothing, when the
    /// headroom is smaller. Like DPDK's `rte_pktmbuf_prepend`.
    @inlinable @discardableResult
    public func prepend(_ count: Int) -> UnsafeMutableRawPointer? {
        guard count >= 0, count <= dataOffset else { return nil }
        dataOffset -= count
        store(UInt16(truncatingIfNeeded: length + count), Field.dataLength)
        packetLength += count
        return unsafe data
    }

    /// Removes `count` bytes from the data start; false when the segment holds fewer.
    @inlinable @discardableResult
    public func trimFront(_ count: Int) -> Bool {
        guard count >= 0, count <= length else { return false }
        dataOffset += count
        store(UInt16(truncatingIfNeeded: length - count), Field.dataLength)
        packetLength -= count
        return true
    }

    /// Adds data at the end of the packet: `count` bytes in the last
    /// segment's tailroom. Returns where to write them, or nil (changing
    /// nothing) when the tailroom is smaller. Call it on the first segment,
    /// whose ``packetLength`` it updates (DPDK's `rte_pktmbuf_append`).
    @inlinable @discardableResult
    public func append(_ count: Int) -> UnsafeMutableRawPointer? {
        var last = self
        while let n = last.next { last = n }
        guard count >= 0, count <= last.tailroom else { return nil }
        let end = unsafe last.data + last.length
        last.store(UInt16(truncatingIfNeeded: last.length + count), Field.dataLength)
        packetLength += count
        return unsafe end
    }

    /// Adds an owner to every segment: each goes back to its pool only when
    /// every owner freed the packet. An atomic increment per segment (DPDK's
    /// `rte_pktmbuf_refcnt_update(m, 1)`); returns the same handle for the
    /// new owner.
    @discardableResult
    public func retain() -> PacketBuffer {
        var segment: PacketBuffer? = self
        while let s = segment {
            unsafe s.referenceCounter.pointee.add(1, ordering: .relaxed)
            segment = s.next
        }
        return self
    }
}
