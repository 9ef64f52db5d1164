import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// Physical address of every page of `[base, base+length)` from a fresh
/// pagemap read, independent of the mapping's own tables.
private func freshPhysical(_ base: UnsafeMutableRawPointer, length: Int, pageSize: Int) throws -> [UInt64] {
    let entries = try PagemapReader().entries(startingAt: UInt(bitPattern: base), count: length / Sys.basePageSize)
    let per = pageSize / Sys.basePageSize
    return try (0..<(length / pageSize)).map { page in
        let pfn = try #require(entries[page * per].pfn, "page \(page) not present")
        return pfn * UInt64(Sys.basePageSize)
    }
}

/// Checks that a mapping is one run, contiguous in both address spaces, by
/// the kernel's word alone.
private func expectOneRun(_ mapping: borrowing MemoryMapping, bytes: Int) throws {
    let ps = mapping.pageSize.bytes
    let length = mapping.length
    #expect(length >= bytes && length < bytes + ps)
    let physical = try freshPhysical(mapping.base, length: length, pageSize: ps)
    for i in 1..<max(1, physical.count) {
        #expect(physical[i] == physical[i - 1] + UInt64(ps), "page \(i) not physically adjacent to page \(i - 1)")
    }
    let base = mapping.base
    #expect(UInt(bitPattern: base) % UInt(ps) == 0)
    let runs = mapping.runs
    #expect(runs.count == 1)
}

@Suite(.usesHugepagePool) struct ContiguousTests {
    @Test(.enabled(if: isRoot && hasFree2M, "needs root (PFNs) and free 2 MiB hugepages"))
    func allocatesOneRunOfHugepagesVerifiedByAFreshPagemapRead() throws {
        let (bytes, pagesProbed) = try largestFree2MiBRun(cap: 64 << 20)
        try #require(bytes >= 4 << 20, "the free pool holds no run of two 2 MiB pages (largest \(bytes))")
        try expectNoLeak {
            var stats = ContiguousStatistics()
            // The pages probed as the budget: the run is among them. Another
            // process may have reshuffled the free pool since; then a budget
            // of all the pages a test run may use finds it (the default,
            // every free page, would take the whole pool from other processes).
            let block: MemoryMapping
            do {
                block = try ContiguousMemory.allocate(ContiguousRequest(bytes: bytes, budgetBytes: pagesProbed * (2 << 20))) { stats = $0 }
            } catch ContiguousError.notFound {
                let budget = hugepagesForATestRun * (2 << 20)
                block = try ContiguousMemory.allocate(ContiguousRequest(bytes: bytes, budgetBytes: budget)) { stats = $0 }
            }
            try expectOneRun(block, bytes: bytes)
            #expect(stats.attempts >= 1 && stats.bytesExamined >= bytes && stats.largestRunBytes >= bytes)
            // The block is usable memory end to end.
            memset(block.base, 0xa5, block.length)
            let last = block.base.load(fromByteOffset: block.length - 1, as: UInt8.self)
            #expect(last == 0xa5)
        }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root (PFNs) and free 2 MiB hugepages"), arguments: ["anonymous", "memfd", "hugetlbfs"])
    func assemblyKeepsEveryPagesBytesAndOrdersRunsPhysically(backing: String) throws {
        try withHugetlbfsMount(pageSize: .huge2M) { mount in
            try expectNoLeak {
                let b: MappingOptions.Backing = backing == "anonymous" ? .anonymous : backing == "memfd" ? .memfd : .hugetlbfs(mount: mount)
                let mapping = try MemoryMapping(length: 16 << 20, options: .init(backing: b))
                // Tag each page with its own physical address.
                for page in 0..<mapping.pageCount {
                    let physical = mapping.physicalAddress(atOffset: page << 21)!.rawValue
                    (mapping.base + (page << 21)).storeBytes(of: physical, as: UInt64.self)
                    (mapping.base + (page << 21) + (2 << 20) - 8).storeBytes(of: ~physical, as: UInt64.self)
                }
                let assembled = try ContiguousMemory.assemble(mapping)
                let physical = try freshPhysical(assembled.base, length: assembled.length, pageSize: 2 << 20)
                #expect(physical == physical.sorted(), "pages are in physical order")
                #expect(physical.count == 8)
                for (page, address) in physical.enumerated() {
                    let head = (assembled.base + (page << 21)).load(as: UInt64.self)
                    let tail = (assembled.base + (page << 21) + (2 << 20) - 8).load(as: UInt64.self)
                    #expect(head == address && tail == ~address, "page \(page) holds the bytes it held before")
                }
                // Every physical run is now virtually contiguous too.
                let runs = assembled.runs, report = FragmentationReport(assembled)
                #expect(runs.count == report.runs.count)
            }
        }
    }

    @Test(.enabled(if: isRoot, "needs root (PFNs)"), arguments: [2, 4, 8, 16])
    func basePageRunsAreContiguousAndLocked(pages: Int) throws {
        try expectNoLeak {
            let lockedBefore = processLockedBytes()
            let block = try ContiguousMemory.allocate(ContiguousRequest(bytes: pages * 4096, pageSize: .base))
            try expectOneRun(block, bytes: pages * 4096)
            let locked = block.isLocked
            #expect(locked)
            #expect(processLockedBytes() - lockedBefore == pages * 4096, "only the block stays locked")
        }
    }

    @Test(.enabled(if: isRoot, "needs root (PFNs)"))
    func trialTechniqueBookkeepingAndBudgetExhaustion() throws {
        try expectNoLeak {
            // 512 base pages cannot come from small batches of scattered pages
            // within 4 MiB: the typed error reports what was seen and spent.
            var stats = ContiguousStatistics()
            do {
                _ = try ContiguousMemory.allocate(ContiguousRequest(
                    bytes: 2 << 20, pageSize: .base, budgetBytes: 4 << 20, maxAttempts: 3, useTransparentHugepage: false)) { stats = $0 }
                Issue.record("512 physically contiguous base pages found by trial in 4 MiB: possible but not expected")
            } catch let ContiguousError.notFound(needed, largest, examined, budget, attempts) {
                #expect(needed == 2 << 20 && budget == 4 << 20)
                #expect(examined <= budget && attempts == stats.attempts && attempts >= 1)
                #expect(largest == stats.largestRunBytes && largest >= 4096 && largest < needed)
            }
        }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
    func impossibleRequestsAreTypedErrorsAndLeakNothing() throws {
        try expectNoLeak {
            // More than the pool holds, by more than any machine here has:
            // no other process freeing pages can make this fit.
            let pages = freeHugepages(.huge2M) + 100_000
            do {
                _ = try ContiguousMemory.allocate(ContiguousRequest(bytes: pages * (2 << 20)))
                Issue.record("a block larger than the free pool was allocated")
            } catch let ContiguousError.mapping(.insufficientHugepages(shortage)) {
                #expect(shortage.needed >= pages && shortage.command.contains("nr_hugepages"))
            } catch let ContiguousError.invalidRequest(reason) {
                #expect(reason.contains("budget"))
            }
            // A budget that runs out: a 1 GiB-aligned block of 2 MiB pages.
            do {
                _ = try ContiguousMemory.allocate(ContiguousRequest(bytes: 8 << 20, physicalAlignment: 1 << 34, budgetBytes: 16 << 20))
                Issue.record("a 16 GiB-aligned block was found within 16 MiB")
            } catch let ContiguousError.notFound(needed, _, examined, budget, attempts) {
                #expect(needed == 8 << 20 && budget == 16 << 20 && attempts >= 1 && examined >= 8 << 20)
            }
        }
        #expect(throws: ContiguousError.invalidRequest("the size must be greater than zero (got 0)")) {
            _ = try ContiguousMemory.allocate(ContiguousRequest(bytes: 0))
        }
        #expect(throws: ContiguousError.self) { _ = try ContiguousMemory.allocate(ContiguousRequest(bytes: 4 << 20, physicalAlignment: 3 << 20)) }
        #expect(throws: ContiguousError.self) { _ = try ContiguousMemory.allocate(ContiguousRequest(bytes: Int.max)) }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root (PFNs) and free 2 MiB hugepages"))
    func anAlignmentAlreadyMetByEveryPageIsAccepted() throws {
        // Every 2 MiB page starts 4 KiB-aligned: 16K aligned to 4096 is one page.
        try expectNoLeak {
            let block = try ContiguousMemory.allocate(ContiguousRequest(bytes: 16 << 10, physicalAlignment: 4096))
            #expect(block.pageSize == .huge2M && block.runs.count == 1)
            let first = block.physicalAddress(ofPage: 0)
            let physical = try #require(first)
            #expect(physical.rawValue % 4096 == 0 && physical.rawValue % (2 << 20) == 0)
            // A larger alignment than the page is still searched for, and 0 is no power of two.
            #expect(throws: ContiguousError.invalidRequest("the physical alignment must be a power of two (got 0)")) {
                _ = try ContiguousMemory.allocate(ContiguousRequest(bytes: 16 << 10, physicalAlignment: 0))
            }
        }
    }

    /// The window search on a made-up free pool of 2 MiB frames 1–2 (2–6 MiB)
    /// and 6–9 (12–20 MiB): the first run crosses the 4 MiB line, so a 4 MiB
    /// block inside a 4 MiB boundary must start at frame 6.
    @Test func aBoundaryKeepsOnlyWindowsBetweenTwoOfItsMultiples() {
        let ps = 2 << 20
        let translation = PhysicalTranslation(pagePhysical: [1, 2, 6, 7, 8, 9].map { UInt64($0 * ps) }, pageSize: .huge2M)
        func start(_ placement: ContiguousMemory.Placement) -> UInt64? {
            ContiguousMemory.findWindow(in: translation, count: 2, placement: placement).pages
                .map { translation.pagePhysical[$0[0]] / UInt64(ps) }
        }
        // Negative control: without the boundary the first pair, across the line, is kept.
        #expect(start(.init(alignment: ps, boundary: nil)) == 1)
        #expect(start(.init(alignment: ps, boundary: 4 << 20)) == 6)
        #expect(start(.init(alignment: ps, boundary: 8 << 20)) == 1)  // 2–6 MiB stays below 8 MiB
        #expect(start(.init(alignment: ps, boundary: 16 << 20)) == 1)
        // An 8 MiB alignment: only frame 8 (16 MiB) starts a pair at one.
        #expect(start(.init(alignment: 8 << 20, boundary: nil)) == 8)
        // A boundary that crosses every pair.
        let crossing = PhysicalTranslation(pagePhysical: [1, 2, 3, 4].map { UInt64($0 * ps) + (1 << 32) - UInt64(4 * ps) }, pageSize: .huge2M)
        let across4G = ContiguousMemory.findWindow(in: crossing, count: 4, placement: .init(alignment: ps, boundary: 1 << 32))
        #expect(across4G.pages == nil && across4G.largestRunBytes == 4 * ps)
        #expect(ContiguousMemory.findWindow(in: crossing, count: 4, placement: .init(alignment: ps, boundary: nil)).pages != nil)
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root (PFNs) and free 2 MiB hugepages"))
    func aBoundedBlockStaysBetweenTwoMultiplesPerAFreshPagemapRead() throws {
        let (bytes, _) = try largestFree2MiBRun(cap: 8 << 20)
        try #require(bytes >= 4 << 20, "the free pool holds no run of two 2 MiB pages (largest \(bytes))")
        try expectNoLeak {
            // A boundary equal to the size can only be met at a multiple of it.
            for boundary in [4 << 20, 1 << 32] {
                let budget = hugepagesForATestRun * (2 << 20)
                let block = try ContiguousMemory.allocate(ContiguousRequest(bytes: 4 << 20, physicalBoundary: boundary, budgetBytes: budget))
                let physical = try freshPhysical(block.base, length: block.length, pageSize: 2 << 20)
                #expect(physical.count == 2 && physical[1] == physical[0] + (2 << 20))
                let b = UInt64(boundary)
                #expect(physical[0] / b == (physical[0] + UInt64(4 << 20) - 1) / b,
                        "block at 0x\(String(physical[0], radix: 16)) crosses a \(boundary)-byte boundary")
            }
        }
        #expect(throws: ContiguousError.self) { _ = try ContiguousMemory.allocate(ContiguousRequest(bytes: 4 << 20, physicalBoundary: 2 << 20)) }
        #expect(throws: ContiguousError.invalidRequest("the physical boundary must be a power of two (got 3)")) {
            _ = try ContiguousMemory.allocate(ContiguousRequest(bytes: 4096, physicalBoundary: 3))
        }
    }

    @Test func fragmentationReportGroupsRunsByPhysicalOrderAndNode() {
        let ps = 2 << 20
        let physical = [5, 1, 2, 9, 3, 10, 11, 20].map { PhysicalAddress(UInt64($0 * ps)) }
        let nodes = [0, 0, 0, 1, 0, 1, 0, 1]
        let report = FragmentationReport(physical: physical, nodes: nodes, pageSize: PageSize(rawValue: ps)!)
        #expect(report.runs.map(\.pages) == [3, 1, 2, 1, 1])  // 1-3 | 5 | 9-10 | 11 (node 0) | 20
        #expect(report.largestRunBytes == 3 * ps)
        #expect(report.histogram.map(\.pages) == [1, 2, 3] && report.histogram.map(\.runs) == [3, 1, 1])
        #expect(report.nodes.map(\.node) == [0, 1] && report.nodes.map(\.pages) == [5, 3])
        #expect(report.pageCount == 8)
    }
}
