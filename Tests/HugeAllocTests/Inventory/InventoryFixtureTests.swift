import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// Parsing of committed fixture trees laid out like / (Fixtures/<machine>/proc, /sys, /dev).
@Suite struct InventoryFixtureTests {
    let mib2 = PageSize.huge2M
    let gib1 = PageSize.huge1G

    @Test func oneNodeMachine() throws {
        let inventory = try SystemInventory.read(root: fixtureRoot("one-node"))
        #expect(inventory.kernelRelease == "6.1.0-18-amd64")
        #expect(inventory.basePageSize == .base)
        #expect(inventory.defaultHugepageSize == mib2)
        #expect(inventory.hugepagePools == [HugepagePool(pageSize: mib2, total: 64, free: 60, reserved: 2, surplus: 0, overcommit: 0)])
        #expect(inventory.hugetlbfsMounts == [HugetlbfsMount(path: "/dev/hugepages", pageSize: mib2)])
        #expect(inventory.transparentHugepages == TransparentHugepageModes(enabled: "always", defrag: "never"))
        #expect(inventory.memlockLimit == MemlockLimit(soft: 65536, hard: 131072))
        #expect(inventory.capabilities == Capabilities(sysAdmin: false, ipcLock: false))
        #expect(inventory.physicalAddressesVisible == nil, "a fixture root cannot say what this process sees")
        #expect(inventory.iommu == IOMMUSummary(groups: 0, vfio: false))
        #expect(inventory.warnings.isEmpty)

        #expect(inventory.numa.available)
        let node = try #require(inventory.numa.nodes.first)
        #expect(inventory.numa.nodes.count == 1, "online, possible and has_memory are not node directories")
        #expect(node == NUMANodeInfo(id: 0, cpus: Array(0...7), memTotalBytes: 32768000 * 1024,
                                     memFreeBytes: 16000000 * 1024, distances: [10],
                                     hugepages: [NodeHugepageCounts(pageSize: mib2, total: 64, free: 60, surplus: 0)]))
        #expect(inventory.numa.node(ofCPU: 7) == 0)
        #expect(inventory.numa.node(ofCPU: 8) == nil)
        #expect(inventory.numa.distance(from: 0, to: 0) == 10)
    }

    @Test func fourNodePoolsOfBothSizes() throws {
        let inventory = try SystemInventory.read(root: fixtureRoot("four-node"))
        #expect(inventory.kernelRelease == "5.15.0-91-generic")
        #expect(inventory.hugepagePools.map(\.pageSize) == [mib2, gib1], "sorted by size")
        #expect(inventory.pool(mib2) == HugepagePool(pageSize: mib2, total: 1000, free: 940, reserved: 20, surplus: 0, overcommit: 0))
        #expect(inventory.pool(gib1) == HugepagePool(pageSize: gib1, total: 6, free: 5, reserved: 1, surplus: 0, overcommit: 0))
        #expect(inventory.pool(PageSize(rawValue: 16 << 30)!) == nil)
        // Uneven per-node shares that add up to the system-wide pool.
        for pool in inventory.hugepagePools {
            let shares = inventory.nodeCounts(for: pool.pageSize)
            #expect(shares.map(\.node) == [0, 1, 2, 3])
            #expect(shares.map(\.counts.total).reduce(0, +) == pool.total)
            #expect(shares.map(\.counts.free).reduce(0, +) == pool.free)
        }
    }

    @Test func fourNodeCPUsIncludingAMemoryOnlyNode() throws {
        let numa = try NUMATopology.read(root: fixtureRoot("four-node"))
        #expect(numa.available)
        #expect(numa.nodes.map(\.id) == [0, 1, 2, 3])
        #expect(numa.nodes[0].cpus == [0, 1, 2, 3, 16, 17, 18, 19])
        #expect(numa.nodes[1].cpus == [4, 5, 6, 7, 20, 21, 22, 23])
        #expect(numa.nodes[2].cpus == [8, 9, 10, 11, 24, 25, 26, 27])
        #expect(numa.nodes[3].cpus == [], "node 3 has memory but no CPUs (empty cpulist)")
        #expect(numa.node(ofCPU: 0) == 0)
        #expect(numa.node(ofCPU: 17) == 0)
        #expect(numa.node(ofCPU: 20) == 1)
        #expect(numa.node(ofCPU: 27) == 2)
        #expect(numa.node(ofCPU: 12) == nil, "CPUs 12-15 belong to no node in this fixture")
    }

    @Test func fourNodeDistanceMatrix() throws {
        let numa = try NUMATopology.read(root: fixtureRoot("four-node"))
        #expect(numa.nodes.map(\.distances) == [[10, 16, 16, 22], [16, 10, 22, 16], [16, 22, 10, 16], [22, 16, 16, 10]])
        for a in 0..<4 {
            #expect(numa.distance(from: a, to: a) == 10)
            for b in 0..<4 { #expect(numa.distance(from: a, to: b) == numa.distance(from: b, to: a)) }
        }
        #expect(numa.distance(from: 0, to: 3) == 22)
        #expect(numa.distance(from: 1, to: 3) == 16)
        #expect(numa.distance(from: 0, to: 4) == nil)
        #expect(numa.distance(from: 7, to: 0) == nil)
    }

    @Test func fourNodePerNodeHugepagesAndMemory() throws {
        let numa = try NUMATopology.read(root: fixtureRoot("four-node"))
        func counts(_ total: Int, _ free: Int, _ size: PageSize) -> NodeHugepageCounts {
            NodeHugepageCounts(pageSize: size, total: total, free: free, surplus: 0)
        }
        #expect(numa.nodes[0].hugepages == [counts(400, 390, mib2), counts(4, 3, gib1)])
        #expect(numa.nodes[1].hugepages == [counts(300, 300, mib2), counts(2, 2, gib1)])
        #expect(numa.nodes[2].hugepages == [counts(200, 150, mib2), counts(0, 0, gib1)])
        #expect(numa.nodes[3].hugepages == [counts(100, 100, mib2), counts(0, 0, gib1)])
        #expect(numa.nodes.map(\.memTotalBytes) == [16 << 30, 16 << 30, 16 << 30, 8 << 30])
        #expect(numa.nodes.map(\.memFreeBytes) == [8000000 * 1024, 9000000 * 1024, 10000000 * 1024, 8000000 * 1024])
    }

    @Test func fourNodeMountsLimitsAndIOMMU() throws {
        let inventory = try SystemInventory.read(root: fixtureRoot("four-node"))
        #expect(inventory.hugetlbfsMounts == [HugetlbfsMount(path: "/dev/hugepages", pageSize: mib2),
                                              HugetlbfsMount(path: "/mnt/huge1G", pageSize: gib1)],
                "pagesize=1024M is 1 GiB")
        #expect(inventory.memlockLimit == MemlockLimit(soft: nil, hard: nil), "unlimited is nil")
        #expect(inventory.capabilities == Capabilities(sysAdmin: true, ipcLock: true))
        #expect(inventory.iommu == IOMMUSummary(groups: 3, vfio: true))
        #expect(inventory.transparentHugepages == TransparentHugepageModes(enabled: "madvise", defrag: "madvise"))
        #expect(inventory.numa == (try NUMATopology.read(root: fixtureRoot("four-node"))))
    }

    @Test func twoNodeMachineWithSurplusAndOvercommit() throws {
        let inventory = try SystemInventory.read(root: fixtureRoot("two-node-surplus-overcommit"))
        #expect(inventory.hugepagePools == [HugepagePool(pageSize: mib2, total: 12, free: 3, reserved: 1, surplus: 2, overcommit: 4)])
        #expect(inventory.numa.nodes.map(\.cpus) == [[0, 2, 4, 6], [1, 3, 5, 7]])
        #expect(inventory.numa.nodes.map(\.distances) == [[10, 21], [21, 10]])
        #expect(inventory.numa.node(ofCPU: 5) == 1)
        #expect(inventory.nodeCounts(for: mib2).map(\.counts) == [
            NodeHugepageCounts(pageSize: mib2, total: 8, free: 1, surplus: 2),
            NodeHugepageCounts(pageSize: mib2, total: 4, free: 2, surplus: 0),
        ])
        #expect(inventory.capabilities == Capabilities(sysAdmin: false, ipcLock: true), "CapEff 0x4000 is bit 14 alone")
        #expect(inventory.memlockLimit == MemlockLimit(soft: 8 << 20, hard: 16 << 20))
        #expect(inventory.transparentHugepages == TransparentHugepageModes(enabled: "never", defrag: "always"))
        #expect(inventory.hugetlbfsMounts.isEmpty, "no hugetlbfs mount is a valid inventory")
        #expect(inventory.iommu == IOMMUSummary(groups: 1, vfio: false))
    }

    @Test func oddHugetlbfsMounts() throws {
        let inventory = try SystemInventory.read(root: fixtureRoot("odd-mounts"))
        #expect(inventory.hugetlbfsMounts == [
            HugetlbfsMount(path: "/dev/hugepages", pageSize: mib2),   // no pagesize=: the default size
            HugetlbfsMount(path: "/mnt/huge-1g", pageSize: gib1),     // pagesize=1G
            HugetlbfsMount(path: "/mnt/my pool", pageSize: mib2),     // \040 escape, pagesize= among other options
        ], "a tmpfs line with pagesize= is not a hugetlbfs mount")
        #expect(inventory.mounts(for: gib1).map(\.path) == ["/mnt/huge-1g"])
        #expect(inventory.mounts(for: mib2).map(\.path) == ["/dev/hugepages", "/mnt/my pool"])
    }

    @Test func numaUnavailableWithoutNodeDirectories() throws {
        let inventory = try SystemInventory.read(root: fixtureRoot("no-numa"))
        #expect(inventory.numa == NUMATopology(available: false, nodes: []))
        #expect(try NUMATopology.read(root: fixtureRoot("no-numa")) == inventory.numa)
        #expect(inventory.pool(mib2)?.total == 8, "hugepages do not need NUMA")
        #expect(inventory.nodeCounts(for: mib2).isEmpty)
        #expect(inventory.transparentHugepages == TransparentHugepageModes(enabled: nil, defrag: nil))
        #expect(inventory.capabilities == Capabilities(sysAdmin: true, ipcLock: false), "CapEff 0x200000 is bit 21 alone")
        #expect(inventory.memlockLimit == MemlockLimit(soft: 65536, hard: nil))
    }

    @Test func kernelWithoutHugepagesIsAValidInventory() throws {
        let inventory = try SystemInventory.read(root: fixtureRoot("kernel-without-hugetlb"))
        #expect(inventory.defaultHugepageSize == nil)
        #expect(inventory.hugepagePools.isEmpty)
        #expect(inventory.hugetlbfsMounts.isEmpty)
        #expect(inventory.numa.nodes.isEmpty)
        #expect(inventory.iommu == IOMMUSummary(groups: 0, vfio: false))
    }

    @Test func cpuListParsing() throws {
        #expect(try KernelText.cpuList("0-3,8-11\n", path: "p") == [0, 1, 2, 3, 8, 9, 10, 11])
        #expect(try KernelText.cpuList("5\n", path: "p") == [5])
        #expect(try KernelText.cpuList("\n", path: "p") == [])
        #expect(try KernelText.cpuList("3,1-2,2", path: "p") == [1, 2, 3])
        for bad in ["3-1", "0-", "-1", "a", "0,,1", "0-2-4", "0x1"] {
            #expect(throws: KernelFileError.malformed(path: "p", line: 1, text: bad,
                                                      expected: "a CPU list such as \"0-3,8-11\"")) {
                try KernelText.cpuList(bad, path: "p")
            }
        }
    }

    @Test func modeAndMountFieldParsing() throws {
        #expect(try KernelText.bracketedChoice("always defer defer+madvise [madvise] never\n", path: "p") == "madvise")
        #expect(throws: KernelFileError.self) { try KernelText.bracketedChoice("always madvise never", path: "p") }
        #expect(throws: KernelFileError.self) { try KernelText.bracketedChoice("[] never", path: "p") }
        #expect(KernelText.unescapeMountField(#"/mnt/a\040b\011c"#) == "/mnt/a b\tc")
        #expect(KernelText.unescapeMountField(#"/mnt/trailing\04"#) == #"/mnt/trailing\04"#)
        #expect(try KernelText.hugepageDirectorySize("hugepages-1048576kB", path: "p") == gib1)
        #expect(throws: KernelFileError.self) { try KernelText.hugepageDirectorySize("hugepages-3000kB", path: "p") }
    }
}
