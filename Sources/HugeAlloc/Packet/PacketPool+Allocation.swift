import Synchronization

extension PacketPool {
    // MARK: facts

    /// How many buffers the pool holds in all.
    public var count: Int { mempool.count }
    /// Bytes per buffer: 64 of metadata, the headroom and the data room.
    public var bufferSize: Int { PacketBuffer.metadataSize + headroom + dataRoom }
    /// Bytes from one buffer's start to the next.
    public var bufferStride: Int { mempool.elementStride }
    /// Buffers free right now (in the shared backend and every thread's cache).
    public var availableCount: Int { mempool.availableCount }
    /// Buffers handed out and not yet freed.
    public var inUseCount: Int { mempool.inUseCount }

    /// The buffer with index `index` (0..<count), or nil when out of range,
    /// whether it is free or handed out.
    public func buffer(at index: Int) -> PacketBuffer? {
        guard let address = unsafe mempool.objectAddress(at: index) else { return nil }
        return unsafe PacketBuffer(metadata: address)
    }

    /// Whether `buffer` is one of this pool's.
    public func owns(_ buffer: PacketBuffer) -> Bool {
        unsafe mempool.contains(buffer.metadata) && buffer.load(PacketBuffer.Field.pool, as: UInt64.self) == identity
    }

    /// Writes each buffer's device address again from the mempool's
    /// (``Mempool/physicalAddress(of:)``), after an IOMMU container switched
    /// them to IOVAs or back. Only while every buffer is in the pool.
    package func refreshDeviceAddresses() {
        unsafe mempool.forEachObject { _, object in
            let b = unsafe PacketBuffer(metadata: object)
            let start = unsafe object + PacketBuffer.metadataSize
            b.store(unsafe mempool.physicalAddress(of: start)?.rawValue ?? 0, PacketBuffer.Field.bufferPhysical)
        }
    }

    /// Writes the fixed metadata (own buffer address, physical address,
    /// buffer length, index, pool) and the free state into every buffer.
    func initializeMetadata() {
        let bufferLength = UInt32(headroom + dataRoom)
        let me = identity
        let reset = resetWord
        unsafe mempool.forEachObject { index, object in
            let b = unsafe PacketBuffer(metadata: object)
            let start = unsafe object + PacketBuffer.metadataSize
            b.store(UInt64(UInt(bitPattern: start)), PacketBuffer.Field.bufferAddress)
            b.store(unsafe mempool.physicalAddress(of: start)?.rawValue ?? 0, PacketBuffer.Field.bufferPhysical)
            b.store(UInt64(0), PacketBuffer.Field.next)
            b.store(reset, PacketBuffer.Field.dataOffset)
            b.store(UInt32(0), PacketBuffer.Field.packetLength)
            unsafe (object + PacketBuffer.Field.referenceCount).bindMemory(to: Atomic<UInt32>.self, capacity: 1)
                .initialize(to: Atomic(1))
            b.store(bufferLength, PacketBuffer.Field.bufferLength)
            b.store(UInt32(truncatingIfNeeded: index), PacketBuffer.Field.index)
            b.store(UInt64(0), PacketBuffer.Field.userData)
            b.store(me, PacketBuffer.Field.pool)
        }
    }

    // MARK: allocation (hot paths)

    /// Resets a buffer taken from the mempool: no next segment, data at the
    /// headroom, length 0, one segment, packet length 0. The reference count
    /// is already 1 (the free path keeps it so), as in DPDK.
    @inlinable @inline(__always)
    func reset(_ b: PacketBuffer) {
        b.store(UInt64(0), PacketBuffer.Field.next)
        b.store(resetWord, PacketBuffer.Field.dataOffset)
        b.store(UInt32(0), PacketBuffer.Field.packetLength)
    }

    /// Takes `n` buffers into `buffers`, all or none (DPDK's
    /// `rte_pktmbuf_alloc_bulk`). Returns false, taking nothing, when fewer
    /// than `n` are free.
    @inlinable @inline(__always)
    public func allocate(into buffers: UnsafeMutablePointer<PacketBuffer>, count n: Int) -> Bool {
        let ok = unsafe buffers.withMemoryRebound(to: UnsafeMutableRawPointer.self, capacity: n) { raw in
            unsafe mempool.get(into: raw, count: n)
        }
        guard ok else { return false }
        for i in 0..<n { unsafe reset(buffers[i]) }
        return true
    }

    /// Takes `buffers.count` buffers, all or none.
    @inlinable @inline(__always)
    public func allocate(into buffers: UnsafeMutableBufferPointer<PacketBuffer>) -> Bool {
        guard let base = buffers.baseAddress else { return true }
        return unsafe allocate(into: base, count: buffers.count)
    }

    /// Takes one buffer, or nil when the pool is empty.
    @inlinable @inline(__always)
    public func allocate() -> PacketBuffer? {
        guard let object = unsafe mempool.get() else { return nil }
        let b = unsafe PacketBuffer(metadata: object)
        reset(b)
        return b
    }

    /// `n` buffers as an array, or nil when fewer are free.
    public func allocate(count n: Int) -> [PacketBuffer]? {
        guard n > 0 else { return [] }
        let result = unsafe [PacketBuffer](unsafeUninitializedCapacity: n) { storage, initialized in
            if unsafe allocate(into: storage.baseAddress!, count: n) { initialized = n } else { initialized = 0 }
        }
        return result.isEmpty ? nil : result
    }

    // MARK: freeing (hot paths)

    /// Nonzero when `b` cannot go straight back into this pool: it has a next
    /// segment, is indirect, has another owner, or is another pool's.
    @inlinable @inline(__always)
    func irregularity(_ b: PacketBuffer, pool me: UInt64) -> UInt64 {
        b.load(PacketBuffer.Field.next, as: UInt64.self)
            | (b.load(PacketBuffer.Field.dataOffset, as: UInt64.self) &>> 48)
            | UInt64(unsafe b.referenceCounter.pointee.load(ordering: .relaxed) ^ 1)
            | (b.load(PacketBuffer.Field.pool, as: UInt64.self) ^ me)
    }

    /// Frees `n` packets (each with all its segments; DPDK's
    /// `rte_pktmbuf_free_bulk`). Packets with one segment, one owner and this
    /// pool as home go back in one bulk put; any other packet takes the
    /// general path (reference counts, chains, clones, other pools).
    @inlinable @inline(__always)
    public func free(_ buffers: UnsafePointer<PacketBuffer>, count n: Int) {
        let me = identity
        var irregular: UInt64 = 0
        for i in 0..<n { irregular |= unsafe irregularity(buffers[i], pool: me) }
        if irregular == 0 {
            _ = unsafe buffers.withMemoryRebound(to: UnsafeMutableRawPointer.self, capacity: n) { raw in
                unsafe mempool.put(from: raw, count: n)
            }
        } else {
            for i in 0..<n { unsafe PacketPool.freePacket(buffers[i], near: self) }
        }
    }

    /// Frees every packet in `buffers`.
    @inlinable @inline(__always)
    public func free(_ buffers: UnsafeBufferPointer<PacketBuffer>) {
        guard let base = buffers.baseAddress else { return }
        unsafe free(base, count: buffers.count)
    }

    /// Frees every packet in `buffers`.
    public func free(_ buffers: [PacketBuffer]) {
        unsafe buffers.withUnsafeBufferPointer { unsafe free($0) }
    }

    /// Frees one packet, all its segments (DPDK's `rte_pktmbuf_free`).
    @inlinable @inline(__always)
    public func free(_ buffer: PacketBuffer) {
        if irregularity(buffer, pool: identity) == 0 {
            unsafe mempool.put(buffer.metadata)
        } else {
            PacketPool.freePacket(buffer, near: self)
        }
    }

    // MARK: freeing (checked mode)

    /// Frees one packet, all its segments, after checking each segment of
    /// this pool: it is a buffer's start, handed out (not already back in the
    /// pool) and its reference count is above zero. On an error nothing is
    /// freed. Segments of other pools in the chain are freed without checks.
    /// Needs a pool created with ``PacketPoolConfiguration/checked``.
    public func freeChecked(_ buffer: PacketBuffer) throws(PacketPoolError) {
        guard mempool.isChecked else { throw .checksDisabled }
        let address = UInt(bitPattern: unsafe buffer.metadata)
        guard unsafe mempool.contains(buffer.metadata) else { throw .foreignBuffer(address: address) }
        var segment: PacketBuffer? = buffer
        var segments = 0
        while let s = segment, unsafe mempool.contains(s.metadata), segments <= count {
            try checkHandedOut(s)
            segment = s.next
            segments += 1
        }
        PacketPool.freePacket(buffer, near: self)
    }

    /// Throws unless `s` (a segment in this pool's memory) is a handed-out buffer.
    func checkHandedOut(_ s: PacketBuffer) throws(PacketPoolError) {
        let address = UInt(bitPattern: unsafe s.metadata)
        let index: Int
        do {
            index = try unsafe mempool.objectIndex(of: s.metadata)
        } catch {
            throw .notABuffer(address: address)
        }
        if !mempool.objectStates.isHandedOut(index) {
            throw .doubleFree(address: address, index: index)
        }
        if s.referenceCount == 0 { throw .referenceCountUnderflow(address: address, index: index) }
    }

    // MARK: freeing (general path)

    /// The pool a buffer belongs to, from its metadata: `hint` when the
    /// buffer is its (no lookup), else this process's pool of that identity.
    static func home(of b: PacketBuffer, near hint: PacketPool) -> PacketPool {
        let identity = b.load(PacketBuffer.Field.pool, as: UInt64.self)
        if identity == hint.identity { return hint }
        return PacketPoolRegistry.pool(identity: identity)
    }

    /// Frees a packet segment by segment: each segment's reference count is
    /// dropped, and a segment whose count reaches zero is detached from the
    /// buffer it shares (if a clone) and put back into its own pool.
    /// `hint` is the pool the caller freed through, most segments' home.
    @usableFromInline @inline(never)
    static func freePacket(_ head: PacketBuffer, near hint: PacketPool) {
        var segment: PacketBuffer? = head
        while let s = segment {
            segment = s.next
            if releaseSegment(s, near: hint) { unsafe home(of: s, near: hint).mempool.put(s.metadata) }
        }
    }

    /// Drops one owner of `s`; true when it was the last, with `s` restored
    /// to the free state (count 1, no next segment, its own memory).
    static func releaseSegment(_ s: PacketBuffer, near hint: PacketPool) -> Bool {
        let counter = unsafe s.referenceCounter
        if unsafe counter.pointee.load(ordering: .acquiring) != 1 {
            let left = unsafe counter.pointee.subtract(1, ordering: .acquiringAndReleasing).newValue
            if left != 0 { return false }
            unsafe counter.pointee.store(1, ordering: .relaxed)
        }
        if s.isIndirect { detach(s, near: hint) }
        s.store(UInt64(0), PacketBuffer.Field.next)
        return true
    }

    /// Points an indirect buffer back at its own memory and drops its
    /// reference on the buffer it shared, freeing that one if it was the last.
    static func detach(_ s: PacketBuffer, near hint: PacketPool) {
        let direct = s.directBuffer
        let pool = home(of: s, near: hint)
        let start = unsafe s.metadata + PacketBuffer.metadataSize
        s.store(UInt64(UInt(bitPattern: start)), PacketBuffer.Field.bufferAddress)
        s.store(unsafe pool.mempool.physicalAddress(of: start)?.rawValue ?? 0, PacketBuffer.Field.bufferPhysical)
        s.store(UInt32(pool.headroom + pool.dataRoom), PacketBuffer.Field.bufferLength)
        s.store(UInt16(0), PacketBuffer.Field.flags)
        if releaseSegment(direct, near: hint) { unsafe home(of: direct, near: hint).mempool.put(direct.metadata) }
    }
}
