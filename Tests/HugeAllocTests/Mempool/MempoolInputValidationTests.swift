import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// Hostile inputs: counts and sizes that are negative, larger than the pool,
/// or large enough to overflow, on every backend. Each is refused (false or a
/// typed error) and leaves the pool as it was. The pools here live in heap
/// memory (4 KiB "pages", no physical addresses), so no hugepages are needed.
@Suite(.usesHugepagePool, .serialized) struct MempoolInputValidationTests {
    enum Backend: String, CaseIterable, Sendable {
        case ring, ringCached, stack, stackCached, singleThread, checkedRing

        var configuration: MempoolConfiguration {
            switch self {
            case .ring: MempoolConfiguration(count: 8, objectSize: 64, cacheSize: 0, backend: .ring)
            case .ringCached: MempoolConfiguration(count: 8, objectSize: 64, cacheSize: 4, backend: .ring)
            case .stack: MempoolConfiguration(count: 8, objectSize: 64, cacheSize: 0, backend: .stack)
            case .stackCached: MempoolConfiguration(count: 8, objectSize: 64, cacheSize: 4, backend: .stack)
            case .singleThread: MempoolConfiguration(count: 8, objectSize: 64, threading: .singleThread)
            case .checkedRing: MempoolConfiguration(count: 8, objectSize: 64, cacheSize: 4, checked: true)
            }
        }
    }

    /// A buffer of object pointers, larger than any pool here.
    final class Buffer {
        let pointer = UnsafeMutablePointer<UnsafeMutableRawPointer>.allocate(capacity: 64)
        deinit { pointer.deallocate() }
    }

    /// After a refused call: the pool still holds all 8 objects, hands each
    /// out exactly once, every one inside its memory, and then none.
    func expectIntact(_ pool: Mempool, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(pool.availableCount == 8, sourceLocation: sourceLocation)
        let buffer = Buffer()
        var taken = 0
        while taken < 9, pool.get(into: buffer.pointer + taken, count: 1) { taken += 1 }
        #expect(taken == 8, "the pool handed out \(taken) objects", sourceLocation: sourceLocation)
        let objects = (0..<min(taken, 8)).map { buffer.pointer[$0] }
        #expect(objects.allSatisfy { pool.contains($0) }, "an object outside the pool", sourceLocation: sourceLocation)
        #expect(Set(objects).count == objects.count, "an object handed out twice", sourceLocation: sourceLocation)
        pool.put(from: buffer.pointer, count: min(taken, 8))
        #expect(pool.availableCount == 8, sourceLocation: sourceLocation)
    }

    @Test(arguments: Backend.allCases)
    func negativeGetCountIsRefused(backend: Backend) throws {
        let pool = try heapPool(backend.configuration)
        let buffer = Buffer()
        #expect(!pool.get(into: buffer.pointer, count: -1))
        #expect(!pool.get(into: buffer.pointer, count: Int.min))
        expectIntact(pool)
    }

    @Test(arguments: Backend.allCases)
    func oversizedGetCountIsRefused(backend: Backend) throws {
        let pool = try heapPool(backend.configuration)
        let buffer = Buffer()
        #expect(!pool.get(into: buffer.pointer, count: 9))
        #expect(!pool.get(into: buffer.pointer, count: 1 << 32), "a count truncated to 32 bits must not pass")
        #expect(!pool.get(into: buffer.pointer, count: (1 << 32) + 1))
        #expect(!pool.get(into: buffer.pointer, count: Int.max))
        expectIntact(pool)
    }

    @Test(arguments: Backend.allCases)
    func negativePutCountIsRefused(backend: Backend) throws {
        let pool = try heapPool(backend.configuration)
        let buffer = Buffer()
        #expect(pool.get(into: buffer.pointer, count: 2))
        pool.put(from: buffer.pointer, count: -1)
        pool.put(from: buffer.pointer, count: Int.min)
        #expect(pool.availableCount == 6, "a refused put adds nothing")
        pool.put(from: buffer.pointer, count: 2)
        expectIntact(pool)
    }

    @Test(arguments: Backend.allCases)
    func oversizedPutCountIsRefused(backend: Backend) throws {
        let pool = try heapPool(backend.configuration)
        let buffer = Buffer()
        #expect(pool.get(into: buffer.pointer, count: 2))
        pool.put(from: buffer.pointer, count: 1 << 32)
        pool.put(from: buffer.pointer, count: Int.max)
        #expect(pool.availableCount == 6, "a refused put adds nothing")
        pool.put(from: buffer.pointer, count: 2)
        expectIntact(pool)
    }

    @Test(arguments: Backend.allCases)
    func zeroCountsDoNothing(backend: Backend) throws {
        let pool = try heapPool(backend.configuration)
        let buffer = Buffer()
        #expect(pool.get(into: buffer.pointer, count: 0))
        pool.put(from: buffer.pointer, count: 0)
        expectIntact(pool)
    }

    @Test func checkedPutOfANegativeCountIsATypedError() throws {
        let pool = try heapPool(Backend.checkedRing.configuration)
        let buffer = Buffer()
        #expect(pool.get(into: buffer.pointer, count: 1))
        #expect(throws: MempoolError.self) { try pool.putChecked(from: buffer.pointer, count: -1) }
        #expect(throws: MempoolError.self) { try pool.putChecked(from: buffer.pointer, count: 1 << 32) }
        try pool.putChecked(from: buffer.pointer, count: 1)
        expectIntact(pool)
    }

    // MARK: creation

    @Test func countIntMaxIsATypedError() {
        #expect(throws: MempoolError.countTooLarge(requested: Int.max, maximum: Mempool.maximumCount)) {
            _ = try Mempool.memoryNeeded(for: MempoolConfiguration(count: Int.max, objectSize: 64), pageSize: .huge2M)
        }
        #expect(throws: MempoolError.self) { _ = try Mempool(configuration: MempoolConfiguration(count: Int.max, objectSize: 64)) }
        #expect(throws: MempoolError.self) { _ = try heapPool(MempoolConfiguration(count: Int.max, objectSize: 64)) }
        #expect(throws: MempoolError.self) {
            _ = try heapPool(MempoolConfiguration(count: Int.max, objectSize: 64, backend: .stack, checked: true))
        }
    }

    @Test func objectSizeIntMaxIsATypedError() {
        for checked in [false, true] {
            for channels in [nil, 4] {
                let c = MempoolConfiguration(count: 8, objectSize: Int.max, checked: checked, memoryChannels: channels)
                #expect(throws: MempoolError.self) { _ = try Mempool(configuration: c) }
                #expect(throws: MempoolError.self) { _ = try heapPool(c) }
                var large = c
                large.objectSize = Int.max - 100
                large.alignment = 1 << 20
                #expect(throws: MempoolError.self) { _ = try heapPool(large) }
            }
        }
    }

    @Test func negativeMemoryLengthIsATypedError() {
        let base = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { base.deallocate() }
        for length in [-4096, -1, Int.min, 0] {
            let memory = MempoolMemory(base: base, length: length, pageSize: PageSize(rawValue: 4096)!) { _ in nil }
            #expect(throws: MempoolError.self, "length \(length)") {
                _ = try Mempool(memory: memory, configuration: MempoolConfiguration(count: 1, objectSize: 64))
            }
        }
    }
}

@Suite(.usesHugepagePool) struct PacketInputValidationTests {
    @Test func frameOfIntMaxBytesIsATypedError() throws {
        let mempool = try heapPool(MempoolConfiguration(count: 8, objectSize: 64 + 128 + 2048), pages: 8)
        let pool = try PacketPool(mempool: mempool)
        for length in [Int.max, Int.max - 1, Int(UInt32.max) + 1, -1, Int.min] {
            #expect(throws: PacketPoolError.self, "length \(length)") { _ = try pool.allocateFrame(length: length) }
        }
        #expect(pool.availableCount == 8)
    }
}

/// A pool over `pages` pages of heap memory of `pageSize` bytes (no
/// hugepages, no physical addresses): enough for the backends and the layout.
func heapPool(_ configuration: MempoolConfiguration, pages: Int = 4, pageSize: Int = 4096) throws -> Mempool {
    let bytes = pages * pageSize
    let base = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: pageSize)
    let bits = UInt(bitPattern: base)
    let memory = MempoolMemory(base: base, length: bytes, pageSize: PageSize(rawValue: pageSize)!) { _ in nil }
    do {
        return try Mempool(memory: memory, configuration: configuration, releaseMemory: {
            UnsafeMutableRawPointer(bitPattern: bits)!.deallocate()
        })
    } catch {
        base.deallocate()
        throw error
    }
}
