import Synchronization

/// The memory a ``Mempool`` carves its objects from: a base address at a
/// page boundary, a length that is a positive whole number of pages, and the
/// physical address of each page.
///
/// The pool reads each page's physical address once, at creation, into a
/// ``PhysicalTranslation``, so ``Mempool/physicalAddress(of:)`` is O(1)
/// afterwards. ``Mempool/memoryNeeded(for:pageSize:)`` says how much memory
/// a configuration needs.
@safe
public struct MempoolMemory: @unchecked Sendable {
    public var base: UnsafeMutableRawPointer
    public var length: Int
    public var pageSize: PageSize
    /// The physical address of the page starting at a byte offset, or nil when
    /// unknown (no `CAP_SYS_ADMIN`, page not present).
    public var physicalAddress: (Int) -> PhysicalAddress?

    /// The memory of `mapping`, with its physical addresses. The mapping must
    /// outlive the pool (or create the pool with
    /// ``Mempool/init(configuration:mapping:)``, which owns its mapping).
    public init(mapping: borrowing MemoryMapping) {
        let translation = mapping.translation
        unsafe self.init(base: mapping.base, length: mapping.length, pageSize: mapping.pageSize,
                         physicalAddress: { translation?.physicalAddress(atOffset: $0) })
    }

    public init(
        base: UnsafeMutableRawPointer, length: Int, pageSize: PageSize,
        physicalAddress: @escaping (Int) -> PhysicalAddress?
    ) {
        unsafe self.base = base
        self.length = length
        self.pageSize = pageSize
        self.physicalAddress = physicalAddress
    }
}

/// How a ``Mempool`` is built: the objects, the shared backend, the caches, the checks.
public struct MempoolConfiguration: Sendable {
    /// The shared store of free objects behind the per-thread caches.
    public enum Backend: Sendable {
        /// A lock-free multi-producer multi-consumer ring (first in, first out).
        case ring
        /// A LIFO stack: the object freed last is handed out next (cache-warm),
        /// for pipelines where one thread allocates and another frees.
        case stack
    }

    /// Which threads use the pool.
    public enum Threading: Sendable {
        /// Any number of threads, each with its own cache when `cacheSize > 0`.
        case shared
        /// One thread at a time: no atomics, no caches, a plain LIFO array.
        /// Using such a pool from two threads at once is a data race.
        case singleThread
    }

    /// How many objects: 1 to ``Mempool/maximumCount``.
    public var count: Int
    /// Bytes per object; at least 1.
    public var objectSize: Int
    /// Alignment of each object's start: any power of two up to the page size
    /// (default 64, a cache line).
    public var alignment: Int
    /// Objects each thread keeps for itself, 0 (no cache) to ``Mempool/maximumCacheSize``.
    /// A cache refills and flushes half its size at a time.
    public var cacheSize: Int
    public var backend: Backend
    public var threading: Threading
    /// Checked mode: double frees, foreign pointers, pointers not at an
    /// object's start and writes past an object's end (guard cookies) are
    /// caught by ``Mempool/putChecked(_:)``; the unchecked ``Mempool/put(_:)``
    /// stops the process with the same message. Adds 8 bytes (rounded to the
    /// alignment) per object and a per-object state byte.
    public var checked: Bool
    /// Per-thread statistics (``Mempool/statistics``). Off, they cost one
    /// predictable branch per call.
    public var statistics: Bool
    /// Spread object starts over this many memory channels × ranks (DPDK's
    /// default is 4): the stride is padded to a number of cache lines sharing
    /// no factor with it, so consecutive objects begin on different channels.
    /// nil (the default) packs objects at their aligned size. Only applies with
    /// an alignment of at most 64.
    public var memoryChannels: Int?

    public init(
        count: Int, objectSize: Int, alignment: Int = 64, cacheSize: Int = 0,
        backend: Backend = .ring, threading: Threading = .shared, checked: Bool = false,
        statistics: Bool = false, memoryChannels: Int? = nil
    ) {
        self.count = count
        self.objectSize = objectSize
        self.alignment = alignment
        self.cacheSize = cacheSize
        self.backend = backend
        self.threading = threading
        self.checked = checked
        self.statistics = statistics
        self.memoryChannels = memoryChannels
    }
}

/// A pool of fixed-size objects carved from DMA-ready memory.
///
/// Objects are raw pointers into the pool's memory; each has a physical
/// address (``physicalAddress(of:)``, O(1)) and never straddles a page
/// boundary unless the pages beneath are physically contiguous.
///
/// Free objects live in a shared backend (a lock-free MPMC ring or a LIFO
/// stack) behind optional per-thread caches, which refill and flush half
/// their size at a time and are flushed back when their thread exits.
/// No class instance or reference count exists per object: one pool is one
/// class instance.
///
/// The hot paths (``get()``, ``put(_:)``, ``get(into:count:)``,
/// ``put(from:count:)``) are inlinable so callers in other modules compile
/// them into their own loops.
@safe
public final class Mempool: @unchecked Sendable {
    /// The largest per-thread cache.
    public static let maximumCacheSize = 512
    /// The most objects one pool holds (the ring's indices are 32 bits wide,
    /// as in DPDK, whose rings hold at most 2³¹ − 1 objects too).
    public static let maximumCount = Int(Int32.max)

    // MARK: stored state read by the inlinable hot paths

    @usableFromInline let id: UInt64
    @usableFromInline let slot: Int
    /// How many objects the pool holds: the largest count a put can have.
    @usableFromInline let objectCount: Int
    @usableFromInline let cacheCapacity: Int
    @usableFromInline let cacheHalf: Int
    @usableFromInline let usesThreadRecord: Bool
    @usableFromInline let singleThread: Bool
    @usableFromInline let backendIsRing: Bool
    /// A private pool's ring: lock-free. A shared pool's ring or stack goes
    /// through ``sharedBackend`` instead.
    @usableFromInline let lockFreeRing: Bool
    /// Whether the pool is in shared control memory: ``sharedBackend`` is
    /// set (a plain flag, for the inlined paths to test).
    @usableFromInline let isSharedPool: Bool
    @usableFromInline let checked: Bool
    @usableFromInline let statisticsEnabled: Bool
    /// The shared backend: the ring, or the stack (the other one is empty).
    /// The owners free their storage when the pool goes.
    let ring: MempoolRing
    let stack: MempoolStack
    /// Views of the owners' storage, for the hot paths. Reading a
    /// noncopyable stored property borrows it, and the optimizer then hoists
    /// the backend's addresses out of a caller's loop even when the loop
    /// only touches the cache: measured, 7 % more instructions per object
    /// on the bench's cached bulk-32 loop. Copyable views are loaded where
    /// used, as before.
    @usableFromInline let ringHandle: MempoolRing._UnsafeHandle
    @usableFromInline let stackHandle: MempoolStack._UnsafeHandle
    /// The start of the pool's memory (a page boundary).
    public let base: UnsafeMutableRawPointer
    /// Bytes of memory the pool spans (whole pages).
    public let length: Int
    @usableFromInline let pageShift: Int
    /// The physical address of every page: the mapping's own translation
    /// (read once from `/proc/self/pagemap` when it was mapped), or one
    /// built from ``MempoolMemory/physicalAddress``. A page whose address is
    /// unknown holds 0. nil when no address is known.
    @usableFromInline private(set) var translation: PhysicalTranslation?
    /// The physical addresses read from pagemap at creation; ``translation``
    /// is this unless the pool is attached to an IOMMU container.
    let physicalTranslation: PhysicalTranslation?
    /// Checked mode: which objects are handed out.
    let objectStates: MempoolObjectStates
    /// A shared pool's control memory (see `MempoolSharedControl`); nil for
    /// a private pool.
    let sharedControl: MempoolSharedControl.Region?

    let layout: MempoolLayout
    let configuration: MempoolConfiguration
    let releaseMemory: (@Sendable () -> Void)?
    /// The hugepage mapping the pool owns (nil when the caller gave the memory).
    let mapping: MemoryMapping?
    // Last, so that the fields the private hot paths read keep their places.
    /// A shared pool's backend, locked and journaled so that a process
    /// killed inside an operation can be repaired (see
    /// `MempoolSharedBackend`); nil for a private pool.
    @usableFromInline let sharedBackend: MempoolSharedBackend?
    /// This process's id, which a shared backend's lock word and checked
    /// mode's owner words hold (a shared pool is never inherited by a fork).
    @usableFromInline let processID: UInt32
    /// Whether threads keep records (caches, statistics). ``usesThreadRecord``
    /// says whether the inlined hot paths use them: not in a shared checked
    /// pool, whose calls all go through its own out-of-line paths.
    let cachesThreads: Bool
    /// For tests: false makes ``reclaim(process:)`` leave the backend locks
    /// a dead process held as they are, which stalls the backend.
    package let repairsDeadLocks = Atomic<Bool>(true)

    /// The guard cookie written after every object in checked mode.
    package static let guardCookie: UInt64 = 0xC0DE_F00D_5AFE_7A11

    /// Bytes of `pageSize` pages a pool of `configuration` needs, planned
    /// for the worst case, no two pages physically contiguous: what
    /// ``init(configuration:mapping:)`` maps, and enough for
    /// ``init(memory:configuration:releaseMemory:)`` whatever the pages'
    /// physical addresses. It is the pages the layout fills, so at most the
    /// last page is partly unused. Throws the error creation would throw
    /// for an invalid configuration.
    public static func memoryNeeded(for configuration: MempoolConfiguration, pageSize: PageSize) throws(MempoolError) -> Int {
        try MempoolLayout.memoryNeeded(configuration: configuration, pageSize: pageSize.bytes)
    }

    /// Creates a pool in a new mapping it owns: hugepages of
    /// `mapping.pageSize` (2 MiB by default), populated, with every page's
    /// physical address read from `/proc/self/pagemap`, placed on a NUMA node
    /// by `mapping.numaPolicy` (`mbind(2)`; `.any` lets the kernel choose,
    /// `.bind(n)` fails rather than fall back). The mapping is exactly
    /// ``memoryNeeded(for:pageSize:)``: sized for the worst case, pages that
    /// are not physically contiguous, so `count` objects always fit. When
    /// the mapping falls back to smaller pages
    /// (``MappingOptions/PageSizePolicy/fallBackToSmaller``), it is made
    /// again at the size those pages need.
    public convenience init(
        configuration: MempoolConfiguration, mapping options: MappingOptions = MappingOptions()
    ) throws(MempoolError) {
        let c = configuration
        let bytes = try MempoolLayout.memoryNeeded(configuration: c, pageSize: options.pageSize.bytes)
        var mapping = try Self.map(bytes, options: options, configuration: c)
        if mapping.pageSize != options.pageSize {
            let needed = try MempoolLayout.memoryNeeded(configuration: c, pageSize: mapping.pageSize.bytes)
            if needed != mapping.length {
                var exact = options
                exact.pageSize = mapping.pageSize
                exact.pageSizePolicy = .exact
                _ = consume mapping
                mapping = try Self.map(needed, options: exact, configuration: c)
            }
        }
        let (base, length, pageSize, translation) = unsafe (mapping.base, mapping.length, mapping.pageSize, mapping.translation)
        try unsafe self.init(
            base: base, length: length, pageSize: pageSize, translation: translation, configuration: c,
            releaseMemory: nil, owning: mapping)
    }

    /// Maps `bytes` for a pool, turning a shortage of hugepages into what would fit.
    static func map(_ bytes: Int, options: MappingOptions, configuration c: MempoolConfiguration) throws(MempoolError) -> MemoryMapping {
        do {
            return try MemoryMapping(length: bytes, options: options)
        } catch {
            if case .insufficientHugepages(let shortage) = error {
                let fits = MempoolLayout.objectsFitting(pages: shortage.free, configuration: c, pageSize: shortage.pageSize.bytes)
                throw .notEnoughHugepages(requested: c.count, fits: fits, shortage: shortage)
            }
            throw .memoryUnavailable(neededBytes: bytes, underlying: error)
        }
    }

    /// Creates a pool in memory the caller provides and keeps alive for the
    /// pool's lifetime; `releaseMemory` runs when the pool is destroyed.
    /// ``memoryNeeded(for:pageSize:)`` bytes always suffice; with pages
    /// that are physically contiguous, fewer may.
    public convenience init(
        memory: MempoolMemory, configuration: MempoolConfiguration,
        releaseMemory: (@Sendable () -> Void)? = nil
    ) throws(MempoolError) {
        try Self.validate(memory)
        // Checked before the translation is built, so a bad configuration
        // costs no page lookups.
        _ = try MempoolLayout.element(for: configuration, pageSize: memory.pageSize.bytes, contiguousBytes: memory.length)
        try unsafe self.init(
            base: memory.base, length: memory.length, pageSize: memory.pageSize, translation: Self.translation(of: memory),
            configuration: configuration, releaseMemory: releaseMemory, owning: nil)
    }

    /// Throws unless `memory` starts at a page boundary and is a positive
    /// whole number of pages within the address space.
    static func validate(_ memory: MempoolMemory) throws(MempoolError) {
        let pageSize = memory.pageSize.bytes
        let address = UInt(bitPattern: unsafe memory.base)
        guard memory.length > 0, memory.length <= MempoolLayout.maximumLength, memory.length % pageSize == 0,
              address % UInt(pageSize) == 0, address <= UInt.max - UInt(memory.length)
        else {
            throw .invalidMemory(address: address, length: memory.length, pageSize: pageSize)
        }
    }

    /// Every page's physical address from `memory`, nil when none is known.
    static func translation(of memory: MempoolMemory) -> PhysicalTranslation? {
        let pageSize = memory.pageSize.bytes
        let pages = memory.length / pageSize
        var physical = [UInt64](repeating: 0, count: pages)
        var known = false
        for p in 0..<pages {
            if let address = memory.physicalAddress(p * pageSize) {
                physical[p] = address.rawValue
                known = true
            }
        }
        return known ? PhysicalTranslation(pagePhysical: physical, pageSize: memory.pageSize) : nil
    }

    /// `shared`: the control memory's view, the pool created in it
    /// (`creating`) or opened; nil for a private pool, whose control state
    /// is allocated here.
    init(
        base: UnsafeMutableRawPointer, length: Int, pageSize: PageSize, translation: PhysicalTranslation?,
        configuration: MempoolConfiguration, releaseMemory: (@Sendable () -> Void)?,
        owning mapping: consuming MemoryMapping?,
        shared region: MempoolSharedControl.Region? = nil, creating: Bool = true
    ) throws(MempoolError) {
        let c = configuration
        let pageBytes = pageSize.bytes
        let table = translation?.pagePhysical ?? []
        let layout: MempoolLayout
        if let region {
            // The creator's contiguity, so every instance places objects alike.
            layout = try MempoolLayout.plan(
                configuration: c, length: length, pageSize: pageBytes, contiguous: { region.followsPhysically($0) })
            if !creating { try region.verify(layout) }
        } else {
            layout = try MempoolLayout.plan(
                configuration: c, length: length, pageSize: pageBytes,
                contiguous: { p in
                    // Unknown addresses (0) are never contiguous.
                    p + 1 < table.count && table[p] != 0 && table[p + 1] == table[p] &+ UInt64(pageBytes)
                })
        }
        let ticket = try MempoolRegistry.reserveSlot(shared: region != nil)

        self.layout = layout
        self.configuration = c
        self.releaseMemory = releaseMemory
        self.mapping = mapping
        self.translation = translation
        self.physicalTranslation = translation
        sharedControl = region
        id = ticket.id
        slot = ticket.slot
        objectCount = c.count
        singleThread = c.threading == .singleThread
        cacheCapacity = singleThread ? 0 : c.cacheSize
        cacheHalf = max(1, cacheCapacity / 2)
        statisticsEnabled = c.statistics && !singleThread
        cachesThreads = cacheCapacity > 0 || statisticsEnabled
        // A shared checked pool's gets go out of line (through
        // `sharedDequeue`), which marks the objects before it commits.
        usesThreadRecord = cachesThreads && !(c.checked && region != nil)
        backendIsRing = c.backend == .ring && !singleThread
        checked = c.checked
        if let region {
            ring = backendIsRing
                ? MempoolRing(placed: unsafe .placed(at: region.backendStorage, capacity: c.count, initializing: creating))
                : MempoolRing(capacity: 0)
            stack = backendIsRing
                ? MempoolStack(capacity: 0)
                : MempoolStack(placed: unsafe .placed(at: region.backendStorage, capacity: c.count, initializing: creating))
            objectStates = c.checked
                ? unsafe MempoolObjectStates(sharedWords: region.stateWords, count: c.count) : MempoolObjectStates(count: 0)
        } else {
            ring = MempoolRing(capacity: backendIsRing ? c.count : 0)
            stack = MempoolStack(capacity: backendIsRing ? 0 : c.count)
            objectStates = MempoolObjectStates(count: c.checked ? c.count : 0)
        }
        ringHandle = ring.handle
        stackHandle = stack.handle
        lockFreeRing = backendIsRing && region == nil
        isSharedPool = region != nil
        sharedBackend = region == nil ? nil : backendIsRing ? MempoolSharedBackend(ring: ringHandle) : MempoolSharedBackend(stack: stackHandle)
        processID = UInt32(bitPattern: Sys.processID)
        unsafe self.base = base
        self.length = length
        pageShift = pageBytes.trailingZeroBitCount

        if creating {
            // Fill the backend with every object, lowest address first out.
            var all = unsafe [UnsafeMutableRawPointer]()
            unsafe all.reserveCapacity(c.count)
            unsafe forEachObjectAddress { unsafe all.append($0) }
            if let cookie = layout.cookieOffset {
                for i in 0..<c.count { unsafe (all[i] + cookie).storeBytes(of: Self.guardCookie, as: UInt64.self) }
            }
            if !backendIsRing { unsafe all.reverse() }
            unsafe all.withUnsafeBufferPointer { buffer in
                _ = unsafe backendEnqueue(buffer.baseAddress!, count: buffer.count)
            }
            if backendIsRing { ringHandle._checkInvariants() }
            region?.publish(layout)
        }
        let backend: MempoolRegistry.Backend = if let sharedBackend {
            .shared(sharedBackend, pid: processID)
        } else if backendIsRing {
            .ring(ringHandle)
        } else {
            .stack(stackHandle, locked: !singleThread)
        }
        MempoolRegistry.publish(slot: slot, entry: .init(id: id, backend: backend, shared: region != nil))
    }

    deinit {
        // First, so no thread's exit puts objects into the backend any more;
        // the ring and stack free their storage after this body. A shared
        // pool's records of this process's threads go back to the backend.
        MempoolRegistry.retire(slot: slot, id: id, shared: sharedControl)
        releaseMemory?()
    }

    // MARK: facts

    /// How many objects the pool holds in all.
    public var count: Int { layout.count }
    /// Bytes per object as asked for.
    public var objectSize: Int { layout.objectSize }
    /// Bytes from one object's start to the next.
    public var elementStride: Int { layout.stride }
    /// Alignment of every object's start.
    public var alignment: Int { layout.alignment }
    /// Objects each thread caches at most (0: no cache).
    public var cacheSize: Int { cacheCapacity }
    /// Whether checked mode is on.
    public var isChecked: Bool { checked }
    /// The page size of the memory beneath.
    public var pageSize: PageSize { PageSize(rawValue: pageBytes)! }
    /// The page size in bytes, for the pool's own arithmetic.
    @usableFromInline var pageBytes: Int { 1 << pageShift }

    // MARK: shared backend

    @inlinable @inline(__always)
    func backendDequeue(_ objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        if lockFreeRing { return unsafe ringHandle.dequeue(into: objects, count: n) }
        if _slowPath(isSharedPool) { return unsafe sharedDequeue(objects, count: n) }
        return unsafe stackHandle.pop(into: objects, count: n, locked: !singleThread)
    }

    @inlinable @inline(__always)
    func backendEnqueue(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        if lockFreeRing { return unsafe ringHandle.enqueue(objects, count: n) }
        if _slowPath(isSharedPool) { return unsafe sharedEnqueue(objects, count: n) }
        return unsafe stackHandle.push(objects, count: n, locked: !singleThread)
    }

    @inlinable
    func backendCount() -> Int {
        backendIsRing ? ringHandle.count : stackHandle.count
    }

    @usableFromInline @inline(never)
    func backendOverflow(_ n: Int) -> Never {
        fatalError("mempool: \(n) objects put back do not fit: more objects were put than the pool of \(count) handed out (a double free; create the pool with checked: true to find it)")
    }

    // MARK: hot paths

    /// Takes `n` objects into `objects`, all or none. Returns false (and takes
    /// nothing) when fewer than `n` are available, and for a negative `n`.
    @inlinable @inline(__always)
    public func get(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        let ok: Bool
        if usesThreadRecord {
            ok = unsafe cachedGet(into: objects, count: n)
        } else {
            ok = unsafe backendDequeue(objects, count: n)
        }
        if checked && ok { unsafe markHandedOut(objects, count: n) }
        return ok
    }

    /// Puts `n` objects back. Returns false, putting nothing back, when `n`
    /// is negative or larger than the pool. In checked mode a misuse stops
    /// the process with a message saying what went wrong; use
    /// ``putChecked(from:count:)`` to get it as an error instead.
    @inlinable @inline(__always) @discardableResult
    public func put(from objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        if checked { return unsafe putCheckedOrDie(objects, count: n) }
        return unsafe putUnchecked(objects, count: n)
    }

    @inlinable @inline(__always)
    func putUnchecked(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        if usesThreadRecord { return unsafe cachedPut(objects, count: n) }
        if _fastPath(unsafe backendEnqueue(objects, count: n)) { return true }
        // Refused: a count no put can have returns false; any other count
        // means more objects came back than were handed out. No returning
        // call here, so the caller's loop keeps its registers.
        if UInt(bitPattern: n) > UInt(bitPattern: objectCount) { return false }
        backendOverflow(n)
    }

    /// Takes one object, or nil when the pool is empty.
    @inlinable @inline(__always)
    public func get() -> UnsafeMutableRawPointer? {
        var object = unsafe UnsafeMutableRawPointer(bitPattern: 1)!
        return unsafe withUnsafeMutablePointer(to: &object) { p in
            unsafe get(into: p, count: 1) ? unsafe p.pointee : nil
        }
    }

    /// Puts one object back.
    @inlinable @inline(__always)
    public func put(_ object: UnsafeMutableRawPointer) {
        var object = unsafe object
        unsafe withUnsafePointer(to: &object) { p in _ = unsafe put(from: p, count: 1) }
    }

    // MARK: addresses

    /// Makes ``physicalAddress(of:)`` answer with `deviceAddresses` (one
    /// address per page: a container's IOVAs), or with the physical addresses
    /// again when nil. Called by an IOMMU container while no object is handed
    /// out and no other thread asks for addresses.
    package func useDeviceAddresses(_ deviceAddresses: PhysicalTranslation?) {
        translation = deviceAddresses ?? physicalTranslation
    }

    /// The physical address (IOVA) of a byte in the pool, in O(1) from the
    /// per-page table of the pool's ``PhysicalTranslation`` (read from
    /// `/proc/self/pagemap` once, when the memory was mapped); nil when the
    /// kernel hid it.
    @inlinable
    public func physicalAddress(of pointer: UnsafeRawPointer) -> PhysicalAddress? {
        let offset = unsafe pointer - UnsafeRawPointer(base)
        guard offset >= 0, offset < length, let page = translation?.pagePhysical[offset &>> pageShift], page != 0
        else { return nil }
        return PhysicalAddress(rawValue: page &+ UInt64(offset & ((1 &<< pageShift) &- 1)))
    }

    /// Whether `pointer` lies in the pool's memory.
    @inlinable
    public func contains(_ pointer: UnsafeRawPointer) -> Bool {
        let offset = unsafe pointer - UnsafeRawPointer(base)
        return offset >= 0 && offset < length
    }
}
