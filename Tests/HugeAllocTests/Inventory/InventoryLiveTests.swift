import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// The live inventory against the kernel's own files, read independently
/// here with Foundation. Global hugepage counters move with other
/// processes (this process's hugepage tests wait for their turn), so each
/// comparison reads the kernel before and after the inventory and judges a
/// reading during which the kernel held still.
@Suite(.usesHugepagePool) struct InventoryLiveTests {
    @Test func hugepagePoolsAgreeWithSysfs() throws {
        let warningsBefore = vanishedLibhugetlbfsMountWarnings()
        struct Pool: Equatable { var size, total, free, reserved, surplus, overcommit: Int }
        let (kernel, ours) = try stableReading({
            try Kernel.hugepageSizes().map { size in
                let directory = "/sys/kernel/mm/hugepages/hugepages-\(size / 1024)kB/"
                return Pool(size: size, total: try Kernel.integer(directory + "nr_hugepages"),
                            free: try Kernel.integer(directory + "free_hugepages"),
                            reserved: try Kernel.integer(directory + "resv_hugepages"),
                            surplus: try Kernel.integer(directory + "surplus_hugepages"),
                            overcommit: try Kernel.integer(directory + "nr_overcommit_hugepages"))
            }
        }, { try SystemInventory.read() }, { inventory in
            inventory.hugepagePools.map {
                Pool(size: $0.pageSize.bytes, total: $0.total, free: $0.free, reserved: $0.reserved,
                     surplus: $0.surplus, overcommit: $0.overcommit)
            }
        })
        #expect(ours.hugepagePools.map {
            Pool(size: $0.pageSize.bytes, total: $0.total, free: $0.free, reserved: $0.reserved,
                 surplus: $0.surplus, overcommit: $0.overcommit)
        } == kernel)
        #expect([warningsBefore, vanishedLibhugetlbfsMountWarnings()].contains(libraryDisagreements(ours.warnings)),
                "libhugetlbfs and libnuma agree with the kernel's files: \(ours.warnings)")
    }

    struct Meminfo: Equatable { var size, total, free, reserved, surplus: Int? }

    /// The default pool as /proc/meminfo's HugePages_* lines would show it.
    static func meminfoView(_ inventory: SystemInventory) -> Meminfo {
        guard let size = inventory.defaultHugepageSize, let pool = inventory.pool(size) else { return Meminfo() }
        return Meminfo(size: size.bytes, total: pool.total, free: pool.free, reserved: pool.reserved, surplus: pool.surplus)
    }

    @Test func defaultPoolAgreesWithProcMeminfo() throws {
        let (kernel, ours) = try stableReading({
            Meminfo(size: try Kernel.meminfo("Hugepagesize").map { $0 * 1024 },
                    total: try Kernel.meminfo("HugePages_Total"), free: try Kernel.meminfo("HugePages_Free"),
                    reserved: try Kernel.meminfo("HugePages_Rsvd"), surplus: try Kernel.meminfo("HugePages_Surp"))
        }, { try SystemInventory.read() }, Self.meminfoView)
        #expect(ours.defaultHugepageSize?.bytes == kernel.size)
        #expect(ours.defaultHugepageSize != nil, "this machine has hugepages")
        #expect(Self.meminfoView(ours) == kernel)
    }

    @Test func perNodeHugepagesAgreeWithNodeSysfs() throws {
        struct Share: Equatable { var node, size, total, free, surplus: Int }
        func shares(_ numa: NUMATopology) -> [Share] {
            numa.nodes.flatMap { node in
                node.hugepages.map { Share(node: node.id, size: $0.pageSize.bytes, total: $0.total, free: $0.free, surplus: $0.surplus) }
            }
        }
        let (kernel, ours) = try stableReading({
            try Kernel.nodeIDs().flatMap { node in
                try Kernel.directory("/sys/devices/system/node/node\(node)/hugepages").map { name in
                    let directory = "/sys/devices/system/node/node\(node)/hugepages/\(name)/"
                    return Share(node: node, size: Int(name.dropFirst(10).dropLast(2))! * 1024,
                                 total: try Kernel.integer(directory + "nr_hugepages"),
                                 free: try Kernel.integer(directory + "free_hugepages"),
                                 surplus: try Kernel.integer(directory + "surplus_hugepages"))
                }.sorted { $0.size < $1.size }
            }
        }, { try NUMATopology.read() }, shares)
        #expect(!kernel.isEmpty)
        #expect(shares(ours) == kernel)
    }

    @Test func numaNodesAgreeWithSysfs() throws {
        let numa = try NUMATopology.read()
        let ids = Kernel.nodeIDs()
        #expect(numa.available == (ids.count > 0), "libnuma is usable wherever sysfs has nodes here")
        #expect(numa.nodes.map(\.id) == ids)
        for node in numa.nodes {
            let directory = "/sys/devices/system/node/node\(node.id)/"
            #expect(node.cpus == Kernel.expand(try Kernel.text(directory + "cpulist")))
            #expect(node.distances == (try Kernel.text(directory + "distance")).split(whereSeparator: \.isWhitespace).map { Int($0)! })
            // Memory moves between two reads (and MemTotal with a balloon driver); allow 64 MiB.
            let total = try #require(try Kernel.meminfo("Node \(node.id) MemTotal", file: directory + "meminfo")) * 1024
            let free = try #require(try Kernel.meminfo("Node \(node.id) MemFree", file: directory + "meminfo")) * 1024
            #expect(abs(node.memTotalBytes - total) <= 64 << 20, "MemTotal \(node.memTotalBytes) vs \(total)")
            #expect(abs(node.memFreeBytes - free) <= 256 << 20, "MemFree \(node.memFreeBytes) vs \(free)")
            #expect(node.memFreeBytes <= node.memTotalBytes)
        }
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_CONF)))
        for cpu in 0..<cpus { #expect(numa.node(ofCPU: cpu) != nil, "CPU \(cpu) belongs to a node") }
        #expect(numa.distance(from: 0, to: 0) == 10)
    }

    @Test func hugetlbfsMountsAgreeWithProcMounts() throws {
        func lines(_ inventory: SystemInventory) -> [Kernel.HugetlbfsMountLine] {
            inventory.hugetlbfsMounts.map { .init(path: $0.path, size: $0.pageSize.bytes) }
        }
        let (kernel, ours) = try stableReading(Kernel.hugetlbfsMounts, { try SystemInventory.read() }, lines)
        #expect(lines(ours) == kernel)
    }

    @Test(.enabled(if: isRoot && Kernel.hugepageSizes().contains(1 << 30),
                   "mounting hugetlbfs needs root and a 1 GiB hugepage size"))
    func mountedHugetlbfsAppearsWithItsPageSize() throws {
        // A name with a space: /proc/mounts shows it as \040.
        let point = FileManager.default.temporaryDirectory.appendingPathComponent("inventory mount \(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: point, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: point) }
        try #require(mount("none", point, "hugetlbfs", 0, "pagesize=1G") == 0, "mount: errno \(errno)")
        defer { umount2(point, Int32(MNT_DETACH)) }

        let warningsBefore = vanishedLibhugetlbfsMountWarnings()
        let inventory = try SystemInventory.read()
        #expect(inventory.hugetlbfsMounts.contains(HugetlbfsMount(path: point, pageSize: .huge1G)))
        #expect(inventory.mounts(for: .huge1G).map(\.path).contains(point))
        #expect(!inventory.mounts(for: .huge2M).map(\.path).contains(point))
        #expect([warningsBefore, vanishedLibhugetlbfsMountWarnings()].contains(libraryDisagreements(inventory.warnings)),
                "\(inventory.warnings)")
    }

    @Test func limitsCapabilitiesAndModesAgreeWithProc() throws {
        let inventory = try SystemInventory.read()
        let line = try #require(try Kernel.text("/proc/self/limits").split(separator: "\n")
            .first { $0.hasPrefix("Max locked memory") })
        let fields = line.dropFirst("Max locked memory".count).split(separator: " ")
        #expect(inventory.memlockLimit.soft == Int(fields[0]), "unlimited is nil")
        #expect(inventory.memlockLimit.hard == Int(fields[1]))

        let mask = try Kernel.capEff()
        #expect(inventory.capabilities.sysAdmin == (mask >> 21 & 1 == 1))
        #expect(inventory.capabilities.ipcLock == (mask >> 14 & 1 == 1))

        func bracketed(_ path: String) -> String? {
            guard let text = try? Kernel.text(path), let open = text.firstIndex(of: "["),
                  let close = text.firstIndex(of: "]") else { return nil }
            return String(text[text.index(after: open)..<close])
        }
        #expect(inventory.transparentHugepages.enabled == bracketed("/sys/kernel/mm/transparent_hugepage/enabled"))
        #expect(inventory.transparentHugepages.defrag == bracketed("/sys/kernel/mm/transparent_hugepage/defrag"))

        var name = utsname()
        uname(&name)
        let release = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        #expect(inventory.kernelRelease == release)
        #expect(inventory.basePageSize.bytes == Int(getpagesize()))
        #expect(inventory.iommu.groups == Kernel.directory("/sys/kernel/iommu_groups").count)
        #expect(inventory.iommu.vfio == FileManager.default.fileExists(atPath: "/dev/vfio"))
    }

    @Test(.enabled(if: ((try? Kernel.capEff()) ?? 0) & (1 << 21) != 0,
                   "physical frame numbers are visible only with CAP_SYS_ADMIN"))
    func physicalAddressesVisibleWithSysAdmin() throws {
        let inventory = try SystemInventory.read()
        #expect(inventory.capabilities.sysAdmin)
        #expect(inventory.physicalAddressesVisible == true)
    }
}

/// The inventory's warnings about libhugetlbfs or libnuma disagreeing with
/// the kernel's files, without the kernel's own transient: resv_hugepages
/// read below zero right after a process that registered hugepage memory
/// with io_uring or AF_XDP exited (the suite's own backend tests do that in
/// parallel; KernelCounterTests checks that warning on a fixture).
func libraryDisagreements(_ warnings: [String]) -> [String] {
    warnings.filter { !$0.contains("read below zero as the kernel's unsigned counter") }
}
