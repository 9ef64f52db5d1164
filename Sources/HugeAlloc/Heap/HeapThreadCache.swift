import CHugeAllocShims
import Synchronization

/// One thread's cache for one heap: per node and class, the span it carves
/// objects from, the list of spans it owns, and a stash of free one-object
/// spans; then per-class counters. In memory, a ``Header``, then
/// `nodes × classes` ``ClassCache`` entries, then `2 × classes` counters.
///
/// The owning thread alone reads and writes the caches; counters are
/// atomics it updates with relaxed loads and stores (plain moves), which
/// statistics read from other threads.
@safe @usableFromInline
struct HeapThreadCache {
    struct Header: ~Copyable {
        let heapID: UInt64
        /// The node index allocations without a node go to.
        var homeNode: Int
        /// Bytes of the free one-object spans in this thread's stashes.
        var stashedBytes = 0

        init(heapID: UInt64, homeNode: Int) {
            self.heapID = heapID
            self.homeNode = homeNode
        }
    }

    /// 128 bytes per node and class.
    struct ClassCache {
        /// The span objects come from (multi-object classes); 0 for none.
        var current: UInt = 0
        /// First of the spans this thread owns for the class (linked through
        /// `HeapSpan.next`/`previous`).
        var owned: UInt = 0
        var stashCount: Int = 0
        var stash: (UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    }

    static let stashCapacity = 13
    static let headerBytes = (MemoryLayout<Header>.stride + 63) & ~63

    let raw: UnsafeMutableRawPointer

    @inline(__always) init(_ raw: UnsafeMutableRawPointer) { unsafe self.raw = raw }
    @inline(__always) init?(bits: UInt) {
        guard let raw = unsafe UnsafeMutableRawPointer(bitPattern: bits) else { return nil }
        unsafe self.raw = raw
    }

    var bits: UInt { UInt(bitPattern: unsafe raw) }

    /// Where the counters start: after the header and every node's and class's entry.
    static func countersOffset(nodes: Int, classes: Int) -> Int {
        headerBytes + nodes * classes * MemoryLayout<ClassCache>.stride
    }

    static func allocate(heapID: UInt64, homeNode: Int, nodes: Int, classes: Int) -> HeapThreadCache {
        let bytes = countersOffset(nodes: nodes, classes: classes) + 2 * classes * MemoryLayout<Atomic<Int>>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let cache = unsafe HeapThreadCache(raw)
        unsafe cache.header.initialize(to: Header(heapID: heapID, homeNode: homeNode))
        for i in 0..<(nodes * classes) { unsafe cache.entry(i).initialize(to: ClassCache()) }
        let counters = unsafe cache.counters(at: countersOffset(nodes: nodes, classes: classes))
        for i in 0..<(2 * classes) { unsafe (counters + i).initialize(to: Atomic<Int>(0)) }
        return cache
    }

    func deallocate(nodes: Int, classes: Int) {
        unsafe header.deinitialize(count: 1)
        unsafe counters(at: Self.countersOffset(nodes: nodes, classes: classes)).deinitialize(count: 2 * classes)
        unsafe raw.deallocate()
    }

    var header: UnsafeMutablePointer<Header> {
        @inline(__always) get { unsafe raw.assumingMemoryBound(to: Header.self) }
    }

    @inline(__always)
    func entry(_ index: Int) -> UnsafeMutablePointer<ClassCache> {
        unsafe (raw + Self.headerBytes).assumingMemoryBound(to: ClassCache.self) + index
    }

    /// Per class, allocations then frees, at ``countersOffset(nodes:classes:)``.
    @inline(__always)
    func counters(at offset: Int) -> UnsafeMutablePointer<Atomic<Int>> {
        unsafe (raw + offset).assumingMemoryBound(to: Atomic<Int>.self)
    }

    /// Adds to a counter the owning thread alone writes.
    @inline(__always)
    static func bump(_ counter: UnsafeMutablePointer<Atomic<Int>>, by n: Int) {
        unsafe counter.pointee.store(counter.pointee.load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }


    // MARK: stash

    @inline(__always)
    static func stashSlot(_ entry: UnsafeMutablePointer<ClassCache>, _ i: Int) -> UnsafeMutablePointer<UInt> {
        unsafe UnsafeMutableRawPointer(entry).advanced(by: MemoryLayout<ClassCache>.offset(of: \.stash)!)
            .assumingMemoryBound(to: UInt.self) + i
    }
}

/// The process-wide table of live heaps and the per-thread tables that find
/// a thread's cache for a heap: one thread-local load (slot 1 of
/// `ha_tls_slots`), then the heap's entry. Creation and destruction of
/// heaps, a thread's first use of a heap and thread exit take the lock.
enum HeapRegistry {
    static let maximumHeaps = 256
    @inline(__always) static var threadSlot: UInt32 { 1 }

    @safe struct Entry {
        var id: UInt64
        /// Nil until the heap's initializer finished.
        var heap: Unmanaged<DMAHeap>?
        var caches: [UInt] = []
        /// Counters of caches whose threads exited.
        var retired = DMAHeapStatistics.Counters()
    }

    struct State: @unchecked Sendable {
        var entries = [Entry?](repeating: nil, count: maximumHeaps)
        var nextID: UInt64 = 1
    }

    static let state = Mutex(State())

    /// Takes a free slot for a heap being created.
    static func reserveSlot() throws(DMAHeapError) -> (slot: Int, id: UInt64) {
        let ticket: (Int, UInt64)? = state.withLock { s in
            guard let slot = s.entries.firstIndex(where: { $0 == nil }) else { return nil }
            let id = s.nextID
            s.nextID += 1
            s.entries[slot] = unsafe Entry(id: id, heap: nil)
            return (slot, id)
        }
        guard let ticket else { throw .tooManyHeaps(maximum: maximumHeaps) }
        return ticket
    }

    /// Makes a created heap known to thread exit hooks.
    static func publish(slot: Int, id: UInt64, heap: Unmanaged<DMAHeap>) {
        state.withLock { s in
            if s.entries[slot]?.id == id { unsafe s.entries[slot]?.heap = unsafe heap }
        }
    }

    /// Removes a heap and frees the caches of every thread (their tables
    /// keep a stale entry, which never matches a live heap's id).
    static func retire(slot: Int, id: UInt64, nodes: Int, classes: Int) {
        let caches: [UInt] = state.withLock { s in
            guard let entry = s.entries[slot], entry.id == id else { return [] }
            s.entries[slot] = nil
            return entry.caches
        }
        for bits in caches { HeapThreadCache(bits: bits)?.deallocate(nodes: nodes, classes: classes) }
    }

    /// A thread's table: per heap slot, the cache's address and the heap's id.
    @safe
    struct ThreadTable {
        let entries: UnsafeMutablePointer<UInt>

        @inline(__always)
        static var current: ThreadTable? {
            let bits = ha_tls_load(HeapRegistry.threadSlot)
            guard _fastPath(bits != 0) else { return nil }
            return unsafe ThreadTable(entries: UnsafeMutablePointer<UInt>(bitPattern: bits).unsafelyUnwrapped)
        }

        static func currentOrNew() -> ThreadTable {
            if let existing = current { return existing }
            let entries = UnsafeMutablePointer<UInt>.allocate(capacity: 2 * maximumHeaps)
            unsafe entries.initialize(repeating: 0, count: 2 * maximumHeaps)
            ha_tls_store(threadSlot, UInt(bitPattern: entries))
            _ = unsafe ha_at_thread_exit({ argument in
                guard let argument = unsafe argument else { return }
                unsafe HeapRegistry.threadExited(ThreadTable(entries: argument.assumingMemoryBound(to: UInt.self)))
            }, UnsafeMutableRawPointer(entries))
            return unsafe ThreadTable(entries: entries)
        }

        @inline(__always)
        func cache(slot: Int, id: UInt64) -> HeapThreadCache? {
            let entry = unsafe entries + 2 &* slot
            guard _fastPath(unsafe entry[1] == UInt(truncatingIfNeeded: id)) else { return nil }
            return unsafe HeapThreadCache(UnsafeMutableRawPointer(bitPattern: entry[0]).unsafelyUnwrapped)
        }
    }

    /// Registers a new cache for the calling thread.
    static func makeCache(for heap: DMAHeap) -> HeapThreadCache {
        let table = ThreadTable.currentOrNew()
        let cache = HeapThreadCache.allocate(heapID: heap.id, homeNode: heap.homeNodeIndex(),
                                             nodes: heap.nodes.count, classes: heap.classes.count)
        state.withLock { s in
            s.entries[heap.slot]?.caches.append(cache.bits)
        }
        unsafe table.entries[2 * heap.slot] = cache.bits
        unsafe table.entries[2 * heap.slot + 1] = UInt(truncatingIfNeeded: heap.id)
        return cache
    }

    /// The thread-exit hook: every cache of a live heap gives its spans back
    /// (or abandons those still holding objects) and is freed.
    static func threadExited(_ table: ThreadTable) {
        state.withLock { s in
            for slot in 0..<maximumHeaps {
                let bits = unsafe table.entries[2 * slot]
                let id = UInt64(unsafe table.entries[2 * slot + 1])
                guard bits != 0, let entry = s.entries[slot], entry.id == id, let unmanaged = unsafe entry.heap,
                      let cache = HeapThreadCache(bits: bits) else { continue }
                let heap = unsafe unmanaged.takeUnretainedValue()
                heap.flush(cache, abandon: true)
                s.entries[slot]!.retired.add(heap.counters(of: cache))
                s.entries[slot]!.caches.removeAll { $0 == bits }
                cache.deallocate(nodes: heap.nodes.count, classes: heap.classes.count)
            }
        }
        ha_tls_store(threadSlot, 0)
        unsafe table.entries.deallocate()
    }
}
