import CHugeAllocShims
import SystemPackage

/// An AF_XDP socket whose UMEM is a packet pool's memory.
///
/// Creation opens the socket (`socket(AF_XDP, SOCK_RAW, 0)`), registers the
/// pool's ``AFXDPUMEMLayout`` (`setsockopt(SOL_XDP, XDP_UMEM_REG)`), sizes
/// the fill and completion rings (`XDP_UMEM_FILL_RING`,
/// `XDP_UMEM_COMPLETION_RING`), reads their offsets
/// (`getsockopt(XDP_MMAP_OFFSETS)`) and maps them. Buffers allocated from
/// the pool go to the kernel with ``fill(_:)-(UnsafeBufferPointer<PacketBuffer>)``;
/// ``bind(interfaceIndex:queue:receiveRingEntries:flags:)`` adds an RX ring
/// and attaches to an interface queue, after which ``receive(maximum:)``
/// returns the filled buffers with their data offset and length set.
///
/// Noncopyable: the rings are unmapped and the socket closed (which
/// unregisters the UMEM) exactly once, when the value is destroyed. The pool
/// is kept alive until then.
@safe
public struct AFXDPSocket: ~Copyable {
    public let fileDescriptor: FileDescriptor
    public let layout: AFXDPUMEMLayout
    public let pool: PacketPool
    let fillRing: UnsafeMutablePointer<ha_xsk_ring>
    let completionRing: UnsafeMutablePointer<ha_xsk_ring>
    let receiveRing: UnsafeMutablePointer<ha_xsk_ring>

    /// Opens a socket with `pool` as its UMEM and maps fill and completion
    /// rings of the given sizes (powers of two).
    public init(umemOf pool: PacketPool, fillRingEntries: Int = 2048, completionRingEntries: Int = 2048) throws(AFXDPError) {
        for n in [fillRingEntries, completionRingEntries] where n <= 0 || n & (n - 1) != 0 {
            throw .ringSizeNotPowerOfTwo(entries: n)
        }
        let layout = try AFXDPUMEMLayout(pool: pool)
        let fd: FileDescriptor
        do { fd = try Sys.xdpSocket() } catch { throw AFXDPError(error) }
        let rings = UnsafeMutablePointer<ha_xsk_ring>.allocate(capacity: 3)
        unsafe rings.initialize(repeating: ha_xsk_ring(), count: 3)
        do {
            try unsafe Sys.xdpRegisterUMEM(
                fd, base: UnsafeMutableRawPointer(bitPattern: layout.base)!, length: layout.length,
                chunkSize: layout.chunkSize, headroom: layout.headroom, flags: 0)
            try unsafe Sys.xdpMapRing(fd, kind: HA_XSK_FILL, entries: UInt32(fillRingEntries), into: rings)
            try unsafe Sys.xdpMapRing(fd, kind: HA_XSK_COMPLETION, entries: UInt32(completionRingEntries), into: rings + 1)
        } catch {
            for i in 0..<3 { unsafe Sys.xdpUnmapRing(rings + i) }
            unsafe rings.deallocate()
            Sys.close(fd)
            throw AFXDPError(error)
        }
        self.fileDescriptor = fd
        self.layout = layout
        self.pool = pool
        unsafe fillRing = rings
        unsafe completionRing = rings + 1
        unsafe receiveRing = rings + 2
    }

    deinit {
        for i in 0..<3 { unsafe Sys.xdpUnmapRing(fillRing + i) }
        unsafe fillRing.deallocate()
        Sys.close(fileDescriptor)
    }

    /// Slots of the fill ring.
    public var fillRingEntries: Int { Int(unsafe fillRing.pointee.size) }
    /// Slots of the completion ring.
    public var completionRingEntries: Int { Int(unsafe completionRing.pointee.size) }
    /// Addresses on the fill ring the kernel has not taken yet.
    public var fillRingPending: Int { Int(unsafe ha_xsk_ring_pending(fillRing)) }
    /// The UMEM addresses on the fill ring not yet taken by the kernel, read
    /// back from the shared ring memory, oldest first.
    public var fillRingAddresses: [UInt64] {
        let ring = unsafe fillRing.pointee
        let producer = unsafe ring.producer.pointee
        let consumer = unsafe ring.consumer.pointee
        let descs = unsafe ring.descs.assumingMemoryBound(to: UInt64.self)
        return (0..<Int(producer &- consumer)).map { unsafe descs[Int((consumer &+ UInt32($0)) & ring.mask)] }
    }

    /// Hands buffers to the kernel to receive into: puts each one's chunk
    /// address on the fill ring. Returns how many fit; the rest stay the
    /// caller's. The buffers must be this socket's pool's.
    @discardableResult
    public func fill(_ buffers: UnsafeBufferPointer<PacketBuffer>) -> Int {
        let n = min(buffers.count, fillRingEntries)
        guard n > 0 else { return 0 }
        return unsafe withUnsafeTemporaryAllocation(of: UInt64.self, capacity: n) { addresses in
            for i in 0..<n { unsafe addresses[i] = layout.address(of: buffers[i]) }
            return Int(unsafe ha_xsk_fill(fillRing, addresses.baseAddress!, UInt32(n)))
        }
    }

    /// Hands buffers to the kernel; returns how many fit on the fill ring.
    @discardableResult
    public func fill(_ buffers: [PacketBuffer]) -> Int {
        unsafe buffers.withUnsafeBufferPointer { unsafe fill($0) }
    }

    /// Buffers the kernel finished transmitting (off the completion ring).
    public func takeCompleted(maximum: Int = 64) -> [PacketBuffer] {
        guard maximum > 0 else { return [] }
        var addresses = [UInt64](repeating: 0, count: maximum)
        let n = unsafe ha_xsk_complete(completionRing, &addresses, UInt32(maximum))
        return addresses.prefix(Int(n)).compactMap { layout.buffer(atAddress: $0) }
    }

    /// `sxdp_flags` of ``bind(interfaceIndex:queue:receiveRingEntries:flags:)``.
    public struct BindFlags: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// `XDP_COPY`: copy mode even where the driver supports zero-copy.
        public static var copy: BindFlags { BindFlags(rawValue: HA_XDP_COPY) }
        /// `XDP_USE_NEED_WAKEUP`: the kernel may ask to be woken by `poll`/`sendto`.
        public static var useNeedWakeup: BindFlags { BindFlags(rawValue: HA_XDP_USE_NEED_WAKEUP) }
    }

    /// Maps an RX ring and binds to queue `queue` of interface
    /// `interfaceIndex` (`bind(2)` with `struct sockaddr_xdp`). Frames arrive
    /// once an XDP program redirects them to this socket.
    public func bind(
        interfaceIndex: UInt32, queue: UInt32 = 0, receiveRingEntries: Int = 2048, flags: BindFlags = []
    ) throws(AFXDPError) {
        guard receiveRingEntries > 0, receiveRingEntries & (receiveRingEntries - 1) == 0 else {
            throw .ringSizeNotPowerOfTwo(entries: receiveRingEntries)
        }
        do {
            if unsafe receiveRing.pointee.size == 0 {
                try unsafe Sys.xdpMapRing(fileDescriptor, kind: HA_XSK_RX, entries: UInt32(receiveRingEntries), into: receiveRing)
            }
            try Sys.xdpBind(fileDescriptor, interfaceIndex: interfaceIndex, queue: queue, flags: flags.rawValue)
        } catch { throw AFXDPError(error) }
    }

    /// Frames received since the last call, at most `maximum`: each buffer's
    /// data offset and length set to where the kernel wrote the frame.
    public func receive(maximum: Int = 64) -> [PacketBuffer] {
        guard maximum > 0, unsafe receiveRing.pointee.size != 0 else { return [] }
        var addresses = [UInt64](repeating: 0, count: maximum)
        var lengths = [UInt32](repeating: 0, count: maximum)
        let n = Int(unsafe ha_xsk_receive(receiveRing, &addresses, &lengths, UInt32(maximum)))
        var result: [PacketBuffer] = []
        for i in 0..<n {
            guard let b = layout.buffer(atAddress: addresses[i]) else { continue }
            let chunkStart = UInt64(layout.bufferIndex(ofAddress: addresses[i])! * layout.chunkSize)
            b.dataOffset = Int(addresses[i] - chunkStart) - PacketBuffer.metadataSize
            b.store(UInt16(truncatingIfNeeded: lengths[i]), PacketBuffer.Field.dataLength)
            b.packetLength = Int(lengths[i])
            result.append(b)
        }
        return result
    }
}
