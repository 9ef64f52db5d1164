import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

/// Growth and shrink of a heap as its memory events tell them: every page
/// mapped is `.added`, every page given back `.removed`, a late handler
/// hears what is there, and a handler that refuses makes the allocation fail
/// with nothing left mapped.
@Suite(.usesHugepagePool) struct HeapEventTests {
    /// Each region the handler heard of is what pagemap says, now.
    func expectRegionsMatchPagemap(_ regions: [MemoryRegion], sourceLocation: SourceLocation = #_sourceLocation) {
        for region in regions {
            let physical = region.pieces.first?.physicalAddress?.rawValue
            #expect(region.pieces.count == 1 && physical != nil, "one piece with a physical address", sourceLocation: sourceLocation)
            if let physical {
                #expect(contiguityMismatches(region.address, length: region.length, expectedIOVA: physical).isEmpty,
                        "region 0x\(String(region.address, radix: 16)) is not where its event says",
                        sourceLocation: sourceLocation)
            }
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason), arguments: [0, 2 * twoMiB])
    func growthAndShrinkAreMemoryEvents(retention: Int) throws {
        try expectNoLeak {
            let baseline = processHugetlbBytes()
            let recorder = HeapEventRecorder()
            var heap: DMAHeap? = try DMAHeap(.forTests(retentionBytes: retention))
            let registration = try heap!.events.register { try recorder.handle($0) }

            // Four whole pages (direct allocations), then a large block of two.
            var pages: [UnsafeMutableRawPointer] = []
            for _ in 0..<4 { pages.append(try heap!.allocate(twoMiB)) }
            #expect(recorder.added.count == 4 && recorder.removed.isEmpty, "one .added per page: \(recorder.recorded)")
            #expect(recorder.added.allSatisfy { $0.length == twoMiB && $0.pageSize == .huge2M })
            for p in pages {
                #expect(recorder.added.contains { $0.address == UInt(bitPattern: p) }, "each page's event names it")
            }
            let large = try heap!.allocateRetryingPoolRace(3 << 20)
            let largeRegion = try #require(recorder.added.last)
            let largeLength = heap!.largeBlockLength(holding: large, runBytes: 4 << 20)
            #expect(recorder.added.count == 5 && largeRegion.address == UInt(bitPattern: large) && largeRegion.length == largeLength)
            expectRegionsMatchPagemap(recorder.added)
            #expect(recorder.mapped == heap!.events.regions)
            let mapped = recorder.mapped.reduce(0) { $0 + $1.length }
            #expect(heap!.statistics.mappedBytes == mapped && mapped == 4 * twoMiB + largeLength)
            #expect(hugetlbBytesSince(baseline) == mapped, "the process maps what the events announced")

            // A large block goes back at once; pages beyond the retention too.
            heap!.free(large)
            #expect(recorder.removed == [largeRegion])
            for p in pages { heap!.free(p) }
            let kept = retention / twoMiB
            #expect(recorder.removed.count == 1 + 4 - kept, "pages beyond the retention are .removed when freed")
            #expect(heap!.statistics.mappedBytes == retention)
            heap!.trim()
            #expect(heap!.statistics.mappedBytes == retention, "trim() keeps the retention mapped")
            #expect(heap!.statistics.nodes.reduce(0) { $0 + $1.emptyPages } == kept)
            #expect(recorder.mapped.reduce(0) { $0 + $1.length } == retention)
            #expect(hugetlbBytesSince(baseline) == retention)

            // Small objects: the page stays with the thread's span until trim().
            var small: [UnsafeMutableRawPointer] = []
            for _ in 0..<100 { small.append(try heap!.allocate(64)) }
            for p in small { heap!.free(p) }
            heap!.trim()
            #expect(heap!.statistics.mappedBytes == retention, "after trim only the retention stays mapped")
            #expect(recorder.mapped.reduce(0) { $0 + $1.length } == retention)
            #expect(recorder.mapped == heap!.events.regions)

            // Destroying the heap removes the rest.
            heap = nil
            #expect(recorder.mapped.isEmpty, "the heap's deinit gives every page back with .removed")
            #expect(hugetlbBytesSince(baseline) == 0)
            registration.cancel()
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func aLateHandlerHearsTheRegionsAlreadyMapped() throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests())
            let a = try heap.allocate(100)
            let b = try heap.allocate(twoMiB)
            let c = try heap.allocateRetryingPoolRace(5 << 20)
            let late = HeapEventRecorder()
            let registration = try heap.events.register { try late.handle($0) }
            #expect(late.recorded == heap.events.regions.map { .added($0) }, "replay: one .added per region, in order")
            #expect(late.added.count == 3, "the small object's page, the direct page, the large block")
            #expect(late.added.reduce(0) { $0 + $1.length } == heap.statistics.mappedBytes)
            for p in [a, b, c] {
                let address = UInt(bitPattern: p)
                let region = try #require(late.added.first { address >= $0.address && address < $0.address + UInt($0.length) })
                #expect(region.physicalAddress(of: address)?.rawValue == heap.iova(of: p),
                        "the handler translates as the heap does")
            }
            expectRegionsMatchPagemap(late.added)
            heap.free(c)
            #expect(late.removed.count == 1)
            registration.cancel()
            #expect(late.mapped.isEmpty, "cancelling tells the handler everything is removed")
            heap.free(a)
            heap.free(b)
        }
    }

    /// A handler that refuses new memory makes the allocation fail with
    /// `.eventRefused`; handlers told before it hear `.removed`; nothing
    /// stays mapped; once it is gone the heap grows again.
    @Test(.enabled(if: canRunHeapTests, heapGateReason), arguments: [64, 100_000, 300_000, twoMiB, 3 << 20])
    func aRefusingHandlerRollsGrowthBack(size: Int) throws {
        try expectNoLeak {
            let baseline = processHugetlbBytes()
            let heap = try DMAHeap(.forTests())
            let accepting = HeapEventRecorder()
            let refusing = HeapEventRecorder(refusing: true)
            let first = try heap.events.register { try accepting.handle($0) }
            let second = try heap.events.register { try refusing.handle($0) }
            for attempt in 0..<(size > twoMiB ? 1 : 2) {
                let error = heapError { try heap.allocate(size) }
                guard case .eventRefused(.handlerRefused(_, let length, let reason)) = error else {
                    Issue.record("attempt \(attempt): expected .eventRefused, got \(String(describing: error))")
                    continue
                }
                #expect(length >= size && reason.contains("refused by the test's handler"))
                #expect(error!.description.contains("refused"))
            }
            #expect(heapError { try heap.reserve(name: "refused", size: min(size, twoMiB)) }.map {
                if case .eventRefused = $0 { true } else { false }
            } == true)
            #expect(heap.memzone(named: "refused") == nil, "a failed reservation leaves no memzone")
            #expect(accepting.added.count == (size > twoMiB ? 2 : 3) && accepting.mapped.isEmpty, "told, then told it was removed")
            #expect(heap.events.regions.isEmpty)
            #expect(heap.statistics.mappedBytes == 0 && heap.statistics.liveBytes == 0)
            #expect(hugetlbBytesSince(baseline) == 0, "nothing stays mapped after a refused growth")

            second.cancel()
            let p = try heap.allocateRetryingPoolRace(size)
            #expect(accepting.mapped.count == 1 && heap.iova(of: p) != nil, "the heap grows again once the handler is gone")
            let zone = try heap.reserve(name: "refused", size: 64)
            #expect(heap.memzone(named: "refused") == zone)
            try heap.free(memzoneNamed: "refused")
            heap.free(p)
            first.cancel()
        }
    }
}
