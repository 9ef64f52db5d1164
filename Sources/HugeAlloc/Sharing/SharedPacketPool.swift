/// A ``PacketPool`` published under a name and attached by other
/// processes: packet buffers, their metadata and chains at the same
/// addresses in every process, so a chain built in one process is read and
/// freed in another. Its mempool is shared as ``SharedMempool`` describes.
@safe
public final class SharedPacketPool: @unchecked Sendable {
    let core: SharedObjectCore
    /// The packet pool itself.
    public let pool: PacketPool

    public var name: String { core.name }

    private init(core: SharedObjectCore, pool: PacketPool) {
        self.core = core
        self.pool = pool
    }

    /// Publishes a new packet pool as `name`.
    public static func publish(
        name: String, configuration c: PacketPoolConfiguration, mapping: MappingOptions = MappingOptions(),
        options: SharingOptions = SharingOptions()
    ) throws(SharingError) -> SharedPacketPool {
        do { try PacketPool.validate(c) } catch { throw .packetPool(error) }
        let configuration = MempoolConfiguration(
            count: c.count, objectSize: c.bufferSize, alignment: c.alignment, cacheSize: c.cacheSize,
            backend: c.backend, checked: c.checked, memoryChannels: c.memoryChannels)
        let (core, mempool) = try SharedMempool.publishPool(
            kind: .packetPool, name: name, configuration: configuration, mapping: mapping, options: options,
            extraFacts: { facts in
                facts.headroom = c.headroom
                facts.dataRoom = c.dataRoom
            })
        do {
            return SharedPacketPool(core: core, pool: try PacketPool(mempool: mempool, headroom: c.headroom, dataRoom: c.dataRoom))
        } catch { throw .packetPool(error) }
    }

    /// Attaches to the packet pool published as `name`.
    public static func attach(name: String, options: SharingOptions = SharingOptions()) throws(SharingError) -> SharedPacketPool {
        let (core, mempool) = try SharedMempool.attachPool(kind: .packetPool, name: name, options: options)
        let facts = core.header.facts
        do {
            return SharedPacketPool(core: core, pool: try PacketPool(attaching: mempool, headroom: facts.headroom, dataRoom: facts.dataRoom))
        } catch { throw .packetPool(error) }
    }

    /// Reclaims dead processes now; see ``SharedMempool/reclaim()``.
    public func reclaim() -> [SharedReclaim] { core.reclaimNow() }

    /// The attached processes.
    public var participants: [SharedParticipant] { core.participants }
}

/// A multi-producer multi-consumer ring of pointers published
/// under a name, for handing objects (packet buffers, pool objects) from
/// one process to another without copying: the mempool's ring storage
/// (bulk all-or-nothing), placed in shared memory.
///
/// Pointers keep their meaning in every attached process because shared
/// pools are mapped at the same address everywhere.
///
/// Each side (producers, consumers) has a lock whose word holds the
/// holder's pid, and a journal (`MempoolSharedBackend`): a process killed
/// inside ``enqueue(_:count:)`` or ``dequeue(into:count:)`` is repaired by
/// a survivor's watcher, the operation done (committed) or not at all, and
/// the ring moves again. Pointers in a dead process's own memory (an array
/// it was enqueueing from, or had dequeued into) are lost with it, as in
/// any crash; in a checked pool the objects they name are still owned by
/// the process that took them from the pool, which gets them back when
/// that process is reclaimed — including objects a dead producer had
/// enqueued and no consumer had taken yet, so such pointers left in the
/// ring name objects back in the pool.
@safe
public final class SharedRing: @unchecked Sendable {
    let core: SharedObjectCore
    @usableFromInline let handle: MempoolRing._UnsafeHandle
    /// This process's id, which the side's lock word holds while it works.
    @usableFromInline let processID: UInt32

    public var name: String { core.name }
    /// The most pointers the ring holds.
    public let capacity: Int

    private init(core: SharedObjectCore, capacity: Int, initializing: Bool) {
        self.core = core
        self.capacity = capacity
        handle = unsafe MempoolRing._UnsafeHandle.placed(at: core.segment.control, capacity: capacity, initializing: initializing)
        processID = UInt32(bitPattern: Sys.processID)
    }

    /// Starts the core's watcher: a dead process's lock is repaired.
    private func start() throws(SharingError) {
        let backend = MempoolSharedBackend(ring: handle)
        let me = processID
        try core.start { pid in
            unsafe backend.repair(deadProcess: pid, by: me) { _, _, _, _ in }
            return (0, 0)
        }
    }

    deinit { core.close() }

    /// Publishes an empty ring of `capacity` pointers (1 to 2³¹ − 1) as `name`.
    public static func publish(
        name: String, capacity: Int, options: SharingOptions = SharingOptions()
    ) throws(SharingError) -> SharedRing {
        guard capacity > 0, capacity <= Mempool.maximumCount else {
            throw .mempool(.countTooLarge(requested: capacity, maximum: Mempool.maximumCount))
        }
        var facts = SharedSegmentFacts()
        facts.count = capacity
        let bytes = MempoolRing._UnsafeHandle.storageBytes(capacity: capacity)
        let core = try SharedObjectCore.publish(kind: .ring, name: name, options: options, mapping: MappingOptions(),
                                                controlLength: bytes, dataLength: 0, facts: facts)
        let ring = SharedRing(core: core, capacity: capacity, initializing: true)
        try ring.start()
        return ring
    }

    /// Attaches to the ring published as `name`.
    public static func attach(name: String, options: SharingOptions = SharingOptions()) throws(SharingError) -> SharedRing {
        let core = try SharedObjectCore.attach(kind: .ring, name: name, options: options)
        let capacity = core.header.facts.count
        guard capacity > 0, MempoolRing._UnsafeHandle.storageBytes(capacity: capacity) <= core.header.controlLength else {
            core.close()
            throw .incompatible(name: name, reason: "ring capacity \(capacity)")
        }
        let ring = SharedRing(core: core, capacity: capacity, initializing: false)
        try ring.start()
        return ring
    }

    /// Adds `n` pointers, all or none; false when they do not fit.
    @inlinable @inline(__always)
    public func enqueue(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        unsafe handle.lockedEnqueue(objects, count: n, by: processID, .plain, record: nil, recordCount: 0, afterCommit: { _, _ in })
    }

    /// Takes `n` pointers, all or none; false when fewer are there.
    @inlinable @inline(__always)
    public func dequeue(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        unsafe handle.lockedDequeue(into: objects, count: n, by: processID, .plain, record: nil, recordCount: 0,
                                    beforeCommit: { _, _ in })
    }

    /// Pointers in the ring now.
    public var count: Int { handle.count }

    /// The attached processes.
    public var participants: [SharedParticipant] { core.participants }
}
