import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

/// Every bad input is a typed error that says what was wrong and how to fix
/// it, with nothing mapped or leaked — also when the thread's cache is warm,
/// so the fast path sees the input first.
@Suite(.usesHugepagePool) struct HeapInputErrorTests {
    /// `heap.allocate(...)` called cold (nothing cached) and warm (a free
    /// object of the class at hand in this thread's cache).
    func expectError(
        _ expected: DMAHeapError, mentioning words: [String] = [], _ heap: DMAHeap,
        sourceLocation: SourceLocation = #_sourceLocation,
        _ call: (DMAHeap) throws -> UnsafeMutableRawPointer
    ) {
        let error = heapError {
            // A call that wrongly succeeds must not leave its allocation behind.
            let p = try call(heap)
            heap.free(p)
        }
        #expect(error == expected, sourceLocation: sourceLocation)
        if let error {
            for word in words {
                #expect(error.description.contains(word), "\"\(error)\" should mention \(word)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason), arguments: [false, true])
    func badSizesAlignmentsBoundariesAndNodes(warm: Bool) throws {
        try expectNoLeak {
            let baseline = processHugetlbBytes()
            let heap = try DMAHeap(.forTests())
            var held: [UnsafeMutableRawPointer] = []
            if warm {
                // A free object of each small class waits in this thread's cache.
                for size in [64, 100, 4096, 100_000] { heap.free(try heap.allocate(size)) }
                held.append(try heap.allocate(64))
            }
            let maximum = heap.options.maximumBytes
            let mappedBefore = heap.statistics.mappedBytes
            for size in [0, -1, -64, Int.min] {
                expectError(.zeroSize(requested: size), mentioning: ["at least 1 byte"], heap) { try $0.allocate(size) }
            }
            for size in [Int.max, Int.max - 4095, maximum + 1] {
                expectError(.sizeTooLarge(requested: size, maximum: maximum), mentioning: ["maximumBytes"], heap) {
                    try $0.allocate(size)
                }
            }
            // 0 and Int.min pass `alignment & (alignment - 1) == 0 && alignment <= 64`: the fast path
            // must not take them for "at most 64".
            for alignment in [0, 3, 48, 100, -64, Int.min, Int.max] {
                expectError(.alignmentNotPowerOfTwo(requested: alignment), mentioning: ["power of two"], heap) {
                    try $0.allocate(64, alignment: alignment)
                }
            }
            expectError(.alignmentNotPowerOfTwo(requested: 48), mentioning: ["use 64"], heap) { try $0.allocate(100, alignment: 48) }
            for boundary in [0, 3, 3000, -4096, Int.min] {
                expectError(.boundaryNotPowerOfTwo(requested: boundary), mentioning: ["power of two"], heap) {
                    try $0.allocate(64, boundary: boundary)
                }
            }
            for (size, boundary) in [(65, 64), (4097, 4096), (8192, 4096), (65_537, 65_536), (twoMiB + 1, twoMiB), (3 << 20, twoMiB)] {
                expectError(.boundarySmallerThanSize(size: size, boundary: boundary), mentioning: ["split the transfer"], heap) {
                    try $0.allocate(size, boundary: boundary)
                }
            }
            let nodes = heap.statistics.nodes.map(\.node)
            for node in [999, -1, Int.max] {
                expectError(.unknownNode(UnknownNode(node: node, available: nodes)), mentioning: ["NUMA node \(node)"], heap) {
                    try $0.allocate(64, node: node)
                }
            }
            // Checked heaps take the general path for everything; same errors.
            let checked = try DMAHeap(.forTests(checked: true))
            expectError(.zeroSize(requested: 0), checked) { try $0.allocate(0) }
            expectError(.alignmentNotPowerOfTwo(requested: 0), checked) { try $0.allocate(64, alignment: 0) }
            expectError(.sizeTooLarge(requested: Int.max, maximum: maximum), checked) { try $0.allocate(Int.max) }
            // Memzones validate the same way, and their name too.
            #expect(heapError { try heap.reserve(name: "z", size: 0) } == .zeroSize(requested: 0))
            #expect(heapError { try heap.reserve(name: "z", size: 64, alignment: 3) } == .alignmentNotPowerOfTwo(requested: 3))
            #expect(heap.memzone(named: "z") == nil && heap.memzones.isEmpty, "a refused memzone leaves no name behind")

            #expect(heap.statistics.mappedBytes == mappedBefore, "a refused request maps nothing")
            for p in held { heap.free(p) }
            heap.trim()
            #expect(heap.statistics.mappedBytes == 0)
            #expect(hugetlbBytesSince(baseline) == 0)
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func badOptionsAreTypedErrors() throws {
        for maximum in [0, -1, (1 << 40) + 1, Int.max] {
            #expect(throws: DMAHeapError.sizeTooLarge(requested: maximum, maximum: 1 << 40)) {
                _ = try DMAHeap(.init(maximumBytes: maximum))
            }
        }
        #expect(throws: DMAHeapError.self) { _ = try DMAHeap(.init(retentionBytes: -1)) }
        #expect(throws: DMAHeapError.zeroSize(requested: 0)) { _ = try DMAHeap(.init(contiguousSearchBytes: 0)) }
    }

    /// More than the free hugepages can hold: the node cannot grow by the
    /// block, and the error names what is needed, what is free and the
    /// command that reserves more. Maps nothing (the kernel refuses the
    /// reservation at once).
    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func moreThanTheFreeHugepagesIsGrowthFailed() throws {
        try expectNoLeak {
            let baseline = processHugetlbBytes()
            let heap = try DMAHeap(.forTests(maximumBytes: 1 << 40))
            let size = 64 << 30
            let error = heapError { try heap.allocate(size) }
            guard case .growthFailed(let node, let needed, .insufficientHugepages(let shortage)) = error else {
                Issue.record("expected .growthFailed(… .insufficientHugepages), got \(String(describing: error))")
                return
            }
            #expect(heap.statistics.nodes.map(\.node).contains(node))
            #expect(needed == size && shortage.pageSize == .huge2M && shortage.needed == size / twoMiB && shortage.free < shortage.needed)
            let text = error!.description
            #expect(text.contains("grow by \(ByteCount.format(size))"), "names the size: \(text)")
            #expect(text.contains("needed \(size / twoMiB)") && text.contains("nr_hugepages"), "says what to do: \(text)")
            #expect(heap.statistics.mappedBytes == 0 && heap.events.regions.isEmpty)
            #expect(hugetlbBytesSince(baseline) == 0)
        }
    }

    /// Free hugepages enough but no run of them at the physical alignment
    /// asked for (1 TiB: no machine here has a free hugepage there): the
    /// error names the largest run found and how to get a longer one.
    ///
    /// The heap searches every free 2 MiB page of the machine before it
    /// gives up, so this runs only where the pool is about a test run's size
    /// (`tools/test` reserves 512), or with HEAP_TEST_MAP_ALL_FREE=1.
    @Test(.enabled(if: canRunHeapTests && (freeHugepages(.huge2M) <= 2 * hugepagesForATestRun
                                            || ProcessInfo.processInfo.environment["HEAP_TEST_MAP_ALL_FREE"] == "1"),
                   "maps every free 2 MiB hugepage for a moment: runs where at most 1024 are free"))
    func noRunAtTheAlignmentIsNoContiguousRun() throws {
        try expectNoLeak {
            let baseline = processHugetlbBytes()
            let heap = try DMAHeap(.init(maximumBytes: 1 << 40))
            let error = heapError { try heap.allocate(4 << 20, alignment: 1 << 40) }
            guard case .noContiguousRun(let needed, let largest, let advice) = error else {
                Issue.record("expected .noContiguousRun, got \(String(describing: error))")
                return
            }
            #expect(needed >= 4 << 20)
            #expect(largest >= twoMiB, "the largest run seen is named")
            #expect(advice.contains("hugepages"))
            #expect(advice.contains("DMAHeap.Options.contiguousSearchBytes"), "the default bounded look names the option that widens it")
            let text = error!.description
            // Runs as long as the block were there but not at the alignment: the message says so
            // rather than naming a largest run that looks long enough.
            #expect(text.contains(largest >= needed ? "none at the physical alignment" : "largest run available: \(ByteCount.format(largest))"),
                    "\(text)")
            #expect(heap.statistics.mappedBytes == 0 && heap.events.regions.isEmpty)
            #expect(hugetlbBytesSince(baseline) == 0)
        }
    }
}
