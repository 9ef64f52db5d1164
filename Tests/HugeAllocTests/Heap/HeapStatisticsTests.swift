import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Synchronization
import Testing

/// Statistics count what happened: allocations and frees per size class and
/// per live thread, mapped and peak bytes as the kernel sees them.
@Suite(.usesHugepagePool) struct HeapStatisticsTests {
    func sizeClass(of size: Int, in statistics: DMAHeapStatistics) -> DMAHeapStatistics.SizeClass? {
        statistics.sizeClasses.filter { $0.size >= size }.min { $0.size < $1.size }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func perClassCountsAndLiveBytes() throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests())
            let sizes = heap.statistics.sizeClasses.map(\.size)
            #expect(sizes.filter { $0 > 8192 }.allSatisfy { $0 % 4096 == 0 }, "one-object classes fill whole granules: \(sizes)")
            #expect(sizes.last == 256 << 10, "the largest class is the largest class size, 256 KiB")
            #expect((6...18).allSatisfy { sizes.contains(1 << $0) }, "every power of two from 64 B to 256 KiB is a class")
            #expect(sizes == sizes.sorted() && Set(sizes).count == sizes.count, "classes ascend")
            #expect(sizes.first == 64 && (sizes.last ?? 0) >= 256 << 10)
            #expect(heap.statistics.sizeClasses.allSatisfy { $0.allocations == 0 && $0.frees == 0 })

            let plan = [(64, 10), (1000, 5), (5000, 3), (100_000, 2)]
            var held: [Int: [UnsafeMutableRawPointer]] = [:]
            for (size, count) in plan {
                for _ in 0..<count { held[size, default: []].append(try heap.allocate(size)) }
            }
            let direct = try heap.allocate(300_000)
            let large = try heap.allocateRetryingPoolRace(3 << 20)
            var statistics = heap.statistics
            var expectedLive = 0
            for (size, count) in plan {
                let c = try #require(sizeClass(of: size, in: statistics))
                #expect(c.allocations == count && c.frees == 0, "class \(c.size) for \(size) B")
                #expect(c.liveObjects == count && c.liveBytes == count * c.size)
                #expect(c.spanBytes % 4096 == 0)
                #expect(c.spanBytes >= c.size, "class \(c.size): span of \(c.spanBytes) bytes")
                expectedLive += count * c.size
            }
            let node = try #require(statistics.nodes.first)
            #expect(node.directBytes >= 300_000 && node.directBytes % 4096 == 0)
            let largeLength = heap.largeBlockLength(holding: large, runBytes: 4 << 20)
            #expect(node.largeBlocks == 1 && node.largeBytes == largeLength)
            #expect(statistics.liveBytes == expectedLive + node.directBytes + node.largeBytes)
            #expect(statistics.threads.count == 1)
            #expect(statistics.threads.first?.allocations == plan.reduce(0) { $0 + $1.1 })

            for (size, pointers) in held { for p in pointers.prefix(2) { heap.free(p) }; held[size]!.removeFirst(2) }
            statistics = heap.statistics
            for (size, count) in plan {
                let c = try #require(sizeClass(of: size, in: statistics))
                #expect(c.allocations == count && c.frees == 2 && c.liveObjects == count - 2)
            }
            #expect(statistics.threads.first?.frees == 2 * plan.count)

            heap.free(direct)
            heap.free(large)
            for p in held.values.joined() { heap.free(p) }
            heap.trim()
            statistics = heap.statistics
            #expect(statistics.liveBytes == 0 && statistics.fragmentation == 0)
            #expect(statistics.sizeClasses.allSatisfy { $0.allocations == $0.frees })
        }
    }

    /// Per-thread entries for live threads; exited threads' counts stay in the classes.
    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func perThreadEntries() throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests())
            let ready = DispatchSemaphore(value: 0)
            let go = DispatchSemaphore(value: 0)
            let done = DispatchSemaphore(value: 0)
            let threads = 3
            Thread.detachNewThread {
                runOnThreads(threads) { thread in
                    var held: [UnsafeMutableRawPointer] = []
                    for _ in 0..<(thread + 1) * 10 { if let p = allocateOrRecord(heap, 64 << thread) { held.append(p) } }
                    heap.free(held.removeLast())
                    ready.signal()
                    go.wait()
                    for p in held { heap.free(p) }
                }
                done.signal()
            }
            for _ in 0..<threads { ready.wait() }
            let during = heap.statistics
            #expect(during.threads.count == threads, "one entry per live thread using the heap")
            #expect(Set(during.threads.map(\.allocations)) == [10, 20, 30])
            #expect(during.threads.allSatisfy { $0.frees == 1 })
            for thread in 0..<threads {
                let c = try #require(sizeClass(of: 64 << thread, in: during))
                #expect(c.allocations == (thread + 1) * 10 && c.frees == 1)
            }
            for _ in 0..<threads { go.signal() }
            done.wait()
            let after = heap.statistics
            #expect(after.threads.isEmpty, "exited threads have no entry")
            #expect(after.sizeClasses.reduce(0) { $0 + $1.allocations } == 60, "their counts stay in the classes")
            #expect(after.liveBytes == 0)
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func mappedAndPeakBytesFollowTheKernel() throws {
        try expectNoLeak {
            let baseline = processHugetlbBytes()
            let heap = try DMAHeap(.forTests(retentionBytes: twoMiB))
            var peak = 0
            func expectConsistent(_ label: String) {
                let statistics = heap.statistics
                let mapped = statistics.mappedBytes
                peak = max(peak, mapped)
                #expect(mapped == hugetlbBytesSince(baseline), "\(label): mapped bytes as the kernel counts them")
                #expect(mapped == heap.events.regions.reduce(0) { $0 + $1.length }, "\(label): as the events told")
                #expect(statistics.peakMappedBytes == peak, "\(label): peak \(statistics.peakMappedBytes), seen \(peak)")
                #expect(statistics.liveBytes <= mapped)
                #expect(statistics.fragmentation >= 0 && statistics.fragmentation <= 1)
                for node in statistics.nodes {
                    let pages = (node.mappedBytes - node.largeBytes) / twoMiB
                    #expect(node.grows - node.shrinks == pages, "\(label): grows − shrinks = pages mapped")
                    #expect(node.freeGranuleBytes <= pages * twoMiB && node.largestFreeRunBytes <= node.freeGranuleBytes)
                    #expect(node.emptyPages * twoMiB <= node.freeGranuleBytes)
                }
            }
            expectConsistent("new")
            var pointers: [UnsafeMutableRawPointer] = []
            var largeLength = 0
            for size in [64, 100_000, 300_000, twoMiB, twoMiB, 3 << 20, 5000, twoMiB] {
                pointers.append(try heap.allocateRetryingPoolRace(size))
                if size == 3 << 20 { largeLength = heap.largeBlockLength(holding: pointers.last!, runBytes: 4 << 20) }
                expectConsistent("after \(size) B")
            }
            #expect(heap.statistics.peakMappedBytes > twoMiB)
            let first = try #require(heap.statistics.nodes.first)
            #expect(first.largestFreeRunBytes > 0 && first.freeGranuleBytes > 0)
            for p in pointers.reversed() {
                heap.free(p)
                expectConsistent("after a free")
            }
            heap.trim()
            expectConsistent("after trim")
            #expect(heap.statistics.mappedBytes == twoMiB, "the retention stays mapped")
            #expect(heap.statistics.nodes.reduce(0) { $0 + $1.emptyPages } == 1)
            #expect(heap.statistics.peakMappedBytes == peak && peak == 4 * twoMiB + largeLength,
                    "four pages and the large block (4 MiB, or a 1 GiB page when no run was found) at the peak")
        }
    }
}
