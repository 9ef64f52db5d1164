import CHugeAllocShims

/// What code outside this module needs to take objects from and put them
/// into a thread's cache itself: the C API's header inlines the cache fast
/// path of `ha_mempool_get`/`put` (as DPDK's rte_mempool.h does), reading
/// the thread table of `ha_tls_slots` and the cache records directly.
///
/// The layout it reads, in 8-byte words: the table in thread-local slot
/// ``MempoolRegistry/threadSlot`` holds per pool slot the record's address
/// and the pool's id; a record holds its count at word 1, its get and put
/// counters at words 2 and 3, and its cached objects from word 8. The
/// words below are measured on a live record, not assumed: when the
/// record's layout changes, ``inlineCache`` turns nil, the C callers go
/// through the library (slower, still right), and the test that checks
/// `Mempool.inlineCacheLayoutHolds` fails.
extension Mempool {
    /// The facts an inline cache path needs, or nil when it may not serve
    /// this pool: checked pools (every get and put updates owner words),
    /// pools without per-thread caches, shared pools (their records live in
    /// control memory and are claimed per process), or a record layout other
    /// than the one documented above.
    package struct InlineCache: Sendable {
        /// The pool's id, as a thread's table entry holds it.
        package let poolID: UInt64
        /// The pool's entry in a thread's table.
        package let slot: Int
        /// Objects a thread's cache holds at most.
        package let capacity: Int
        /// The record's get and put counters must be bumped.
        package let countsOperations: Bool
    }

    package var inlineCache: InlineCache? {
        guard usesThreadRecord, !checked, sharedControl == nil, Self.inlineCacheLayoutHolds else { return nil }
        return InlineCache(poolID: id, slot: slot, capacity: cacheCapacity, countsOperations: statisticsEnabled)
    }

    /// Whether a cache record and the thread table are laid out as the
    /// type's documentation says, measured once on a scratch record.
    package static let inlineCacheLayoutHolds: Bool = {
        guard MempoolRegistry.threadSlot == UInt32(HA_CAPI_TLS_TABLE) else { return false }
        let record = MempoolRecord.allocate(poolID: 0x5EED, capacity: 1)
        defer { record.deallocate() }
        let words = unsafe UnsafeRawPointer(record.header).assumingMemoryBound(to: Int.self)
        let slots = unsafe UnsafeRawPointer(record.slots) - UnsafeRawPointer(record.header)
        record.setCount(1)
        record.bump(.gets, by: 0x1234)
        record.bump(.puts, by: 0x5678)
        return unsafe words[Int(HA_CAPI_RECORD_COUNT)] == 1
            && words[Int(HA_CAPI_RECORD_GETS)] == 0x1234
            && words[Int(HA_CAPI_RECORD_PUTS)] == 0x5678
            && slots == Int(HA_CAPI_RECORD_SLOTS) * 8
    }()
}
