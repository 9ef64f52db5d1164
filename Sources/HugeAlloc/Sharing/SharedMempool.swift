/// A ``Mempool`` published under a name and attached by other processes:
/// one pool, whose objects every attached process gets and puts, at the
/// same addresses in all of them.
///
/// The objects and every piece of the pool's state — the ring
/// (or stack), the per-thread cache records, the statistics, checked
/// mode's per-object states and owner tags — live in one hugetlb memfd
/// mapped at the same address everywhere (``SharedMapping`` says how).
/// Each process's threads claim cache records of their own; when a
/// process dies, a survivor's watcher (a pidfd per participant) puts the
/// objects of its caches back, and in checked mode every object it still
/// held (``reclaim()`` does it at once and reports it).
///
/// The pool (``pool``) keeps the sharing alive: this process stays
/// attached until the last reference to it goes, then its caches are
/// flushed, its slot and socket removed, and the memory unmapped.
@safe
public final class SharedMempool: @unchecked Sendable {
    let core: SharedObjectCore
    /// The pool itself: use it as any other pool.
    public let pool: Mempool

    /// The published name.
    public var name: String { core.name }

    private init(core: SharedObjectCore, pool: Mempool) {
        self.core = core
        self.pool = pool
    }

    /// The configuration a segment's facts describe.
    static func configuration(of facts: SharedSegmentFacts) -> MempoolConfiguration {
        MempoolConfiguration(count: facts.count, objectSize: facts.objectSize, alignment: facts.alignment,
                             cacheSize: facts.cacheSize, backend: facts.backendIsStack ? .stack : .ring,
                             checked: facts.checked, statistics: facts.statistics,
                             memoryChannels: facts.memoryChannels > 0 ? facts.memoryChannels : nil)
    }

    static func facts(of c: MempoolConfiguration, threadRecords: Int) -> SharedSegmentFacts {
        var f = SharedSegmentFacts()
        f.count = c.count
        f.objectSize = c.objectSize
        f.alignment = c.alignment
        f.cacheSize = c.cacheSize
        f.backendIsStack = c.backend == .stack
        f.checked = c.checked
        f.statistics = c.statistics
        f.memoryChannels = c.memoryChannels ?? 0
        f.threadRecords = threadRecords
        return f
    }

    /// Publishes a new pool as `name`: its memory on `mapping.pageSize`
    /// pages placed by `mapping.numaPolicy`. A single-thread pool cannot
    /// be shared.
    public static func publish(
        name: String, configuration: MempoolConfiguration, mapping: MappingOptions = MappingOptions(),
        options: SharingOptions = SharingOptions()
    ) throws(SharingError) -> SharedMempool {
        let (core, pool) = try publishPool(kind: .mempool, name: name, configuration: configuration, mapping: mapping,
                                           options: options, extraFacts: { _ in })
        return SharedMempool(core: core, pool: pool)
    }

    /// Attaches to the pool published as `name`.
    public static func attach(name: String, options: SharingOptions = SharingOptions()) throws(SharingError) -> SharedMempool {
        let (core, pool) = try attachPool(kind: .mempool, name: name, options: options)
        return SharedMempool(core: core, pool: pool)
    }

    /// The shared steps of publishing a pool (a mempool or a packet pool's).
    static func publishPool(
        kind: SharedObjectKind, name: String, configuration c: MempoolConfiguration, mapping: MappingOptions,
        options: SharingOptions, extraFacts: (inout SharedSegmentFacts) -> Void
    ) throws(SharingError) -> (SharedObjectCore, Mempool) {
        guard c.threading == .shared else {
            throw .notShareable(reason: "a single-thread pool has no atomics and cannot be used by several processes; create it with threading: .shared")
        }
        let dataLength: Int
        let controlLength: Int
        do {
            dataLength = try Mempool.memoryNeeded(for: c, pageSize: mapping.pageSize)
            controlLength = try MempoolSharedControl.bytesNeeded(for: c, memoryLength: dataLength, pageSize: mapping.pageSize,
                                                                 threadRecords: options.threadRecords)
        } catch { throw .mempool(error) }
        var facts = Self.facts(of: c, threadRecords: options.threadRecords)
        extraFacts(&facts)
        let core = try SharedObjectCore.publish(kind: kind, name: name, options: options, mapping: mapping,
                                                controlLength: controlLength, dataLength: dataLength, facts: facts)
        let pool = try openPool(core: core, configuration: c, creating: true)
        return (core, pool)
    }

    static func attachPool(kind: SharedObjectKind, name: String, options: SharingOptions) throws(SharingError) -> (SharedObjectCore, Mempool) {
        let core = try SharedObjectCore.attach(kind: kind, name: name, options: options)
        let pool = try openPool(core: core, configuration: configuration(of: core.header.facts), creating: false)
        return (core, pool)
    }

    /// Builds this process's pool instance over the segment and starts the
    /// core's thread. The pool holds the core: the process stays attached
    /// while the pool lives, and leaves when it goes.
    private static func openPool(core: SharedObjectCore, configuration: MempoolConfiguration, creating: Bool) throws(SharingError) -> Mempool {
        let h = core.header
        let pool: Mempool
        do {
            pool = try unsafe Mempool(sharedMemory: core.segment.dataMemory, control: core.segment.control,
                                      controlLength: h.controlLength, configuration: configuration, creating: creating,
                                      releaseMemory: { core.close() })
        } catch {
            core.close()
            throw .mempool(error)
        }
        // On failure the pool's release closes the core.
        try core.start { [weak pool] pid in
            guard let pool else { return (0, 0) }
            let r = pool.reclaim(process: pid)
            return (r.cachedObjects, r.heldObjects)
        }
        return pool
    }

    /// Reclaims every attached process that died and was not reclaimed yet,
    /// and reports what this process recovered since the last call (the
    /// watcher's reclaims included).
    public func reclaim() -> [SharedReclaim] { core.reclaimNow() }

    /// The attached processes.
    public var participants: [SharedParticipant] { core.participants }

    /// What each process holds: cached objects, and held objects in checked mode.
    public func processUsage() -> [MempoolProcessUsage] { pool.processUsage() }

    /// Objects reclaimed from dead processes since the pool was published,
    /// by every process: cached, held, and how many processes.
    public var reclaimedTotals: (cachedObjects: Int, heldObjects: Int, processes: Int) {
        let r = core.header.reclaimed
        return (r.cached, r.held, r.processes)
    }
}
