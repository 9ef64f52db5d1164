import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

@Suite(.usesHugepagePool, .enabled(if: hasFree2M, "needs free 2 MiB hugepages")) struct MempoolCheckedTests {
    func checkedPool(cache: Int = 8) throws -> Mempool {
        try Mempool(configuration: MempoolConfiguration(count: 64, objectSize: 100, cacheSize: cache, checked: true))
    }

    @Test(arguments: [0, 8]) func catchesADoubleFree(cache: Int) throws {
        let pool = try checkedPool(cache: cache)
        let object = try #require(pool.get())
        try pool.putChecked(object)
        let index = try pool.objectIndex(of: object)
        #expect(throws: MempoolError.doubleFree(address: UInt(bitPattern: object), objectIndex: index)) {
            try pool.putChecked(object)
        }
        #expect(MempoolError.doubleFree(address: 0x1000, objectIndex: 3).description.contains("double free"))
        #expect(pool.availableCount == 64, "the second put added nothing")
    }

    @Test func catchesTheSameObjectTwiceInOneBulk() throws {
        let pool = try checkedPool()
        let object = try #require(pool.get())
        let pair = [object, object]
        #expect(throws: MempoolError.self) { try pool.putChecked(from: pair, count: 2) }
        #expect(pool.inUseCount == 1, "nothing of a failed bulk put is put back")
        try pool.putChecked(object)
        #expect(pool.inUseCount == 0)
    }

    @Test func catchesAForeignPointer() throws {
        let pool = try checkedPool()
        let other = try checkedPool()
        let foreign = try #require(other.get())
        #expect(throws: MempoolError.foreignPointer(address: UInt(bitPattern: foreign))) {
            try pool.putChecked(foreign)
        }
        let heap = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 64)
        defer { heap.deallocate() }
        #expect(throws: MempoolError.foreignPointer(address: UInt(bitPattern: heap))) { try pool.putChecked(heap) }
        #expect(MempoolError.foreignPointer(address: 0x10).description.contains("does not belong"))
    }

    @Test func catchesAPointerNotAtAnObjectStart() throws {
        let pool = try checkedPool()
        let object = try #require(pool.get())
        let inside = object + 8
        #expect(throws: MempoolError.notAnObjectStart(address: UInt(bitPattern: inside), nearestObjectStart: UInt(bitPattern: object))) {
            try pool.putChecked(inside)
        }
        try pool.putChecked(object)
    }

    @Test func catchesAWritePastTheEnd() throws {
        let pool = try checkedPool()
        let object = try #require(pool.get())
        // One byte past the 100-byte object (the cookie sits at the next 8-byte boundary, 104).
        (object + 104).storeBytes(of: 0x41, as: UInt8.self)
        do {
            try pool.putChecked(object)
            Issue.record("an overrun went unnoticed")
        } catch {
            guard case .guardCookieOverwritten(let address, _, let size, _) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            #expect(address == UInt(bitPattern: object) && size == 100)
            #expect(error.description.contains("write past the end"))
        }
    }

    @Test func uncheckedPoolRefusesTheCheckedAPI() throws {
        let pool = try Mempool(configuration: MempoolConfiguration(count: 8, objectSize: 64))
        let object = try #require(pool.get())
        #expect(throws: MempoolError.checksDisabled) { try pool.putChecked(object) }
        pool.put(object)
    }

    @Test func singleThreadModeKeepsExactCounts() throws {
        let pool = try Mempool(configuration: MempoolConfiguration(count: 100, objectSize: 64, threading: .singleThread))
        var held: [UnsafeMutableRawPointer] = []
        for _ in 0..<100 { held.append(try #require(pool.get())) }
        #expect(pool.get() == nil && pool.availableCount == 0 && Set(held).count == 100)
        for object in held { pool.put(object) }
        #expect(pool.availableCount == 100)
        // LIFO: the last object put back is the next handed out.
        #expect(pool.get() == held.last)
    }

    @Test func bulkGetIsAllOrNothing() throws {
        let pool = try Mempool(configuration: MempoolConfiguration(count: 40, objectSize: 64, cacheSize: 16))
        let buffer = UnsafeMutablePointer<UnsafeMutableRawPointer>.allocate(capacity: 64)
        defer { buffer.deallocate() }
        #expect(pool.get(into: buffer, count: 30))
        #expect(!pool.get(into: buffer + 30, count: 11), "11 asked, 10 left")
        #expect(pool.availableCount == 10)
        #expect(pool.get(into: buffer + 30, count: 10))
        pool.put(from: buffer, count: 40)
        pool.flushThreadCache()
        #expect(pool.availableCount == 40 && pool.backendAvailableCount == 40)
    }
}
