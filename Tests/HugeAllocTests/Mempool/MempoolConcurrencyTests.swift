import Foundation
import HugeAllocTestSupport
import Synchronization
import Testing
@testable import HugeAlloc

/// Concurrent get/put: no object lost, none handed out twice, counts exact
/// once caches are flushed (by thread exit). Small enough for ThreadSanitizer
/// (tools/test-tsan runs this suite).
@Suite(.usesHugepagePool) struct MempoolConcurrencyTests {
    static let threads = 4
    static let rounds = 2000

    /// Each thread takes random bulks, claims each object in a shared
    /// "handed out" table (an atomic exchange: a second owner is caught),
    /// stamps it with its id, checks the stamp, releases the claim, puts back.
    func stress(_ configuration: MempoolConfiguration) throws {
        let pool = try Mempool(configuration: configuration)
        let count = configuration.count
        let objects = allObjects(pool)
        let index = Dictionary(uniqueKeysWithValues: objects.enumerated().map { (UInt(bitPattern: $1), $0) })
        let owners = Owners(count: count)
        let failures = Atomic<Int>(0)
        let handedTwice = Atomic<Int>(0)
        runOnThreads(Self.threads) { thread in
            var generator = SystemRandomNumberGenerator()
            var held: [UnsafeMutableRawPointer] = []
            // Holds at most 96 + 48 objects before a put.
            let buffer = UnsafeMutablePointer<UnsafeMutableRawPointer>.allocate(capacity: 256)
            defer { buffer.deallocate() }
            for _ in 0..<Self.rounds {
                let n = Int.random(in: 1...48, using: &generator)
                if pool.get(into: buffer, count: n) {
                    for i in 0..<n {
                        let object = buffer[i]
                        let k = index[UInt(bitPattern: object)]!
                        if owners.claim(k, by: thread) != 0 { handedTwice.add(1, ordering: .relaxed) }
                        object.storeBytes(of: UInt64(thread + 1), as: UInt64.self)
                        held.append(object)
                    }
                } else {
                    failures.add(1, ordering: .relaxed)
                }
                if held.count > 96 || Bool.random(using: &generator) {
                    let m = Int.random(in: 1...held.count, using: &generator)
                    for (i, object) in held.suffix(m).enumerated() {
                        #expect(object.load(as: UInt64.self) == UInt64(thread + 1), "object changed under its owner")
                        owners.release(index[UInt(bitPattern: object)]!)
                        buffer[i] = object
                    }
                    held.removeLast(m)
                    pool.put(from: buffer, count: m)
                }
            }
            for object in held { owners.release(index[UInt(bitPattern: object)]!) }
            _ = held.withUnsafeBufferPointer { pool.put(from: $0.baseAddress!, count: $0.count) }
            // The thread exits with objects in its cache: the exit hook returns them.
        }
        #expect(handedTwice.load(ordering: .relaxed) == 0, "an object was handed to two threads at once")
        #expect(pool.availableCount == count, "after every thread exited all \(count) objects are back")
        #expect(pool.inUseCount == 0)
        #expect(pool.backendAvailableCount == count, "thread exit flushed every cache into the backend")
        // Drain: every object comes out exactly once.
        let all = UnsafeMutablePointer<UnsafeMutableRawPointer>.allocate(capacity: count)
        defer { all.deallocate() }
        #expect(pool.get(into: all, count: count))
        #expect(Set((0..<count).map { UInt(bitPattern: all[$0]) }) == Set(objects.map { UInt(bitPattern: $0) }))
        #expect(pool.availableCount == 0)
        #expect(!pool.get(into: all, count: 1), "an empty pool hands out nothing")
        pool.put(from: all, count: count)
        pool.flushThreadCache()
        #expect(pool.availableCount == count)
    }

    @Test(.enabled(if: hasFree2M, "needs free 2 MiB hugepages"))
    func ringWithCachesKeepsEveryObject() throws {
        try stress(MempoolConfiguration(count: 1000, objectSize: 64, cacheSize: 64, backend: .ring))
    }

    @Test(.enabled(if: hasFree2M, "needs free 2 MiB hugepages"))
    func ringWithoutCachesKeepsEveryObject() throws {
        try stress(MempoolConfiguration(count: 600, objectSize: 64, cacheSize: 0, backend: .ring))
    }

    @Test(.enabled(if: hasFree2M, "needs free 2 MiB hugepages"))
    func stackWithCachesKeepsEveryObject() throws {
        try stress(MempoolConfiguration(count: 1000, objectSize: 128, cacheSize: 32, backend: .stack))
    }

    @Test(.enabled(if: hasFree2M, "needs free 2 MiB hugepages"))
    func checkedPoolUnderContentionFindsNoMisuse() throws {
        try stress(MempoolConfiguration(count: 800, objectSize: 100, cacheSize: 16, checked: true))
    }

    @Test(.enabled(if: hasFree2M, "needs free 2 MiB hugepages"))
    func statisticsCountEveryThreadIncludingExitedOnes() throws {
        let pool = try Mempool(configuration: MempoolConfiguration(count: 256, objectSize: 64, cacheSize: 32, statistics: true))
        runOnThreads(2) { _ in
            for _ in 0..<100 {
                let object = pool.get()!
                pool.put(object)
            }
        }
        let stats = pool.statistics
        #expect(stats.gets == 200 && stats.puts == 200 && stats.getFailures == 0)
        #expect(stats.refills >= 2, "each thread's first get refilled its cache")
        #expect(stats.flushes >= 2, "each thread's exit flushed its cache")
        #expect(pool.availableCount == 256)
    }
}

/// Which thread holds each object (0: none), as atomics so TSan sees no race.
final class Owners: @unchecked Sendable {
    let slots: UnsafeMutablePointer<Atomic<Int>>
    let count: Int
    init(count: Int) {
        self.count = count
        slots = .allocate(capacity: count)
        for i in 0..<count { (slots + i).initialize(to: Atomic(0)) }
    }
    deinit { slots.deallocate() }
    func claim(_ index: Int, by thread: Int) -> Int { slots[index].exchange(thread + 1, ordering: .acquiringAndReleasing) }
    func release(_ index: Int) { slots[index].store(0, ordering: .releasing) }
}
