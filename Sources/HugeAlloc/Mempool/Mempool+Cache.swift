import CHugeAllocShims
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Per-thread caches.
///
/// Each thread owns a table (in thread-local slot 0 of `CHugeAllocShims`)
/// with one entry per live pool slot; an entry holds that thread's
/// ``MempoolRecord`` for the pool (the cache and statistics) and the pool's
/// id, side by side. When the thread exits, a `pthread` key destructor
/// (`ha_at_thread_exit`) puts every cached object back into its pool, if the
/// pool is still alive, and frees the records.
/// The process-wide table of live pools, guarded by one lock that only slow
/// paths take: pool creation and destruction, a thread's first use of a
/// pool, thread exit, and counting.
@usableFromInline
enum MempoolRegistry {
    static let maximumPools = 1024
    /// The `ha_tls_slots` index holding this thread's record table.
    @inlinable static var threadSlot: UInt32 { 0 }

    /// Where a live pool's free objects go back: a view of its ring or
    /// stack. The pool publishes it after creation and retires it first
    /// thing in `deinit`, under the lock, before its backend is freed; the
    /// registry uses it only under the same lock.
    enum Backend {
        case ring(MempoolRing._UnsafeHandle)
        case stack(MempoolStack._UnsafeHandle, locked: Bool)
        /// A shared pool's, used by this process (`pid`).
        case shared(MempoolSharedBackend, pid: UInt32)

        /// Moves a record's cached objects back, the record's count set to
        /// 0 as part of the operation (a shared backend's journaled transfer).
        func drain(_ record: MempoolRecord, count n: Int) -> Bool {
            switch self {
            case .ring(let ring): unsafe ring.enqueue(record.slots, count: n)
            case .stack(let stack, let locked): unsafe stack.push(record.slots, count: n, locked: locked)
            case .shared(let backend, let pid):
                unsafe backend.enqueue(record.slots, count: n, by: pid, .transfer, record: record, recordCount: 0)
            }
        }
    }

    struct Entry {
        var id: UInt64
        var backend: Backend
        /// A shared pool's: records live in its control memory and are
        /// released, never freed; the two lists below stay empty.
        var shared = false
        var records: [MempoolRecord] = []
        var retired = MempoolStatistics()
    }

    /// Set in the id of every shared pool instance, so a thread table
    /// tells a shared record (never freed, its memory perhaps unmapped by
    /// now) from a private one without reading it.
    static let sharedIDBit: UInt64 = 1 << 63

    struct State: @unchecked Sendable {
        var entries = [Entry?](repeating: nil, count: maximumPools)
        var reserved = [Bool](repeating: false, count: maximumPools)
        var nextID: UInt64 = 1
    }

    static let state = Mutex(State())

    static func reserveSlot(shared: Bool = false) throws(MempoolError) -> (slot: Int, id: UInt64) {
        let ticket: (Int, UInt64)? = state.withLock { s in
            guard let slot = s.reserved.firstIndex(of: false) else { return nil }
            s.reserved[slot] = true
            defer { s.nextID += 1 }
            return (slot, s.nextID | (shared ? sharedIDBit : 0))
        }
        guard let ticket else { throw .tooManyPools(maximum: maximumPools) }
        return ticket
    }

    static func publish(slot: Int, entry: Entry) {
        state.withLock { $0.entries[slot] = entry }
    }

    static func retire(slot: Int, id: UInt64, shared region: MempoolSharedControl.Region?) {
        state.withLock { s in
            if let region, let entry = s.entries[slot], entry.id == id {
                // Every record of this process's threads for this instance.
                let pid = getpid()
                for i in 0..<region.layout.threadRecords {
                    let record = region.record(i)
                    if record.ownerPID == pid && record.poolID == id { drain(record, into: &s.entries[slot]!, unlist: true) }
                }
            }
            if s.entries[slot]?.id == id { s.entries[slot] = nil }
            s.reserved[slot] = false
        }
        // This thread's record for the pool goes now; other threads free
        // theirs when they exit or when a new pool takes the slot.
        guard let table = ThreadTable.current else { return }
        if table.id(slot: slot) == UInt(truncatingIfNeeded: id) {
            if region == nil { table.record(slot: slot)?.deallocate() }
            table.clear(slot: slot)
        }
    }

    /// Claims a record in a shared pool's control memory for this thread;
    /// nil when every record is taken (the thread then works uncached).
    static func claimSharedRecord(slot: Int, id: UInt64, region: MempoolSharedControl.Region) -> MempoolRecord? {
        let table = ThreadTable.currentOrNew()
        table.discard(slot: slot)
        guard let record = region.claimRecord(pid: getpid(), poolID: id) else { return nil }
        table.set(slot: slot, record: record, id: id)
        return record
    }

    /// Registers a new record for a pool in this thread's table.
    static func makeRecord(slot: Int, id: UInt64, capacity: Int) -> MempoolRecord {
        let table = ThreadTable.currentOrNew()
        // A record left by a destroyed pool that had the same slot.
        table.discard(slot: slot)
        let record = MempoolRecord.allocate(poolID: id, capacity: capacity)
        state.withLock { s in
            if s.entries[slot]?.id == id { s.entries[slot]!.records.append(record) }
        }
        table.set(slot: slot, record: record, id: id)
        return record
    }

    /// Puts a record's cached objects back into its pool and unlists it.
    /// Runs with the lock held, so the pool cannot be destroyed meanwhile.
    static func drain(_ record: MempoolRecord, into entry: inout Entry, unlist: Bool) {
        let n = record.count
        if n > 0 {
            if !entry.backend.drain(record, count: n) {
                fatalError("mempool: a thread's cached objects do not fit back into the pool (a double free)")
            }
            record.bump(.flushes, by: 1)
            record.setCount(0)
        }
        if unlist {
            if entry.shared {
                record.release()
            } else {
                entry.records.removeAll { $0.bits == record.bits }
                entry.retired += record.statistics
            }
        }
    }

    /// The pthread key destructor: flush every cache of the exiting thread.
    static func threadExited(table: ThreadTable) {
        for slot in 0..<maximumPools {
            guard let record = table.record(slot: slot) else { continue }
            let id = UInt64(table.id(slot: slot))
            state.withLock { s in
                if s.entries[slot]?.id == id { drain(record, into: &s.entries[slot]!, unlist: true) }
            }
            // A shared record was released by the drain, or by its pool's
            // instance when it was destroyed.
            if id & sharedIDBit == 0 { record.deallocate() }
        }
        ha_tls_store(threadSlot, 0)
        unsafe table.entries.deallocate()
    }

    /// A thread's table: per pool slot, two words, the record's address and
    /// the pool's id (0, 0 when the thread has no record for the slot).
    @usableFromInline
    @safe
    struct ThreadTable {
        @usableFromInline let entries: UnsafeMutablePointer<UInt>

        @usableFromInline
        init(entries: UnsafeMutablePointer<UInt>) {
            unsafe self.entries = entries
        }

        /// This thread's table, nil before the thread's first use of a pool.
        @inlinable static var current: ThreadTable? {
            @inline(__always) get {
                let bits = ha_tls_load(MempoolRegistry.threadSlot)
                guard _fastPath(bits != 0) else { return nil }
                return unsafe ThreadTable(entries: UnsafeMutablePointer<UInt>(bitPattern: bits).unsafelyUnwrapped)
            }
        }

        /// This thread's table, created (and its exit hook registered) on first use.
        static func currentOrNew() -> ThreadTable {
            if let existing = current { return existing }
            let entries = UnsafeMutablePointer<UInt>.allocate(capacity: 2 * maximumPools)
            unsafe entries.initialize(repeating: 0, count: 2 * maximumPools)
            ha_tls_store(threadSlot, UInt(bitPattern: entries))
            _ = unsafe ha_at_thread_exit({ argument in
                guard let argument = unsafe argument else { return }
                unsafe MempoolRegistry.threadExited(
                    table: ThreadTable(entries: argument.assumingMemoryBound(to: UInt.self)))
            }, UnsafeMutableRawPointer(entries))
            return unsafe ThreadTable(entries: entries)
        }

        /// The record for pool `id` in `slot`, or nil: the hot path, two
        /// independent loads and a compare.
        @inlinable @inline(__always)
        func record(slot: Int, id: UInt64) -> MempoolRecord? {
            let entry = unsafe entries + 2 &* slot
            guard _fastPath(unsafe entry[1] == UInt(truncatingIfNeeded: id)) else { return nil }
            // A matching id means the entry holds a record: no nil check.
            return unsafe MempoolRecord(header: UnsafeMutablePointer(bitPattern: entry[0]).unsafelyUnwrapped)
        }

        /// Whatever record `slot` holds, possibly a stale one.
        func record(slot: Int) -> MempoolRecord? {
            unsafe MempoolRecord(bits: entries[2 * slot])
        }

        func set(slot: Int, record: MempoolRecord, id: UInt64) {
            unsafe entries[2 * slot] = record.bits
            unsafe entries[2 * slot + 1] = UInt(truncatingIfNeeded: id)
        }

        func clear(slot: Int) {
            unsafe entries[2 * slot] = 0
            unsafe entries[2 * slot + 1] = 0
        }

        /// The pool id the entry of `slot` holds (0 for none).
        func id(slot: Int) -> UInt {
            unsafe entries[2 * slot + 1]
        }

        /// Empties the entry of `slot`, freeing a private record left there
        /// (a shared one is in control memory: released already, not freed).
        func discard(slot: Int) {
            if UInt64(id(slot: slot)) & MempoolRegistry.sharedIDBit == 0 { record(slot: slot)?.deallocate() }
            clear(slot: slot)
        }
    }
}

extension Mempool {
    /// This thread's record for this pool: one thread-local load, then the
    /// table entry's record pointer and pool id (side by side, loaded in
    /// parallel) and an id compare on the fast path.
    @inlinable @inline(__always)
    func threadRecord() -> MempoolRecord? {
        if let record = existingThreadRecord() { return record }
        return makeThreadRecord()
    }

    /// This thread's record for this pool when it has one (nothing is made).
    @inlinable @inline(__always)
    func existingThreadRecord() -> MempoolRecord? {
        guard let table = MempoolRegistry.ThreadTable.current else { return nil }
        return table.record(slot: slot, id: id)
    }

    /// ``get()`` when this thread's cache can serve it alone: one object
    /// off the cache of an unchecked pool, as ``cachedGet(into:count:)``
    /// takes it. nil when it takes more than that (no cache or no record
    /// for this thread yet, an empty cache, checked mode): then ``get()``
    /// does it all. For entry points that keep the slow paths out of line,
    /// so that their fast path needs no frame (the C API's `ha_mempool_get`).
    @inlinable @inline(__always)
    package func getFromCache() -> UnsafeMutableRawPointer? {
        guard usesThreadRecord, !checked, let record = existingThreadRecord() else { return nil }
        let have = record.count
        guard _fastPath(have > 0) else { return nil }
        let object = unsafe record.slots[have &- 1]
        record.setCount(have &- 1)
        if statisticsEnabled { record.bump(.gets, by: 1) }
        return unsafe object
    }

    /// ``put(_:)`` when this thread's cache can take `object` alone: an
    /// unchecked pool whose cache has room, as ``cachedPut(_:count:)``
    /// puts it back. false, nothing done, when it takes more than that:
    /// then ``put(_:)`` does it all.
    @inlinable @inline(__always)
    package func putIntoCache(_ object: UnsafeMutableRawPointer) -> Bool {
        guard usesThreadRecord, !checked, let record = existingThreadRecord() else { return false }
        let have = record.count
        guard _fastPath(have < cacheCapacity) else { return false }
        unsafe (record.slots + have).initialize(to: object)
        record.setCount(have &+ 1)
        if statisticsEnabled { record.bump(.puts, by: 1) }
        return true
    }

    /// A new record for this thread; nil only for a shared pool whose
    /// records are all taken.
    @usableFromInline @inline(never)
    func makeThreadRecord() -> MempoolRecord? {
        if let region = sharedControl { return MempoolRegistry.claimSharedRecord(slot: slot, id: id, region: region) }
        return MempoolRegistry.makeRecord(slot: slot, id: id, capacity: cacheCapacity)
    }

    /// ``get(into:count:)`` for a thread without a record (a shared pool's
    /// records all taken): straight from the backend.
    @usableFromInline @inline(never)
    func uncachedGet(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        unsafe backendDequeue(objects, count: n)
    }

    /// ``put(from:count:)`` for a thread without a record: straight to the backend.
    @usableFromInline @inline(never)
    func uncachedPut(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        if unsafe backendEnqueue(objects, count: n) { return true }
        if UInt(bitPattern: n) > UInt(bitPattern: objectCount) { return false }
        backendOverflow(n)
    }

    /// ``get(into:count:)`` when this thread's cache can serve it alone:
    /// `n` objects off the cache of an unchecked pool, as
    /// ``cachedGet(into:count:)`` takes them. false, nothing taken, when it
    /// takes more than that; then ``get(into:count:)`` does it all.
    @inlinable @inline(__always)
    package func getFromCache(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        guard usesThreadRecord, !checked, let record = existingThreadRecord() else { return false }
        let have = record.count
        guard _fastPath(UInt(bitPattern: n) <= UInt(bitPattern: have)) else { return false }
        unsafe MempoolObjects.copy(objects, from: record.slots + (have &- n), count: n)
        record.setCount(have &- n)
        if statisticsEnabled { record.bump(.gets, by: n) }
        return true
    }

    /// ``put(from:count:)`` when this thread's cache can take the `n`
    /// objects alone (an unchecked pool, room in the cache), as
    /// ``cachedPut(_:count:)`` puts them back. false, nothing put back,
    /// when it takes more than that; then ``put(from:count:)`` does it all.
    @inlinable @inline(__always)
    package func putIntoCache(from objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        guard usesThreadRecord, !checked, let record = existingThreadRecord() else { return false }
        let have = record.count
        guard _fastPath(UInt(bitPattern: n) <= UInt(bitPattern: cacheCapacity &- have)) else { return false }
        unsafe MempoolObjects.copy(record.slots + have, from: objects, count: n)
        record.setCount(have &+ n)
        if statisticsEnabled { record.bump(.puts, by: n) }
        return true
    }

    @inlinable @inline(__always)
    func cachedGet(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        guard let record = threadRecord() else { return unsafe uncachedGet(into: objects, count: n) }
        let have = record.count
        // Unsigned: a negative n takes the slow path, which refuses it.
        if _slowPath(UInt(bitPattern: n) > UInt(bitPattern: have)) {
            return unsafe refillAndGet(record, into: objects, count: n)
        }
        // The top `n` of the cache, most recently put back first in bulk
        // granularity: one forward copy the compiler turns into vector moves.
        unsafe MempoolObjects.copy(objects, from: record.slots + (have &- n), count: n)
        record.setCount(have &- n)
        if statisticsEnabled { record.bump(.gets, by: n) }
        return true
    }

    /// The cache holds fewer than `n`: refill it by half its size (plus what
    /// this call takes) from the backend, or fetch `n` directly when `n` is
    /// larger than half the cache. Refuses a count outside `0...count`.
    @usableFromInline @inline(never)
    func refillAndGet(
        _ record: MempoolRecord, into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int
    ) -> Bool {
        guard n >= 0, n <= count else {
            if statisticsEnabled { record.bump(.getFailures, by: 1) }
            return false
        }
        if let sharedBackend { return unsafe sharedRefillAndGet(sharedBackend, record, into: objects, count: n, marking: false) }
        var have = record.count
        let slots = unsafe record.slots
        if n > cacheHalf {
            let ok = unsafe backendDequeue(objects, count: n)
            if statisticsEnabled { record.bump(ok ? .gets : .getFailures, by: ok ? n : 1) }
            return ok
        }
        let want = cacheHalf &+ n &- have
        if unsafe backendDequeue(slots + have, count: want) {
            have &+= want
        } else if unsafe backendDequeue(slots + have, count: n &- have) {
            have = n
        } else {
            if statisticsEnabled { record.bump(.getFailures, by: 1) }
            return false
        }
        if statisticsEnabled {
            record.bump(.refills, by: 1)
            record.bump(.gets, by: n)
        }
        unsafe objects.update(from: slots + (have - n), count: n)
        record.setCount(have - n)
        return true
    }

    @inlinable @inline(__always)
    func cachedPut(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        guard let record = threadRecord() else { return unsafe uncachedPut(objects, count: n) }
        let have = record.count
        // Unsigned: a negative n takes the slow path, which refuses it.
        if _slowPath(UInt(bitPattern: n) > UInt(bitPattern: cacheCapacity &- have)) {
            return unsafe flushAndPut(record, objects, count: n)
        }
        unsafe MempoolObjects.copy(record.slots + have, from: objects, count: n)
        record.setCount(have &+ n)
        if statisticsEnabled { record.bump(.puts, by: n) }
        return true
    }

    /// The cache would overflow: flush all but half of it to the backend, or
    /// put `n` directly when `n` is larger than half the cache. Refuses a
    /// count outside `0...count`.
    @usableFromInline @inline(never)
    func flushAndPut(_ record: MempoolRecord, _ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        guard n >= 0, n <= count else { return false }
        if statisticsEnabled { record.bump(.puts, by: n) }
        if let sharedBackend { return unsafe sharedFlushAndPut(sharedBackend, record, objects, count: n, returning: nil) }
        if n > cacheHalf {
            if unsafe !backendEnqueue(objects, count: n) { backendOverflow(n) }
            return true
        }
        let have = record.count
        let slots = unsafe record.slots
        if unsafe !backendEnqueue(slots + cacheHalf, count: have - cacheHalf) { backendOverflow(have - cacheHalf) }
        if statisticsEnabled { record.bump(.flushes, by: 1) }
        unsafe (slots + cacheHalf).update(from: objects, count: n)
        record.setCount(cacheHalf + n)
        return true
    }

    /// Puts every object in the calling thread's cache back into the shared
    /// backend (threads do this automatically when they exit). In a pool
    /// with shared control memory the thread's record is released as well.
    public func flushThreadCache() {
        guard cachesThreads, let table = MempoolRegistry.ThreadTable.current,
              let record = table.record(slot: slot, id: id) else { return }
        let slot = self.slot
        let shared = sharedControl != nil
        MempoolRegistry.state.withLock { s in
            // A shared pool's record is released too, for other threads and processes.
            if s.entries[slot] != nil { MempoolRegistry.drain(record, into: &s.entries[slot]!, unlist: shared) }
        }
        if shared { table.clear(slot: slot) }
    }
}
