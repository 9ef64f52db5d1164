import CHugeAllocShims
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// The contract with hugealloc.h's inline get and put: which pools they may
/// serve, and the words they read (the thread's table in `ha_tls_slots`,
/// the record's count and cached objects) hold what the pool's own cache
/// holds.
@Suite(.usesHugepagePool) struct MempoolInlineCacheTests {
    @Test func recordLayoutIsTheOneTheHeaderReads() {
        #expect(Mempool.inlineCacheLayoutHolds)
    }

    @Test(.enabled(if: hasFree2M, "needs free 2 MiB hugepages"))
    func onlyUncheckedCachedPrivatePoolsAreServedInline() throws {
        let cached = try Mempool(configuration: MempoolConfiguration(count: 64, objectSize: 64, cacheSize: 16))
        #expect(cached.inlineCache?.capacity == 16)
        for configuration in [
            MempoolConfiguration(count: 64, objectSize: 64, cacheSize: 16, checked: true),
            MempoolConfiguration(count: 64, objectSize: 64, cacheSize: 0),
            MempoolConfiguration(count: 64, objectSize: 64, cacheSize: 0, threading: .singleThread),
        ] {
            let pool = try Mempool(configuration: configuration)
            #expect(pool.inlineCache == nil, "\(configuration) would be served inline")
        }
    }

    /// What the header's inline get would take is what the pool itself
    /// would hand out next, and the count it reads is the cache's.
    @Test(.enabled(if: hasFree2M, "needs free 2 MiB hugepages"))
    func tableAndRecordWordsHoldTheThreadsCache() throws {
        let pool = try Mempool(configuration: MempoolConfiguration(count: 256, objectSize: 64, cacheSize: 32))
        let facts = try #require(pool.inlineCache)
        let a = try #require(pool.get())
        let b = try #require(pool.get())
        pool.put(a)
        pool.put(b)

        let table = try #require(UnsafePointer<UInt>(bitPattern: ha_tls_load(UInt32(HA_CAPI_TLS_TABLE))))
        let entry = table + 2 * facts.slot
        #expect(entry[1] == UInt(facts.poolID), "the entry names the pool")
        let record = try #require(UnsafePointer<UInt>(bitPattern: entry[0]))
        let count = Int(record[Int(HA_CAPI_RECORD_COUNT)])
        #expect(count >= 2 && count <= facts.capacity)
        let top = UnsafeMutableRawPointer(bitPattern: record[Int(HA_CAPI_RECORD_SLOTS) + count - 1])
        #expect(top == b, "the inline get would take the last object put back")
        #expect(pool.get() == b, "and so does the pool")
        #expect(Int(record[Int(HA_CAPI_RECORD_COUNT)]) == count - 1, "the count word follows the cache")
        pool.put(b)
    }
}
