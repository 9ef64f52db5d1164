import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

private let hugepagesFree = freeHugepages(.huge2M, node: 0) >= 4

/// A private anonymous mapping of `pages` pages of `pageSize`, unmapped on deinit.
private struct TestMapping: ~Copyable {
    let base: UnsafeMutableRawPointer
    let length: Int
    let pageSize: Int

    init(pages: Int, huge: Bool) throws {
        pageSize = huge ? PageSize.huge2M.bytes : Sys.basePageSize
        length = pages * pageSize
        var flags: Sys.MapFlags = [.private, .anonymous]
        if huge { flags.formUnion([.hugeTLB, .hugePageSize(pageSize)]) }
        base = try Sys.mmap(length: length, protection: .readWrite, flags: flags)
    }

    deinit { try? Sys.munmap(base, length: length) }

    func touch() throws {
        let fault = try Sys.guardedTouch(base, length: length, stride: pageSize, threads: 1)
        #expect(fault == nil, "SIGBUS at offset \(fault ?? -1)")
    }
}

@Suite("NUMA placement")
struct NUMAPlacementTests {
    @Test("bind(0) sets MPOL_BIND on the range, pages land on node 0 and verify passes",
          .enabled(if: hugepagesFree, "needs 4 free 2 MiB hugepages on node 0"), .usesHugepagePool)
    func bindNode0() throws {
        let mapping = try TestMapping(pages: 4, huge: true)
        try NUMAPlacement.apply(.bind(0), to: mapping.base, length: mapping.length)
        // The kernel's own record of the policy: on a 1-node machine the
        // landing node alone cannot tell a bind from no policy at all.
        #expect(try NUMAPlacement.policy(of: mapping.base) == .bind(0))
        try mapping.touch()
        let nodes = try NUMAPlacement.nodes(of: mapping.base, length: mapping.length, pageSize: PageSize(rawValue: mapping.pageSize)!)
        #expect(nodes == [0, 0, 0, 0])
        try NUMAPlacement.verify(.bind(0), nodes: nodes)
    }

    @Test("each policy reads back from the kernel as set; .any makes no call")
    func policiesReadBack() throws {
        for policy: NUMAPolicy in [.bind(0), .preferred(0), .interleave([0]), .local] {
            let mapping = try TestMapping(pages: 2, huge: false)
            try NUMAPlacement.apply(policy, to: mapping.base, length: mapping.length)
            #expect(try NUMAPlacement.policy(of: mapping.base) == policy, "\(policy)")
        }
        let mapping = try TestMapping(pages: 2, huge: false)
        try NUMAPlacement.apply(.any, to: mapping.base, length: mapping.length)
        #expect(try NUMAPlacement.policy(of: mapping.base) == .any)
    }

    @Test("move_pages and get_mempolicy agree on every page's node")
    func bothLookupsAgree() throws {
        let mapping = try TestMapping(pages: 8, huge: false)
        try mapping.touch()
        let pages: [UnsafeMutableRawPointer?] = (0..<8).map { mapping.base + $0 * mapping.pageSize }
        let viaMovePages = try Sys.pageNodes(pages).map(Int.init)
        let viaGetMempolicy = try pages.map { try Sys.nodeOfPage($0!) }
        #expect(viaMovePages == viaGetMempolicy)
        #expect(viaMovePages == Array(repeating: 0, count: 8))
    }

    @Test("a page not faulted in is pageNotPresent, not a made-up node")
    func unfaultedPage() throws {
        let mapping = try TestMapping(pages: 2, huge: false)
        #expect(throws: NUMAError.pageNotPresent(page: 0)) {
            try NUMAPlacement.nodes(of: mapping.base, length: mapping.length, pageSize: PageSize(rawValue: mapping.pageSize)!)
        }
    }

    @Test("bind to a node that does not exist is noSuchNode naming it")
    func bindMissingNode() throws {
        let mapping = try TestMapping(pages: 1, huge: false)
        let allowed = try NUMAPlacement.allowedNodes()
        #expect(allowed == [0])
        #expect(throws: NUMAError.noSuchNode(UnknownNode(node: 7, available: [0]))) {
            try NUMAPlacement.apply(.bind(7), to: mapping.base, length: mapping.length)
        }
        #expect(throws: NUMAError.noSuchNode(UnknownNode(node: 3, available: [0]))) {
            try NUMAPlacement.apply(.interleave([0, 3]), to: mapping.base, length: mapping.length)
        }
        #expect(throws: NUMAError.emptyNodeList) {
            try NUMAPlacement.apply(.interleave([]), to: mapping.base, length: mapping.length)
        }
        let message = NUMAError.noSuchNode(UnknownNode(node: 7, available: [0])).description
        #expect(message.contains("node 7") && message.contains("allowed nodes: 0"))
    }

    @Test("bad ranges are typed errors")
    func badRanges() throws {
        let mapping = try TestMapping(pages: 1, huge: false)
        #expect(throws: NUMAError.self) { try NUMAPlacement.apply(.bind(0), to: mapping.base + 1, length: 64) }
        #expect(throws: NUMAError.self) { try NUMAPlacement.apply(.bind(0), to: mapping.base, length: 0) }
        // A page size that is not a power of two cannot be passed: PageSize refuses it.
        #expect(PageSize(rawValue: 3000) == nil)
    }

    @Test("verify throws on a synthetic misplacement, naming the first bad page")
    func verifyMisplaced() throws {
        #expect(throws: NUMAError.misplaced(policy: .bind(1), firstPage: 2, foundNode: 0, misplacedPages: 2, totalPages: 4)) {
            try NUMAPlacement.verify(.bind(1), nodes: [1, 1, 0, 0])
        }
        #expect(throws: NUMAError.misplaced(policy: .interleave([0, 1]), firstPage: 1, foundNode: 2, misplacedPages: 1, totalPages: 3)) {
            try NUMAPlacement.verify(.interleave([0, 1]), nodes: [0, 2, 1])
        }
        try NUMAPlacement.verify(.bind(1), nodes: [1, 1])
        try NUMAPlacement.verify(.interleave([0, 1]), nodes: [0, 1, 0])
        // preferred, local and any may fall back by definition.
        try NUMAPlacement.verify(.preferred(1), nodes: [0, 0])
        try NUMAPlacement.verify(.local, nodes: [3])
        try NUMAPlacement.verify(.any, nodes: [2])
        let message = NUMAError.misplaced(policy: .bind(1), firstPage: 2, foundNode: 0, misplacedPages: 2, totalPages: 4).description
        #expect(message.contains("bind(1)") && message.contains("2 of 4") && message.contains("node 0"))
    }

    @Test("checkFreeHugepages on a fixture: error names node, size, needed, free and the command")
    func checkFreeFixture() throws {
        let root = fixtureRoot("two-node-pool-on-node1")
        try NUMAPlacement.checkFreeHugepages(node: 1, pageSize: .huge2M, needed: 3, root: root)
        let error = NUMAError.notEnoughHugepages(HugepageShortage(pageSize: .huge2M, node: 1, needed: 4, free: 3, total: 5))
        #expect(throws: error) {
            try NUMAPlacement.checkFreeHugepages(node: 1, pageSize: .huge2M, needed: 4, root: root)
        }
        #expect(error.description ==
            "not enough free 2M hugepages on node 1: needed 4, free 3. Reserve more with: echo 6 > /sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages")
        #expect(throws: NUMAError.notEnoughHugepages(HugepageShortage(pageSize: .huge2M, node: 0, needed: 1, free: 0, total: 0))) {
            try NUMAPlacement.checkFreeHugepages(node: 0, pageSize: .huge2M, needed: 1, root: root)
        }
        #expect(throws: NUMAError.noHugepagePool(
            node: 2, pageSize: .huge2M, path: root + "/sys/devices/system/node/node2/hugepages/hugepages-2048kB")) {
            try NUMAPlacement.checkFreeHugepages(node: 2, pageSize: .huge2M, needed: 1, root: root)
        }
    }

    @Test("checkFreeHugepages on this machine: passes within free, fails beyond it with the command",
          .usesHugepagePool)
    func checkFreeLive() throws {
        let free = freeHugepages(.huge2M, node: 0)
        if free > 0 { try NUMAPlacement.checkFreeHugepages(node: 0, pageSize: .huge2M, needed: 1) }
        // Far more than any machine here has; other tests moving the count cannot make this pass.
        let needed = free + 1_000_000
        do {
            try NUMAPlacement.checkFreeHugepages(node: 0, pageSize: .huge2M, needed: needed)
            Issue.record("no error for \(needed) pages")
        } catch {
            guard case .notEnoughHugepages(let shortage) = error, shortage.node == 0, shortage.pageSize == .huge2M,
                  shortage.needed == needed else {
                Issue.record("wrong error \(error)")
                return
            }
            let command = "echo \(shortage.total + needed - shortage.free) > /sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
            #expect(shortage.command == command)
            #expect(error.description.contains(command))
        }
    }

    @Test("currentNode is 0 on this one-node machine, and matches getcpu")
    func currentNode() throws {
        #expect(try NUMAPlacement.currentNode() == 0)
        #expect(try Sys.getcpu().node == 0)
    }

    @Test("pinning the thread shows in its affinity")
    func pinning() throws {
        let before = try NUMAPlacement.currentThreadCPUs()
        defer { try? NUMAPlacement.pinCurrentThread(toCPUs: before) }
        try NUMAPlacement.pinCurrentThread(toCPUs: [before[0]])
        #expect(try NUMAPlacement.currentThreadCPUs() == [before[0]])
        #expect(Sys.currentCPU() == before[0])
        try NUMAPlacement.pinCurrentThread(toCPUs: before)
        #expect(try NUMAPlacement.currentThreadCPUs() == before)
        #expect(throws: NUMAError.self) { try NUMAPlacement.pinCurrentThread(toCPUs: []) }
    }
}
