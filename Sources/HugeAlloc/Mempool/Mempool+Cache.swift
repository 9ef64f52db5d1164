import CHugeAllocShims
import Synchronization

/// Per-thread caches.
///
/// Each thread owns a table (in thread-local slot 0 of `CHugeAllocShims`)
/// with one entry per live pool slot; an entry points at that thread's
/// *record* for the pool:
///
///     offset 0   pool id (UInt64): a stale record from a destroyed pool never matches
///     offset 8   count of cached objects (Atomic<Int>, written only by the owner)
///     offset 16  statistics: gets, puts, get failures, refills, flushes (Atomic<Int> each)
///     offset 64  the cached object pointers, `cacheSize` of them
///
/// The owner reads and writes its record with relaxed loads and stores
/// (plain moves on x86-64); other threads only read counts and statistics,
/// under the registry lock, to report ``Mempool/availableCount``.
/// When the thread exits, a `pthread` key destructor (`ha_at_thread_exit`)
/// puts every cached object back into its pool, if the pool is still alive.
@usableFromInline
enum MempoolRecord {
    @inlinable static var countOffset: Int { 8 }
    @inlinable static var getsOffset: Int { 16 }
    @inlinable static var putsOffset: Int { 24 }
    @inlinable static var getFailuresOffset: Int { 32 }
    @inlinable static var refillsOffset: Int { 40 }
    @inlinable static var flushesOffset: Int { 48 }
    @inlinable static var slotsOffset: Int { 64 }

    static func allocate(id: UInt64, capacity: Int) -> UnsafeMutableRawPointer {
        let record = unsafe UnsafeMutableRawPointer.allocate(
            byteCount: slotsOffset + max(1, capacity) * MemoryLayout<UnsafeMutableRawPointer>.stride,
            alignment: 64)
        unsafe record.storeBytes(of: id, as: UInt64.self)
        for offset in stride(from: countOffset, through: flushesOffset, by: 8) {
            unsafe (record + offset).bindMemory(to: Atomic<Int>.self, capacity: 1).initialize(to: Atomic(0))
        }
        return unsafe record
    }

    @inlinable @inline(__always)
    static func counter(_ record: UnsafeMutableRawPointer, _ offset: Int) -> UnsafeMutablePointer<Atomic<Int>> {
        unsafe (record + offset).assumingMemoryBound(to: Atomic<Int>.self)
    }

    @inlinable @inline(__always)
    static func slots(_ record: UnsafeMutableRawPointer) -> UnsafeMutablePointer<UnsafeMutableRawPointer> {
        unsafe (record + slotsOffset).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    }

    /// Copies `n` object pointers, four at a time as one 32-byte vector
    /// (the buffers never overlap, which the compiler cannot prove, so a
    /// plain loop stays scalar); with a constant `n` it unrolls completely,
    /// where a call to `memmove` would cost more than the copy.
    @inlinable @inline(__always)
    static func copy(
        _ destination: UnsafeMutablePointer<UnsafeMutableRawPointer>,
        from source: UnsafePointer<UnsafeMutableRawPointer>, count n: Int
    ) {
        let to = UnsafeMutableRawPointer(destination)
        let from = unsafe UnsafeRawPointer(source)
        var i = 0
        while i &+ 4 <= n {
            let v = unsafe from.loadUnaligned(fromByteOffset: i &* 8, as: SIMD4<UInt64>.self)
            unsafe to.storeBytes(of: v, toByteOffset: i &* 8, as: SIMD4<UInt64>.self)
            i &+= 4
        }
        while i < n {
            unsafe destination[i] = source[i]
            i &+= 1
        }
    }

    /// Adds to a counter only this thread writes: a relaxed load and store.
    @inlinable @inline(__always)
    static func bump(_ record: UnsafeMutableRawPointer, _ offset: Int, by n: Int) {
        let c = unsafe counter(record, offset)
        unsafe c.pointee.store(c.pointee.load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }

    static func statistics(_ record: UnsafeMutableRawPointer) -> MempoolStatistics {
        func load(_ o: Int) -> Int { unsafe counter(record, o).pointee.load(ordering: .relaxed) }
        return MempoolStatistics(
            gets: load(getsOffset), puts: load(putsOffset), getFailures: load(getFailuresOffset),
            refills: load(refillsOffset), flushes: load(flushesOffset))
    }
}

/// The process-wide table of live pools, guarded by one lock that only slow
/// paths take: pool creation and destruction, a thread's first use of a
/// pool, thread exit, and counting.
@usableFromInline
enum MempoolRegistry {
    static let maximumPools = 1024
    /// The `ha_tls_slots` index holding this thread's record table.
    @inlinable static var threadSlot: UInt32 { 0 }

    struct Entry {
        var id: UInt64
        var ring: MempoolRing
        var stack: MempoolStack
        var backendIsRing: Bool
        var singleThread: Bool
        var records: [UInt] = []
        var retired = MempoolStatistics()

        func enqueue(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
            backendIsRing
                ? unsafe ring.enqueue(objects, count: n)
                : unsafe stack.push(objects, count: n, locked: !singleThread)
        }
    }

    struct State: @unchecked Sendable {
        var entries = [Entry?](repeating: nil, count: maximumPools)
        var reserved = [Bool](repeating: false, count: maximumPools)
        var nextID: UInt64 = 1
    }

    static let state = Mutex(State())

    static func reserveSlot() throws(MempoolError) -> (slot: Int, id: UInt64) {
        let ticket: (Int, UInt64)? = state.withLock { s in
            guard let slot = s.reserved.firstIndex(of: false) else { return nil }
            s.reserved[slot] = true
            defer { s.nextID += 1 }
            return (slot, s.nextID)
        }
        guard let ticket else { throw .tooManyPools(maximum: maximumPools) }
        return ticket
    }

    static func publish(slot: Int, entry: Entry) {
        state.withLock { $0.entries[slot] = entry }
    }

    static func retire(slot: Int, id: UInt64) {
        state.withLock { s in
            if s.entries[slot]?.id == id { s.entries[slot] = nil }
            s.reserved[slot] = false
        }
        // This thread's record for the pool goes now; other threads free
        // theirs when they exit or when a new pool takes the slot.
        let table = ha_tls_load(threadSlot)
        guard table != 0 else { return }
        let entries = unsafe UnsafeMutablePointer<UInt>(bitPattern: table)!
        if unsafe entries[2 * slot] != 0, let record = unsafe UnsafeMutableRawPointer(bitPattern: entries[2 * slot]),
           unsafe record.load(as: UInt64.self) == id
        {
            unsafe record.deallocate()
            unsafe entries[2 * slot] = 0
            unsafe entries[2 * slot + 1] = 0
        }
    }

    /// This thread's table, created (and its exit hook registered) on first use.
    static func currentTable() -> UnsafeMutablePointer<UInt> {
        let existing = ha_tls_load(threadSlot)
        if existing != 0 { return unsafe UnsafeMutablePointer<UInt>(bitPattern: existing)! }
        let table = UnsafeMutablePointer<UInt>.allocate(capacity: 2 * maximumPools)
        unsafe table.initialize(repeating: 0, count: 2 * maximumPools)
        ha_tls_store(threadSlot, UInt(bitPattern: table))
        _ = unsafe ha_at_thread_exit({ argument in
            guard let argument = unsafe argument else { return }
            unsafe MempoolRegistry.threadExited(table: argument.assumingMemoryBound(to: UInt.self))
        }, UnsafeMutableRawPointer(table))
        return unsafe table
    }

    /// Registers a new record for `pool` in this thread's table.
    static func makeRecord(slot: Int, id: UInt64, capacity: Int) -> UnsafeMutableRawPointer {
        let table = unsafe currentTable()
        if unsafe table[2 * slot] != 0 {
            // A record left by a destroyed pool that had the same slot.
            unsafe UnsafeMutableRawPointer(bitPattern: table[2 * slot])!.deallocate()
        }
        let record = unsafe MempoolRecord.allocate(id: id, capacity: capacity)
        state.withLock { s in
            if s.entries[slot]?.id == id { s.entries[slot]!.records.append(UInt(bitPattern: record)) }
        }
        unsafe table[2 * slot] = UInt(bitPattern: record)
        unsafe table[2 * slot + 1] = UInt(id)
        return unsafe record
    }

    /// Puts a record's cached objects back into its pool and unlists it.
    /// Runs with the lock held, so the pool cannot be destroyed meanwhile.
    static func drain(_ record: UnsafeMutableRawPointer, into entry: inout Entry, unlist: Bool) {
        let count = unsafe MempoolRecord.counter(record, MempoolRecord.countOffset)
        let n = unsafe count.pointee.load(ordering: .relaxed)
        if n > 0 {
            if unsafe !entry.enqueue(MempoolRecord.slots(record), count: n) {
                fatalError("mempool: a thread's cached objects do not fit back into the pool (a double free)")
            }
            unsafe MempoolRecord.bump(record, MempoolRecord.flushesOffset, by: 1)
            unsafe count.pointee.store(0, ordering: .relaxed)
        }
        if unlist {
            let bits = UInt(bitPattern: record)
            entry.records.removeAll { $0 == bits }
            entry.retired += unsafe MempoolRecord.statistics(record)
        }
    }

    /// The pthread key destructor: flush every cache of the exiting thread.
    static func threadExited(table: UnsafeMutablePointer<UInt>) {
        for slot in 0..<maximumPools {
            let bits = unsafe table[2 * slot]
            guard bits != 0, let record = unsafe UnsafeMutableRawPointer(bitPattern: bits) else { continue }
            let id = unsafe record.load(as: UInt64.self)
            state.withLock { s in
                if s.entries[slot]?.id == id { unsafe drain(record, into: &s.entries[slot]!, unlist: true) }
            }
            unsafe record.deallocate()
        }
        ha_tls_store(threadSlot, 0)
        unsafe table.deallocate()
    }
}

extension Mempool {
    /// This thread's record for this pool: one thread-local load, then the
    /// table entry's record pointer and pool id (side by side, loaded in
    /// parallel) and an id compare on the fast path.
    @inlinable @inline(__always)
    func threadRecord() -> UnsafeMutableRawPointer {
        let table = ha_tls_load(MempoolRegistry.threadSlot)
        if _fastPath(table != 0) {
            let entry = unsafe UnsafePointer<UInt>(bitPattern: table).unsafelyUnwrapped + 2 &* slot
            if _fastPath(unsafe entry[1] == UInt(truncatingIfNeeded: id)) {
                return unsafe UnsafeMutableRawPointer(bitPattern: entry[0]).unsafelyUnwrapped
            }
        }
        return unsafe makeThreadRecord()
    }

    @usableFromInline @inline(never)
    func makeThreadRecord() -> UnsafeMutableRawPointer {
        unsafe MempoolRegistry.makeRecord(slot: slot, id: id, capacity: cacheCapacity)
    }

    @inlinable @inline(__always)
    func cachedGet(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        let record = unsafe threadRecord()
        let countWord = unsafe MempoolRecord.counter(record, MempoolRecord.countOffset)
        let have = unsafe countWord.pointee.load(ordering: .relaxed)
        if _slowPath(n > have) {
            return unsafe refillAndGet(record, into: objects, count: n)
        }
        // The top `n` of the cache, most recently put back first in bulk
        // granularity: one forward copy the compiler turns into vector moves.
        unsafe MempoolRecord.copy(objects, from: MempoolRecord.slots(record) + (have &- n), count: n)
        unsafe countWord.pointee.store(have &- n, ordering: .relaxed)
        if statisticsEnabled { unsafe MempoolRecord.bump(record, MempoolRecord.getsOffset, by: n) }
        return true
    }

    /// The cache holds fewer than `n`: refill it by half its size (plus what
    /// this call takes) from the backend, or fetch `n` directly when `n` is
    /// larger than half the cache.
    @usableFromInline @inline(never)
    func refillAndGet(
        _ record: UnsafeMutableRawPointer, into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int
    ) -> Bool {
        let countWord = unsafe MempoolRecord.counter(record, MempoolRecord.countOffset)
        var have = unsafe countWord.pointee.load(ordering: .relaxed)
        let slots = unsafe MempoolRecord.slots(record)
        if n > cacheHalf {
            let ok = unsafe backendDequeue(objects, count: n)
            if statisticsEnabled {
                unsafe MempoolRecord.bump(record, ok ? MempoolRecord.getsOffset : MempoolRecord.getFailuresOffset, by: ok ? n : 1)
            }
            return ok
        }
        let want = cacheHalf &+ n &- have
        if unsafe backendDequeue(slots + have, count: want) {
            have &+= want
        } else if unsafe backendDequeue(slots + have, count: n &- have) {
            have = n
        } else {
            if statisticsEnabled { unsafe MempoolRecord.bump(record, MempoolRecord.getFailuresOffset, by: 1) }
            return false
        }
        if statisticsEnabled {
            unsafe MempoolRecord.bump(record, MempoolRecord.refillsOffset, by: 1)
            unsafe MempoolRecord.bump(record, MempoolRecord.getsOffset, by: n)
        }
        unsafe objects.update(from: slots + (have - n), count: n)
        unsafe countWord.pointee.store(have - n, ordering: .relaxed)
        return true
    }

    @inlinable @inline(__always)
    func cachedPut(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) {
        let record = unsafe threadRecord()
        let countWord = unsafe MempoolRecord.counter(record, MempoolRecord.countOffset)
        let have = unsafe countWord.pointee.load(ordering: .relaxed)
        if _slowPath(have &+ n > cacheCapacity) {
            unsafe flushAndPut(record, objects, count: n)
            return
        }
        unsafe MempoolRecord.copy(MempoolRecord.slots(record) + have, from: objects, count: n)
        unsafe countWord.pointee.store(have &+ n, ordering: .relaxed)
        if statisticsEnabled { unsafe MempoolRecord.bump(record, MempoolRecord.putsOffset, by: n) }
    }

    /// The cache would overflow: flush all but half of it to the backend, or
    /// put `n` directly when `n` is larger than half the cache.
    @usableFromInline @inline(never)
    func flushAndPut(_ record: UnsafeMutableRawPointer, _ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) {
        if statisticsEnabled { unsafe MempoolRecord.bump(record, MempoolRecord.putsOffset, by: n) }
        if n > cacheHalf {
            if unsafe !backendEnqueue(objects, count: n) { backendOverflow(n) }
            return
        }
        let countWord = unsafe MempoolRecord.counter(record, MempoolRecord.countOffset)
        let have = unsafe countWord.pointee.load(ordering: .relaxed)
        let slots = unsafe MempoolRecord.slots(record)
        if unsafe !backendEnqueue(slots + cacheHalf, count: have - cacheHalf) { backendOverflow(have - cacheHalf) }
        if statisticsEnabled { unsafe MempoolRecord.bump(record, MempoolRecord.flushesOffset, by: 1) }
        unsafe (slots + cacheHalf).update(from: objects, count: n)
        unsafe countWord.pointee.store(cacheHalf + n, ordering: .relaxed)
    }

    /// Puts every object in the calling thread's cache back into the shared
    /// backend (threads do this automatically when they exit).
    public func flushThreadCache() {
        guard usesThreadRecord else { return }
        let table = ha_tls_load(MempoolRegistry.threadSlot)
        guard table != 0 else { return }
        let bits = unsafe UnsafePointer<UInt>(bitPattern: table)![2 * slot]
        guard bits != 0, let record = unsafe UnsafeMutableRawPointer(bitPattern: bits),
              unsafe record.load(as: UInt64.self) == id else { return }
        let slot = self.slot
        MempoolRegistry.state.withLock { s in
            if s.entries[slot] != nil { unsafe MempoolRegistry.drain(record, into: &s.entries[slot]!, unlist: false) }
        }
    }
}
