import CHugeAllocShims
import SystemPackage

/// An AF_XDP socket whose UMEM is a packet pool's memory, receiving and
/// transmitting frames in the pool's buffers.
///
/// Creation opens the socket (`socket(AF_XDP, SOCK_RAW, 0)`), registers the
/// pool's ``AFXDPUMEMLayout`` (`setsockopt(SOL_XDP, XDP_UMEM_REG)`), sizes
/// the fill and completion rings (`XDP_UMEM_FILL_RING`,
/// `XDP_UMEM_COMPLETION_RING`), reads their offsets
/// (`getsockopt(XDP_MMAP_OFFSETS)`) and maps them. Buffers allocated from
/// the pool go to the kernel with ``fill(_:)-(UnsafeBufferPointer<PacketBuffer>)``;
/// ``bind(interfaceIndex:queue:receiveRingEntries:transmitRingEntries:flags:)``
/// adds the RX and TX rings (`XDP_RX_RING`, `XDP_TX_RING`) and attaches to an
/// interface queue, after which ``receive(into:)`` returns the filled buffers
/// with their data offset and length set, and
/// ``transmit(_:kick:)-(UnsafeBufferPointer<PacketBuffer>,_)`` sends
/// buffers' data, the buffers coming back with ``freeCompleted(maximum:)``
/// or ``takeCompleted(into:)``.
///
/// Ownership: a buffer handed to ``fill(_:)-(UnsafeBufferPointer<PacketBuffer>)``
/// or ``transmit(_:kick:)-(UnsafeBufferPointer<PacketBuffer>,_)`` is the
/// kernel's until it comes back from ``receive(into:)`` or the completion
/// ring; the socket records which (``kernelOwnedCount``). When the socket is
/// destroyed, every buffer the kernel still holds (on the fill, RX, TX or
/// completion ring, or in flight between them) goes back to the pool: the
/// caller frees only the buffers it holds itself.
///
/// Noncopyable: the rings are unmapped and the socket closed (which
/// unregisters the UMEM) exactly once, when the value is destroyed. The pool
/// is kept alive until then. One thread at a time: the rings are
/// single-producer, single-consumer.
@safe
public struct AFXDPSocket: ~Copyable {
    public let fileDescriptor: FileDescriptor
    public let layout: AFXDPUMEMLayout
    public let pool: PacketPool
    let fillRing: UnsafeMutablePointer<ha_xsk_ring>
    let completionRing: UnsafeMutablePointer<ha_xsk_ring>
    let receiveRing: UnsafeMutablePointer<ha_xsk_ring>
    let transmitRing: UnsafeMutablePointer<ha_xsk_ring>
    /// The chunks the kernel holds, and the socket's counters.
    let kernel: AFXDPKernelBuffers
    /// log2 of the chunk size: UMEM address → chunk index is one shift.
    let chunkShift: Int

    static let ringCount = 4

    /// Opens a socket with `pool` as its UMEM and maps fill and completion
    /// rings of the given sizes (powers of two).
    public init(umemOf pool: PacketPool, fillRingEntries: Int = 2048, completionRingEntries: Int = 2048) throws(AFXDPError) {
        for n in [fillRingEntries, completionRingEntries] where n <= 0 || n & (n - 1) != 0 {
            throw .ringSizeNotPowerOfTwo(entries: n)
        }
        let layout = try AFXDPUMEMLayout(pool: pool)
        let fd: FileDescriptor
        do { fd = try Sys.xdpSocket() } catch { throw AFXDPError(error) }
        let rings = UnsafeMutablePointer<ha_xsk_ring>.allocate(capacity: Self.ringCount)
        unsafe rings.initialize(repeating: ha_xsk_ring(), count: Self.ringCount)
        do {
            try unsafe Sys.xdpRegisterUMEM(
                fd, base: UnsafeMutableRawPointer(bitPattern: layout.base)!, length: layout.length,
                chunkSize: layout.chunkSize, headroom: layout.headroom, flags: 0)
            try unsafe Sys.xdpMapRing(fd, kind: HA_XSK_FILL, entries: UInt32(fillRingEntries), into: rings)
            try unsafe Sys.xdpMapRing(fd, kind: HA_XSK_COMPLETION, entries: UInt32(completionRingEntries), into: rings + 1)
        } catch {
            for i in 0..<Self.ringCount { unsafe Sys.xdpUnmapRing(rings + i) }
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
        unsafe transmitRing = rings + 3
        kernel = AFXDPKernelBuffers(chunkCount: layout.chunkCount)
        chunkShift = layout.chunkSize.trailingZeroBitCount
    }

    /// Unmaps the rings and closes the socket (`munmap(2)`, `close(2)`; the
    /// kernel unbinds it and drops the UMEM), then frees to the pool every
    /// buffer the kernel held: those on the fill, RX, TX and completion
    /// rings and those between them. A frame still being sent at that
    /// moment may go out with what its buffer holds by then.
    deinit {
        for i in 0..<Self.ringCount { unsafe Sys.xdpUnmapRing(fillRing + i) }
        unsafe fillRing.deallocate()
        Sys.close(fileDescriptor)
        let pool = self.pool
        let batch = unsafe kernel.buffers
        var n = 0
        kernel.removeAll { chunk in
            unsafe batch[n] = buffer(ofChunk: chunk)
            n += 1
            if n == AFXDPKernelBuffers.batchLimit {
                unsafe pool.free(batch, count: n)
                n = 0
            }
        }
        unsafe pool.free(batch, count: n)
    }

    /// Slots of the fill ring.
    public var fillRingEntries: Int { Int(unsafe fillRing.pointee.size) }
    /// Slots of the completion ring.
    public var completionRingEntries: Int { Int(unsafe completionRing.pointee.size) }
    /// Slots of the RX ring (0 before ``bind(interfaceIndex:queue:receiveRingEntries:transmitRingEntries:flags:)``).
    public var receiveRingEntries: Int { Int(unsafe receiveRing.pointee.size) }
    /// Slots of the TX ring (0 before ``bind(interfaceIndex:queue:receiveRingEntries:transmitRingEntries:flags:)``).
    public var transmitRingEntries: Int { Int(unsafe transmitRing.pointee.size) }
    /// Addresses on the fill ring the kernel has not taken yet.
    public var fillRingPending: Int { Int(unsafe ha_xsk_ring_pending(fillRing)) }
    /// Frames on the RX ring not yet taken by ``receive(into:)``.
    public var receiveRingPending: Int {
        unsafe receiveRing.pointee.size == 0 ? 0 : Int(unsafe ha_xsk_ring_pending(receiveRing))
    }
    /// Frames on the TX ring the kernel has not taken yet (it takes them
    /// when kicked, in copy mode at most 32 per kick).
    public var transmitRingPending: Int {
        unsafe transmitRing.pointee.size == 0 ? 0 : Int(unsafe ha_xsk_ring_pending(transmitRing))
    }
    /// Transmitted buffers on the completion ring, not yet taken back.
    public var completionRingPending: Int { Int(unsafe ha_xsk_ring_pending(completionRing)) }
    /// Buffers the kernel holds: handed over by ``fill(_:)-(UnsafeBufferPointer<PacketBuffer>)``
    /// or ``transmit(_:kick:)-(UnsafeBufferPointer<PacketBuffer>,_)`` and not yet
    /// back from ``receive(into:)`` or the completion ring. These go back to
    /// the pool when the socket is destroyed.
    public var kernelOwnedCount: Int { kernel.count }
    /// Frames handed to ``transmit(_:kick:)-(UnsafeBufferPointer<PacketBuffer>,_)``
    /// whose buffers have not come back on the completion ring yet.
    public var transmitsInFlight: Int { kernel.transmitsInFlight }

    /// The UMEM addresses on the fill ring not yet taken by the kernel, read
    /// back from the shared ring memory, oldest first.
    public var fillRingAddresses: [UInt64] {
        let ring = unsafe fillRing.pointee
        let producer = unsafe ring.producer.pointee
        let consumer = unsafe ring.consumer.pointee
        let descs = unsafe ring.descs.assumingMemoryBound(to: UInt64.self)
        return (0..<Int(producer &- consumer)).map { unsafe descs[Int((consumer &+ UInt32($0)) & ring.mask)] }
    }

    /// The chunk index of `buffer`, or a typed error when it is not one of
    /// this UMEM's buffers or the kernel already holds it.
    @inline(__always)
    func chunk(of buffer: PacketBuffer) throws(AFXDPError) -> Int {
        let offset = UInt(bitPattern: unsafe buffer.metadata) &- layout.base
        guard offset < UInt(layout.length), offset & UInt(layout.chunkSize - 1) == 0 else {
            throw .bufferNotInUMEM(address: UInt(bitPattern: unsafe buffer.metadata), base: layout.base, length: layout.length)
        }
        return Int(offset &>> UInt(chunkShift))
    }

    /// The buffer of chunk `chunk`.
    @inline(__always)
    func buffer(ofChunk chunk: Int) -> PacketBuffer {
        unsafe PacketBuffer(metadata: UnsafeMutableRawPointer(bitPattern: layout.base &+ UInt(chunk &<< chunkShift))!)
    }

    /// Hands buffers to the kernel to receive into: puts each one's chunk
    /// address on the fill ring. Returns how many were taken, from the
    /// front: as many as the ring has room for. The rest stay the caller's.
    /// Throws, taking none, when the first buffer is not one of this pool's
    /// or the kernel already holds it; a bad buffer further on ends the
    /// batch there (the next call, starting with it, reports it).
    @discardableResult
    public func fill(_ buffers: UnsafeBufferPointer<PacketBuffer>) throws(AFXDPError) -> Int {
        let addresses = unsafe kernel.addresses
        var done = 0
        while done < buffers.count {
            let n = min(buffers.count - done, Int(unsafe ha_xsk_ring_room(fillRing)), AFXDPKernelBuffers.batchLimit)
            guard n > 0 else { break }
            var taken = 0
            while taken < n {
                let chunk: Int
                do throws(AFXDPError) { chunk = try self.chunk(of: unsafe buffers[done + taken]) } catch {
                    if done + taken == 0 { throw error }
                    break
                }
                guard kernel.take(chunk) else {
                    if done + taken == 0 { throw AFXDPError.bufferAlreadyWithKernel(index: chunk) }
                    break
                }
                unsafe addresses[taken] = UInt64(chunk &<< chunkShift)
                taken += 1
            }
            _ = unsafe ha_xsk_fill(fillRing, addresses, UInt32(taken))
            done += taken
            if taken < n { break }
        }
        return done
    }

    /// Takes up to `count` free buffers straight from the socket's pool and
    /// puts them on the fill ring: `fill(pool.allocate(count:))` without the
    /// array, and without resetting the buffers' metadata, which
    /// ``receive(into:)`` writes when the kernel hands a buffer back (a free
    /// buffer has no next segment, one owner and its own memory already).
    /// Returns how many went onto the ring: fewer than `count` when the ring
    /// has less room or the pool fewer free buffers. The buffers are the
    /// kernel's until ``receive(into:)`` gives them back, and go back to the
    /// pool when the socket is destroyed. No allocation.
    @discardableResult
    public func fill(count: Int) -> Int {
        let objects = unsafe kernel.objects
        let base = layout.base, shift = UInt(chunkShift), mempool = pool.mempool
        var done = 0
        while done < count {
            var first: UInt32 = 0
            let room = Int(unsafe ha_xsk_reserve(fillRing, UInt32(AFXDPKernelBuffers.batchLimit), &first))
            let n = min(count - done, room)
            guard n > 0 else { break }
            var got = n
            if unsafe !mempool.get(into: objects, count: n) {
                // Fewer than n free: as many as there are.
                got = 0
                while got < n, let object = unsafe mempool.get() {
                    unsafe objects[got] = object
                    got += 1
                }
            }
            let ring = unsafe fillRing.pointee
            let descs = unsafe ring.descs!.assumingMemoryBound(to: UInt64.self), mask = unsafe ring.mask
            var taken: UInt32 = 0
            for i in 0..<got {
                let chunk = Int(bitPattern: (UInt(bitPattern: unsafe objects[i]) &- base) &>> shift)
                // Set already: the caller freed a buffer the kernel holds; it
                // stays the kernel's (and goes back to the pool at close).
                guard kernel.take(chunk) else { continue }
                unsafe descs[Int((first &+ taken) & mask)] = UInt64(chunk &<< chunkShift)
                taken &+= 1
            }
            unsafe ha_xsk_submit(fillRing, taken)
            done += Int(taken)
            if got < n { break }
        }
        return done
    }

    /// Hands buffers to the kernel; returns how many it took (see
    /// ``fill(_:)-(UnsafeBufferPointer<PacketBuffer>)``).
    @discardableResult
    public func fill(_ buffers: [PacketBuffer]) throws(AFXDPError) -> Int {
        try unsafe buffers.withUnsafeBufferPointer { (b) throws(AFXDPError) -> Int in try unsafe fill(b) }
    }

    /// `sxdp_flags` of ``bind(interfaceIndex:queue:receiveRingEntries:transmitRingEntries:flags:)``.
    public struct BindFlags: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// `XDP_COPY`: copy mode even where the driver supports zero-copy.
        public static var copy: BindFlags { BindFlags(rawValue: HA_XDP_COPY) }
        /// `XDP_USE_NEED_WAKEUP`: the kernel says, with `XDP_RING_NEED_WAKEUP`
        /// in a ring's flags, when it must be woken by `sendto`/`poll`;
        /// without it every transmit is kicked.
        public static var useNeedWakeup: BindFlags { BindFlags(rawValue: HA_XDP_USE_NEED_WAKEUP) }
    }

    /// Maps the RX and TX rings (`setsockopt(SOL_XDP, XDP_RX_RING /
    /// XDP_TX_RING)`, `mmap(2)` at the offsets of `XDP_MMAP_OFFSETS`) and
    /// binds to queue `queue` of interface `interfaceIndex` (`bind(2)` with
    /// `struct sockaddr_xdp`). Frames arrive once an XDP program redirects
    /// them to this socket. A ring size of 0 leaves that ring out (a socket
    /// that only sends or only receives); at least one is needed.
    public func bind(
        interfaceIndex: UInt32, queue: UInt32 = 0, receiveRingEntries: Int = 2048, transmitRingEntries: Int = 2048,
        flags: BindFlags = []
    ) throws(AFXDPError) {
        for n in [receiveRingEntries, transmitRingEntries] where n < 0 || n & (n &- 1) != 0 {
            throw .ringSizeNotPowerOfTwo(entries: n)
        }
        guard receiveRingEntries > 0 || transmitRingEntries > 0 else { throw .noReceiveOrTransmitRing }
        do {
            if receiveRingEntries > 0, unsafe receiveRing.pointee.size == 0 {
                try unsafe Sys.xdpMapRing(fileDescriptor, kind: HA_XSK_RX, entries: UInt32(receiveRingEntries), into: receiveRing)
            }
            if transmitRingEntries > 0, unsafe transmitRing.pointee.size == 0 {
                try unsafe Sys.xdpMapRing(fileDescriptor, kind: HA_XSK_TX, entries: UInt32(transmitRingEntries), into: transmitRing)
            }
            try Sys.xdpBind(fileDescriptor, interfaceIndex: interfaceIndex, queue: queue, flags: flags.rawValue)
        } catch { throw AFXDPError(error) }
        kernel.alwaysKick = !flags.contains(.useNeedWakeup)
    }

    // MARK: receiving

    /// Takes up to `buffers.count` received frames off the RX ring into
    /// `buffers`, each buffer's data offset and length set to where the
    /// kernel wrote the frame; returns how many. No allocation: the
    /// descriptors are read in place on the ring.
    public func receive(into buffers: UnsafeMutableBufferPointer<PacketBuffer>) -> Int {
        guard let out = buffers.baseAddress else { return 0 }
        return takeReceived(maximum: buffers.count) { i, frame in unsafe out[i] = frame.adopt() }
    }

    /// Takes up to `maximum` frames off the RX ring, in place, calling
    /// `body(i, frame)` for the `i`th one whose buffer the fill ring gave
    /// (anything else is not ours to hand out and is skipped); returns how
    /// many. Touches no buffer memory itself.
    @inline(__always)
    func takeReceived(maximum: Int, _ body: (Int, AFXDPFrame) -> Void) -> Int {
        guard unsafe receiveRing.pointee.size != 0, maximum > 0 else { return 0 }
        let ring = unsafe receiveRing.pointee
        let descs = unsafe ring.descs!, mask = unsafe ring.mask
        let inChunkMask = UInt64(layout.chunkSize &- 1), shift = UInt64(chunkShift)
        var first: UInt32 = 0
        let got = unsafe ha_xsk_peek(receiveRing, UInt32(truncatingIfNeeded: min(maximum, Int(UInt32.max))), &first)
        var done = 0
        for i in 0..<got {
            // struct xdp_desc: u64 addr, u32 len, u32 options.
            let d = unsafe descs + Int((first &+ i) & mask) &<< 4
            let address = unsafe d.load(as: UInt64.self)
            let length = unsafe d.load(fromByteOffset: 8, as: UInt32.self)
            let chunk = Int(truncatingIfNeeded: address &>> shift)
            guard kernel.giveBack(chunk) else { continue }
            let offset = Int(truncatingIfNeeded: address & inChunkMask) &- PacketBuffer.metadataSize
            body(done, AFXDPFrame(buffer: buffer(ofChunk: chunk), dataOffset: offset, length: Int(length)))
            done &+= 1
        }
        unsafe ha_xsk_release(receiveRing, got)
        return done
    }

    /// Frames received since the last call, at most `maximum` (see
    /// ``receive(into:)``, which allocates nothing).
    public func receive(maximum: Int = 64) -> [PacketBuffer] {
        guard maximum > 0 else { return [] }
        return unsafe [PacketBuffer](unsafeUninitializedCapacity: maximum) { storage, initialized in
            initialized = unsafe receive(into: storage)
        }
    }
}
