import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

@Suite(.usesHugepagePool) struct MempoolCreationTests {
    @Test func zeroCountIsATypedError() {
        #expect(throws: MempoolError.zeroCount(requested: 0)) {
            _ = try Mempool(configuration: MempoolConfiguration(count: 0, objectSize: 64))
        }
    }

    @Test func zeroObjectSizeIsATypedError() {
        #expect(throws: MempoolError.zeroObjectSize(requested: 0)) {
            _ = try Mempool(configuration: MempoolConfiguration(count: 8, objectSize: 0))
        }
    }

    @Test func alignmentNotPowerOfTwoIsATypedError() {
        #expect(throws: MempoolError.alignmentNotPowerOfTwo(requested: 96)) {
            _ = try Mempool(configuration: MempoolConfiguration(count: 8, objectSize: 64, alignment: 96))
        }
        #expect(MempoolError.alignmentNotPowerOfTwo(requested: 96).description.contains("power of two"))
    }

    @Test func cacheSizeOutOfRangeIsATypedError() {
        #expect(throws: MempoolError.cacheSizeOutOfRange(requested: 513, maximum: 512)) {
            _ = try Mempool(configuration: MempoolConfiguration(count: 8, objectSize: 64, cacheSize: 513))
        }
    }

    @Test func objectLargerThanAPageIsATypedError() {
        do {
            _ = try Mempool(configuration: MempoolConfiguration(count: 2, objectSize: 3 << 20))
            Issue.record("a 3 MiB object on 2 MiB pages was accepted")
        } catch {
            guard case .objectLargerThanPage(let element, let page, _) = error else {
                Issue.record("unexpected error \(error)")
                return
            }
            #expect(element == 3 << 20 && page == 2 << 20)
            #expect(error.description.contains("1G"))
        }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
    func objectLargerThanAPageOverNonContiguousPagesSaysSo() throws {
        // Four pages whose physical addresses never run on.
        do {
            _ = try poolOverMapping(pages: 4, configuration: MempoolConfiguration(count: 1, objectSize: 3 << 20)) { p in
                PhysicalAddress(rawValue: UInt64(10 - p) << 30)
            }
            Issue.record("accepted")
        } catch let error as MempoolError {
            #expect(error == .objectLargerThanPage(elementSize: 3 << 20, pageSize: 2 << 20, contiguousBytesAvailable: 2 << 20))
        }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
    func countThatDoesNotFitSaysWhatWouldFit() throws {
        // One 2 MiB page holds 1024 objects of 2048 bytes.
        do {
            _ = try poolOverMapping(pages: 1, configuration: MempoolConfiguration(count: 2000, objectSize: 2048)) { _ in nil }
            Issue.record("accepted")
        } catch let error as MempoolError {
            #expect(error == .countDoesNotFit(requested: 2000, fits: 1024, elementSize: 2048, memoryLength: 2 << 20))
            #expect(error.description.contains("1024 would fit"))
        }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"), arguments: [8, 64, 128, 4096])
    func objectsHonourTheAlignment(alignment: Int) throws {
        let pool = try Mempool(configuration: MempoolConfiguration(count: 100, objectSize: 200, alignment: alignment))
        let objects = allObjects(pool)
        #expect(objects.count == 100)
        #expect(objects.allSatisfy { UInt(bitPattern: $0) % UInt(alignment) == 0 })
        #expect(Set(objects).count == 100)
        #expect(pool.availableCount == 100 && pool.inUseCount == 0)
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root (PFNs) and free 2 MiB hugepages"))
    func everyPhysicalAddressAgreesWithAFreshPagemapRead() throws {
        let pool = try Mempool(configuration: MempoolConfiguration(count: 4000, objectSize: 2048, memoryChannels: 4))
        let reader = try PagemapReader()
        let base = Sys.basePageSize
        for object in allObjects(pool) {
            let entry = try reader.entry(at: UInt(bitPattern: object))
            let pfn = try #require(entry.pfn)
            let fresh = PhysicalAddress(pfn: pfn, offset: Int(UInt(bitPattern: object) % UInt(base)), basePageSize: base)
            #expect(pool.physicalAddress(of: object) == fresh)
        }
        // Chunks cover the used pages and start where pagemap says.
        let chunks = pool.memoryChunks
        #expect(chunks.reduce(0) { $0 + $1.length } % pool.pageSize.bytes == 0)
        for chunk in chunks {
            let pfn = try #require(try reader.entry(at: UInt(bitPattern: chunk.address)).pfn)
            #expect(chunk.physicalAddress == PhysicalAddress(pfn: pfn, basePageSize: base))
        }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
    func noObjectStraddlesANonContiguousPageBoundary() throws {
        // Pages 0-1 physically contiguous, 1-2 not, 2-3 contiguous.
        let physical: [UInt64] = [0x4000_0000, 0x4020_0000, 0x9000_0000, 0x9020_0000]
        let (pool, base) = try poolOverMapping(
            pages: 4, configuration: MempoolConfiguration(count: 2500, objectSize: 3000)) { p in
            PhysicalAddress(rawValue: physical[p])
        }
        var straddlesContiguous = 0
        for object in allObjects(pool) {
            let start = object - base
            let end = start + 3000 - 1
            let first = start >> 21, last = end >> 21
            if first != last {
                #expect(physical[last] == physical[first] + (2 << 20), "object at offset \(start) straddles pages \(first)-\(last)")
                straddlesContiguous += 1
            }
        }
        #expect(straddlesContiguous == 2, "objects may cross the two contiguous boundaries")
        // Each object's IOVA follows the dictated page table.
        let object = try #require(pool.objectAddress(at: 2000))
        let offset = object - base
        #expect(pool.physicalAddress(of: object)?.rawValue == physical[offset >> 21] + UInt64(offset & ((2 << 20) - 1)))
        #expect(pool.memoryChunks.count == 2)
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
    func channelSpreadingMakesTheStrideAnOddNumberOfCacheLines() throws {
        let spread = try Mempool(configuration: MempoolConfiguration(count: 10, objectSize: 2048, memoryChannels: 4))
        #expect(spread.elementStride == 33 * 64)
        let packed = try Mempool(configuration: MempoolConfiguration(count: 10, objectSize: 2048))
        #expect(packed.elementStride == 2048)
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
    func indexAndAddressRoundTrip() throws {
        let pool = try Mempool(configuration: MempoolConfiguration(count: 3000, objectSize: 1500, alignment: 64))
        for (i, object) in allObjects(pool).enumerated() {
            #expect(try pool.objectIndex(of: object) == i)
            #expect(pool.objectAddress(at: i) == object)
        }
    }
}

@Suite struct MempoolHugepageShortageTests {
    @Test(.enabled(if: isRoot, "needs the hugepage counters"))
    func countBeyondTheFreeHugepagesSaysWhatWouldFit() throws {
        // 2048-byte objects, 1024 per 2 MiB page: ask for far more pages than exist.
        let free = freeHugepages(.huge2M)
        let count = (free + 100_000) * 1024
        do {
            _ = try Mempool(configuration: MempoolConfiguration(count: count, objectSize: 2048))
            Issue.record("\(count) objects were accepted")
        } catch {
            guard case .notEnoughHugepages(let requested, let fits, let shortage) = error else {
                Issue.record("unexpected \(error)")
                return
            }
            let (needed, pagesFree, command) = (shortage.needed, shortage.free, shortage.command)
            #expect(requested == count && needed >= free + 100_000)
            #expect(fits == pagesFree * 1024)
            #expect(!command.isEmpty && error.description.contains("would fit"))
        }
    }
}
