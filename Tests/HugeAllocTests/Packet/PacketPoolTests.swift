import Foundation
import HugeAllocTestSupport
import Synchronization
import Testing
@testable import HugeAlloc

@Suite(.usesHugepagePool) struct PacketPoolTests {
    @Test func metadataLayoutIsPinned() {
        #expect(MemoryLayout<PacketBuffer>.size == MemoryLayout<UnsafeMutableRawPointer>.size)
        #expect(MemoryLayout<PacketBuffer>.stride == 8)
        #expect(PacketBuffer.metadataSize == 64)
        typealias F = PacketBuffer.Field
        let fields = [
            (F.bufferAddress, 8), (F.bufferPhysical, 8), (F.next, 8), (F.dataOffset, 2), (F.dataLength, 2),
            (F.segmentCount, 2), (F.flags, 2), (F.packetLength, 4), (F.referenceCount, 4), (F.bufferLength, 4),
            (F.index, 4), (F.userData, 8), (F.pool, 8),
        ]
        // Fields tile the 64 bytes without gaps or overlaps, each naturally aligned.
        var end = 0
        for (offset, size) in fields {
            #expect(offset == end, "field at \(offset) should start at \(end)")
            #expect(offset % size == 0)
            end = offset + size
        }
        #expect(end == 64)
        #expect(MemoryLayout<Atomic<UInt32>>.size == 4 && MemoryLayout<Atomic<UInt32>>.alignment == 4)
    }

    @Test func invalidConfigurationsAreTypedErrors() {
        #expect(throws: PacketPoolError.invalidSize(headroom: -1, dataRoom: 2048)) {
            _ = try PacketPool(configuration: PacketPoolConfiguration(count: 8, headroom: -1))
        }
        #expect(throws: PacketPoolError.invalidSize(headroom: 128, dataRoom: 0)) {
            _ = try PacketPool(configuration: PacketPoolConfiguration(count: 8, dataRoom: 0))
        }
        #expect(throws: PacketPoolError.bufferTooLarge(bytes: 128 + 65536, maximum: 65535)) {
            _ = try PacketPool(configuration: PacketPoolConfiguration(count: 8, dataRoom: 65536))
        }
        #expect(throws: PacketPoolError.mempool(.zeroCount(requested: 0))) {
            _ = try PacketPool(configuration: PacketPoolConfiguration(count: 0))
        }
        #expect(PacketPoolError.bufferTooLarge(bytes: 70000, maximum: 65535).description.contains("chain"))
    }

    @Test(.enabled(if: canMakePools, "needs root (physical addresses) and free 2 MiB hugepages"))
    func freshBuffersHaveTheirLayoutAndPhysicalAddresses() throws {
        try expectNoLeak {
            let pool = try makePacketPool(count: 2000)
            #expect(pool.count == 2000 && pool.bufferSize == 64 + 128 + 2048)
            let buffers = try #require(pool.allocate(count: 2000))
            #expect(pool.allocate() == nil, "every buffer is out")
            #expect(Set(buffers).count == 2000)
            #expect(Set(buffers.map(\.index)) == Set(0..<2000))
            for b in buffers {
                #expect(pool.owns(b))
                #expect(b.data == b.metadata + 64 + 128)
                #expect(b.dataOffset == 128 && b.headroom == 128 && b.length == 0 && b.packetLength == 0)
                #expect(b.segmentCount == 1 && b.next == nil && b.referenceCount == 1 && !b.isIndirect)
                #expect(b.tailroom == 2048 && b.bufferLength == 128 + 2048)
                #expect(pool.buffer(at: b.index) == b)
                // The kernel's own answer for the first and last data byte.
                let first = try #require(Kernel.physicalAddress(UInt(bitPattern: b.data)))
                let last = try #require(Kernel.physicalAddress(UInt(bitPattern: b.data + 2047)))
                #expect(b.dataPhysicalAddress?.rawValue == first)
                #expect(b.bufferPhysicalAddress?.rawValue == first - 128)
                #expect(last == first + 2047, "a buffer's data is physically contiguous")
            }
            pool.free(buffers)
            #expect(pool.availableCount == 2000)
        }
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func bulkAllocationIsAllOrNothingAndResetsMetadata() throws {
        let pool = try makePacketPool(count: 100, cacheSize: 0)
        var batch = [PacketBuffer](repeating: PacketBuffer(metadata: UnsafeMutableRawPointer(bitPattern: 64)!), count: 64)
        #expect(batch.withUnsafeMutableBufferPointer { pool.allocate(into: $0) })
        for b in batch {
            b.length = 1000
            b.userData = 7
            b.prepend(14)
        }
        #expect(batch[0].packetLength == 1014 && batch[0].dataOffset == 114)
        pool.free(batch)
        var second = batch
        #expect(second.withUnsafeMutableBufferPointer { pool.allocate(into: $0) })
        var third = batch
        #expect(!third.withUnsafeMutableBufferPointer { pool.allocate(into: $0) }, "36 left, 64 asked")
        #expect(pool.availableCount == 36, "a failed bulk allocation takes nothing")
        let used = Set(batch)
        for b in second {
            #expect(b.length == 0 && b.packetLength == 0 && b.dataOffset == 128 && b.segmentCount == 1)
            if used.contains(b) { #expect(b.userData == 7, "user data is the application's and survives reuse") }
        }
        #expect(second.contains(where: used.contains), "the ring hands freed buffers out again")
        pool.free(second)
        #expect(pool.availableCount == 100)
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func headroomAndTailroomAdjustments() throws {
        let pool = try makePacketPool(count: 8)
        let b = try #require(pool.allocate())
        defer { pool.free(b) }
        let payload = try #require(b.append(100))
        #expect(payload == b.data && b.length == 100 && b.packetLength == 100)
        #expect(b.append(2048 - 100 + 1) == nil, "beyond the tailroom")
        #expect(b.length == 100, "a refused append changes nothing")
        let header = try #require(b.prepend(14))
        #expect(header == b.metadata + 64 + 128 - 14 && b.length == 114 && b.packetLength == 114 && b.headroom == 114)
        #expect(b.prepend(115) == nil)
        #expect(b.trimFront(14) && b.length == 100 && b.dataOffset == 128)
        #expect(!b.trimFront(101))
        b.length = 60
        #expect(b.packetLength == 60 && b.tailroom == 2048 - 60)
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func retainedBufferReturnsAfterTheLastFree() throws {
        let pool = try makePacketPool(count: 16)
        let b = try #require(pool.allocate())
        b.retain()
        #expect(b.referenceCount == 2)
        pool.free(b)
        #expect(pool.availableCount == 15 && b.referenceCount == 1, "one owner left")
        pool.free(b)
        #expect(pool.availableCount == 16)
        // It comes back with the free state: one owner.
        let again = try #require(pool.allocate(count: 16))
        #expect(again.allSatisfy { $0.referenceCount == 1 })
        pool.free(again)
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func cloneSharesDataWithoutCopying() throws {
        let pool = try makePacketPool(count: 16)
        let original = try #require(pool.allocate())
        let bytes = (0..<300).map { UInt8(truncatingIfNeeded: $0 * 7) }
        _ = try #require(original.append(300))
        pool.write(bytes, into: original)
        original.trimFront(10)

        let clone = try #require(pool.clone(original))
        #expect(clone != original && clone.isIndirect && !original.isIndirect)
        #expect(clone.data == original.data, "same memory, not a copy")
        #expect(clone.dataPhysicalAddress == original.dataPhysicalAddress)
        #expect(clone.length == 290 && clone.packetLength == 290)
        #expect(original.referenceCount == 2)
        #expect(clone.contents == Array(bytes[10...]))
        original.data.storeBytes(of: 0xEE, as: UInt8.self)
        #expect(clone.contents[0] == 0xEE, "a write through the original shows in the clone")

        // A clone of the clone shares the same direct buffer.
        let second = try #require(pool.clone(clone))
        #expect(second.data == original.data && original.referenceCount == 3)

        pool.free(original)
        #expect(pool.availableCount == 13, "the data stays while clones hold it")
        pool.free(clone)
        #expect(pool.availableCount == 14)
        pool.free(second)
        #expect(pool.availableCount == 16)
        // A former clone comes back as a plain buffer over its own memory.
        let all = try #require(pool.allocate(count: 16))
        for b in all {
            #expect(!b.isIndirect && b.data == b.metadata + 64 + 128 && b.bufferLength == 2176)
            #expect(b.dataPhysicalAddress?.rawValue == Kernel.physicalAddress(UInt(bitPattern: b.data)))
        }
        pool.free(all)
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func framesLargerThanOneBufferAreChains() throws {
        let pool = try makePacketPool(count: 16)
        let frame = try pool.allocateFrame(length: 5000)
        #expect(frame.segmentCount == 3 && frame.packetLength == 5000)
        #expect(Array(frame.segments).map(\.length) == [2048, 2048, 904])
        #expect(pool.availableCount == 13)
        let bytes = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 5) }
        #expect(pool.write(bytes, into: frame) == 5000)
        #expect(frame.contents == bytes)

        // Chain a one-segment packet on; the head owns it.
        let tail = try #require(pool.allocate())
        _ = try #require(tail.append(10))
        #expect(pool.chain(frame, tail))
        #expect(frame.segmentCount == 4 && frame.packetLength == 5010)
        #expect(frame.append(10) != nil && frame.packetLength == 5020 && tail.length == 20, "append grows the last segment")

        // A clone of the chain shares every segment.
        let clone = try #require(pool.clone(frame))
        #expect(clone.segmentCount == 4 && clone.packetLength == 5020)
        #expect(zip(clone.segments, frame.segments).allSatisfy { $0.data == $1.data && $0.length == $1.length })
        #expect(pool.availableCount == 8)
        pool.free(frame)
        #expect(pool.availableCount == 8, "the clone holds all four segments")
        pool.free(clone)
        #expect(pool.availableCount == 16)
        #expect(throws: PacketPoolError.exhausted(needed: 17, available: 16)) {
            _ = try pool.allocateFrame(length: 17 * 2048)
        }
        #expect(pool.availableCount == 16)
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func bulkFreeSortsOutChainsClonesAndOtherPools() throws {
        let a = try makePacketPool(count: 32)
        let b = try makePacketPool(count: 32)
        let plain = try #require(a.allocate())
        let chained = try a.allocateFrame(length: 3000)
        let shared = try #require(a.allocate()).retain()
        let foreign = try #require(b.allocate())
        let clone = try #require(b.clone(plain))  // b's indirect buffer holding a's memory
        #expect(a.availableCount == 28 && b.availableCount == 30)
        a.free([plain, chained, shared, foreign, clone])
        #expect(a.availableCount == 31, "everything but one owner of `shared` is back")
        #expect(b.availableCount == 32, "b's buffers went home to b")
        a.free(shared)
        #expect(a.availableCount == 32)
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func clonesFreedOnOtherThreadsReturnExactlyOnce() throws {
        let pool = try makePacketPool(count: 4096, cacheSize: 64)
        let originals = try #require(pool.allocate(count: 1000))
        let clones = originals.map { pool.clone($0)! }
        let boxes = (originals, clones)
        // Free originals and clones concurrently: each direct buffer's last
        // owner, whichever thread it is, returns it.
        runOnThreads(2) { t in
            let list = t == 0 ? boxes.0 : boxes.1
            for b in list { pool.free(b) }
        }
        #expect(pool.availableCount == 4096)
        // One at a time: a bulk of the whole pool cannot reach this thread's cache.
        var all: [PacketBuffer] = []
        while let b = pool.allocate() { all.append(b) }
        #expect(Set(all).count == 4096 && all.allSatisfy { $0.referenceCount == 1 && !$0.isIndirect })
        pool.free(all)
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func afXDPConfigurationMakesChunkAlignedBuffers() throws {
        for chunk in [2048, 4096] {
            let pool = try PacketPool(configuration: .afXDP(count: 1500, chunkSize: chunk))
            #expect(pool.bufferStride == chunk && pool.bufferSize == chunk && pool.headroom == 256)
            let base = UInt(bitPattern: pool.mempool.base)
            #expect(base % UInt(getpagesize()) == 0)
            for i in 0..<pool.count {
                let b = try #require(pool.buffer(at: i))
                #expect((UInt(bitPattern: b.metadata) - base) % UInt(chunk) == 0)
                #expect(b.data == b.metadata + 64 + 256)
            }
        }
    }
}
