import HugeAlloc

/// The outcome of one ``Doctor`` check.
package enum CheckStatus: String, Sendable, Equatable, Comparable {
    case ok = "OK", warn = "WARN", fail = "FAIL"

    private var rank: Int {
        switch self { case .ok: 0; case .warn: 1; case .fail: 2 }
    }
    package static func < (a: Self, b: Self) -> Bool { a.rank < b.rank }
}

/// One check of whether this machine can serve DMA memory.
package struct DoctorCheck: Equatable, Sendable {
    /// Short name: "hugepages", "mount", "memlock", ...
    package var name: String
    package var status: CheckStatus
    /// What was found.
    package var detail: String
    /// The exact command that fixes a WARN or FAIL; nil when OK.
    package var fix: String?
}

/// Checks that this machine can serve DMA memory: hugepages reserved and
/// free, hugetlbfs mounts, the memlock limit, access to physical addresses,
/// THP mode, IOMMU/VFIO, per-node balance and stale hugetlbfs files.
package enum Doctor {
    /// Runs every check against the inventory of the files below `fs`'s
    /// root (``SystemInventory``), plus the stale-file scan. On the live
    /// machine, physical-address access is a real read of this process's
    /// pagemap; on a fixture tree it is judged from `CapEff` (CAP_SYS_ADMIN).
    package static func run(in fs: KernelFiles = .live) -> [DoctorCheck] {
        let inventory: SystemInventory
        do {
            inventory = try SystemInventory.read(root: fs.root)
        } catch {
            return [DoctorCheck(name: "inventory", status: .fail, detail: error.description,
                                fix: "run as root on a Linux kernel with /proc and /sys mounted")]
        }
        var checks = run(inventory, stale: StaleHugepageFiles.find(in: fs))
        if let check = compactionCheck(fs.textIfReadable("/proc/sys/vm/compact_unevictable_allowed")) {
            checks.append(check)
        }
        for pool in inventory.hugepagePools where pool.total > 0 {
            if let cgroup = HugetlbCgroup.read(pageSize: pool.pageSize, files: fs) {
                checks.append(cgroupCheck(cgroup, poolBytes: pool.total * pool.pageSize.bytes))
            }
        }
        checks.append(contentsOf: vfioChecks(in: fs))
        return checks
    }

    /// Whether this process's hugetlb cgroup lets it use the pool: a limit
    /// below the pool's size means some of the free pages are out of reach
    /// however many the pool has.
    static func cgroupCheck(_ cgroup: HugetlbCgroup, poolBytes: Int) -> DoctorCheck {
        let name = "hugetlb-cgroup-\(cgroup.pageSize)"
        let needed = max(0, poolBytes - cgroup.fault.usage)
        if let shortage = cgroup.shortage(adding: needed) {
            return DoctorCheck(name: name, status: .warn,
                               detail: "the hugetlb cgroup \(cgroup.directory) limits \(cgroup.pageSize) \(shortage.kind == .reservation ? "reservations" : "faults") "
                                   + "to \(ByteCount.format(shortage.limit)) (\(ByteCount.format(shortage.usage)) in use), below the \(ByteCount.format(poolBytes)) pool",
                               fix: shortage.command)
        }
        return DoctorCheck(name: name, status: .ok,
                           detail: "the hugetlb cgroup \(cgroup.directory) leaves the whole \(cgroup.pageSize) pool in reach", fix: nil)
    }

    /// One check per device bound to vfio-pci: its IOMMU group, and whether
    /// the group is viable (every other device in it unbound or bound to
    /// vfio-pci/pci-stub), with the commands that make it so. Reads
    /// /sys/bus/pci/drivers/vfio-pci, each device's `iommu_group` link and
    /// /sys/kernel/iommu_groups/N/devices.
    static func vfioChecks(in fs: KernelFiles) -> [DoctorCheck] {
        let bound = fs.entries("/sys/bus/pci/drivers/vfio-pci").filter { PCIAddress($0) != nil }
        return bound.map { address in
            let name = "vfio-\(address)"
            guard let link = try? Sys.readLink(fs.path("/sys/bus/pci/devices/\(address)/iommu_group")),
                  let group = Int(link.split(separator: "/").last ?? "") else {
                return DoctorCheck(name: name, status: .fail, detail: "\(address) is bound to vfio-pci but has no IOMMU group",
                                   fix: "enable the IOMMU: add intel_iommu=on (or amd_iommu=on) to the kernel command line and reboot")
            }
            guard let status = try? VFIOGroupStatus.read(group: group, root: fs.root) else {
                return DoctorCheck(name: name, status: .fail, detail: "cannot read IOMMU group \(group) of \(address)", fix: nil)
            }
            if status.isViable {
                return DoctorCheck(name: name, status: .ok,
                                   detail: "\(address) in IOMMU group \(group) (viable: \(status.devices.count) device(s), none bound to a host driver)", fix: nil)
            }
            let unbind = status.devices.compactMap { d -> String? in
                guard let driver = d.driver, !VFIOGroupStatus.harmlessDrivers.contains(driver) else { return nil }
                return "echo \(d.address) > /sys/bus/pci/drivers/\(driver)/unbind"
            }
            return DoctorCheck(name: name, status: .warn,
                               detail: "\(address) in IOMMU group \(group) is not viable: \(status.blockers.joined(separator: ", ")) bound to host drivers",
                               fix: unbind.joined(separator: "; "))
        }
    }

    /// Whether compaction may migrate locked (mlocked) base pages, which would
    /// change their physical addresses under a device. Reads
    /// /proc/sys/vm/compact_unevictable_allowed; nil when the kernel has no
    /// such setting (no compaction).
    static func compactionCheck(_ setting: String?) -> DoctorCheck? {
        guard let value = setting?.trimmingWhitespace() else { return nil }
        if value == "0" {
            return DoctorCheck(name: "compaction", status: .ok,
                               detail: "compaction leaves locked base pages in place (compact_unevictable_allowed = 0)", fix: nil)
        }
        return DoctorCheck(name: "compaction", status: .warn,
                           detail: "compaction may migrate locked base pages, changing their physical addresses (hugepages are not affected)",
                           fix: "echo 0 > /proc/sys/vm/compact_unevictable_allowed   (or sysctl -w vm.compact_unevictable_allowed=0)")
    }

    /// The checks for an inventory and the stale files found on its mounts.
    package static func run(_ inventory: SystemInventory, stale: [StaleHugepageFile]) -> [DoctorCheck] {
        var checks: [DoctorCheck] = []
        let reserved = inventory.hugepagePools.filter { $0.total > 0 }
        let defaultSize = inventory.defaultHugepageSize ?? inventory.hugepagePools.first?.pageSize ?? .huge2M
        let setupFix = "inspect-memory setup --pages \(defaultSize):512   (or: echo 512 > \(HugepagePoolDirectory(defaultSize).countFile))"

        // Hugepages reserved.
        if inventory.hugepagePools.isEmpty {
            checks.append(DoctorCheck(name: "hugepages", status: .fail, detail: "this kernel offers no hugepage sizes (/sys/kernel/mm/hugepages is empty)",
                                      fix: "boot a kernel built with CONFIG_HUGETLBFS=y"))
        } else if reserved.isEmpty {
            checks.append(DoctorCheck(name: "hugepages", status: .fail, detail: "no hugepages reserved of any size", fix: setupFix))
        } else {
            let list = reserved.map { "\($0.pageSize): \($0.total)" }.joined(separator: ", ")
            checks.append(DoctorCheck(name: "hugepages", status: .ok, detail: "reserved \(list)", fix: nil))
        }

        // Hugepages free.
        if !reserved.isEmpty {
            let list = reserved.map { "\($0.pageSize): \($0.free) of \($0.total)" }.joined(separator: ", ")
            if reserved.allSatisfy({ $0.free == 0 }) {
                let p = reserved[0]
                checks.append(DoctorCheck(name: "hugepages-free", status: .fail, detail: "every reserved hugepage is in use (\(list))",
                                          fix: "inspect-memory setup --pages \(p.pageSize):\(p.total * 2)   (or free stale files: inspect-memory hugepages --clean)"))
            } else if let p = reserved.first(where: { $0.free == 0 }) {
                checks.append(DoctorCheck(name: "hugepages-free", status: .warn, detail: "no free \(p.pageSize) pages (\(list))",
                                          fix: "inspect-memory setup --pages \(p.pageSize):\(p.total * 2)"))
            } else {
                checks.append(DoctorCheck(name: "hugepages-free", status: .ok, detail: "free \(list)", fix: nil))
            }
        }

        // Mounts.
        for pool in reserved {
            let name = "mount-\(pool.pageSize)"
            if let m = inventory.mounts(for: pool.pageSize).first {
                checks.append(DoctorCheck(name: name, status: .ok, detail: "hugetlbfs for \(pool.pageSize) pages at \(m.path)", fix: nil))
            } else {
                let dir = pool.pageSize == defaultSize ? "/dev/hugepages" : "/dev/hugepages-\(pool.pageSize)"
                checks.append(DoctorCheck(name: name, status: .warn,
                                          detail: "no hugetlbfs mounted for \(pool.pageSize) pages (needed for file-backed and multi-process memory)",
                                          fix: "mkdir -p \(dir) && mount -t hugetlbfs -o pagesize=\(pool.pageSize) nodev \(dir)"))
            }
        }

        // Memlock limit.
        checks.append(memlockCheck(inventory, neededBytes: reserved.reduce(0) { $0 + $1.total * $1.pageSize.bytes }))

        // Physical addresses.
        if inventory.physicalAddressesVisible ?? inventory.capabilities.sysAdmin {
            checks.append(DoctorCheck(name: "physical-addresses", status: .ok, detail: "pagemap shows page frame numbers (CAP_SYS_ADMIN)", fix: nil))
        } else {
            checks.append(DoctorCheck(name: "physical-addresses", status: .warn,
                                      detail: "pagemap hides page frame numbers from this process (no CAP_SYS_ADMIN); physical addresses need root or an IOMMU",
                                      fix: "sudo setcap cap_sys_admin,cap_ipc_lock+ep $(command -v inspect-memory)   (or run as root)"))
        }

        // THP.
        if let mode = inventory.transparentHugepages.enabled {
            if mode == "always" {
                checks.append(DoctorCheck(name: "thp", status: .warn,
                                          detail: "transparent hugepages: always (background compaction and khugepaged can stall and move pages)",
                                          fix: "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"))
            } else {
                checks.append(DoctorCheck(name: "thp", status: .ok, detail: "transparent hugepages: \(mode)", fix: nil))
            }
        }

        // IOMMU / VFIO.
        let iommu = inventory.iommu
        if iommu.groups > 0 {
            checks.append(DoctorCheck(name: "iommu", status: iommu.vfio ? .ok : .warn,
                                      detail: "IOMMU present (\(iommu.groups) groups), \(iommu.vfio ? "/dev/vfio present" : "vfio not loaded")",
                                      fix: iommu.vfio ? nil : "modprobe vfio-pci"))
        } else {
            checks.append(DoctorCheck(name: "iommu", status: .warn,
                                      detail: "no IOMMU groups: devices need physical addresses (no isolation, no IOVA)",
                                      fix: "add intel_iommu=on iommu=pt (or amd_iommu=on) to the kernel command line and reboot"))
        }

        // Per-node balance.
        let nodes = inventory.numa.nodes
        if nodes.count > 1 {
            for pool in reserved {
                let perNode = nodes.map { node in
                    (node: node.id, total: node.hugepages.first { $0.pageSize == pool.pageSize }?.total ?? 0)
                }
                let list = perNode.map { "node\($0.node)=\($0.total)" }.joined(separator: " ")
                if let empty = perNode.first(where: { $0.total == 0 }) {
                    checks.append(DoctorCheck(name: "numa-\(pool.pageSize)", status: .warn,
                                              detail: "\(pool.pageSize) pages unevenly spread (\(list))",
                                              fix: "inspect-memory setup --pages \(pool.pageSize):\(max(1, pool.total / nodes.count)) --node \(empty.node)"))
                } else {
                    checks.append(DoctorCheck(name: "numa-\(pool.pageSize)", status: .ok, detail: list, fix: nil))
                }
            }
        } else {
            checks.append(DoctorCheck(name: "numa", status: .ok, detail: "\(max(nodes.count, 1)) node: nothing to balance", fix: nil))
        }

        // Stale files.
        if stale.isEmpty {
            checks.append(DoctorCheck(name: "stale-files", status: .ok, detail: "no stale files on hugetlbfs mounts", fix: nil))
        } else {
            let bytes = stale.reduce(0) { $0 + $1.bytes }
            checks.append(DoctorCheck(name: "stale-files", status: .warn,
                                      detail: "\(stale.count) stale file(s) on hugetlbfs pin \(ByteCount.format(bytes)) of hugepages",
                                      fix: "inspect-memory hugepages --clean"))
        }
        return checks
    }

    /// The memlock limit against the reserved hugepage bytes (the shared
    /// memlock check, with nothing locked yet).
    static func memlockCheck(_ inventory: SystemInventory, neededBytes: Int) -> DoctorCheck {
        guard let soft = inventory.memlockLimit.soft else {
            return DoctorCheck(name: "memlock", status: .ok, detail: "memlock limit unlimited", fix: nil)
        }
        if inventory.capabilities.ipcLock {
            return DoctorCheck(name: "memlock", status: .ok, detail: "memlock limit \(ByteCount.format(soft)), but CAP_IPC_LOCK lifts it", fix: nil)
        }
        let shortage = MemlockCheck.shortage(needed: neededBytes, alreadyLocked: 0, limit: soft, hasIPCLock: false)
        if neededBytes > 0 && shortage == nil {
            return DoctorCheck(name: "memlock", status: .ok, detail: "memlock limit \(ByteCount.format(soft)) covers the \(ByteCount.format(neededBytes)) reserved", fix: nil)
        }
        return DoctorCheck(name: "memlock", status: .warn,
                           detail: "memlock limit \(ByteCount.format(soft)) is below the \(ByteCount.format(neededBytes)) of reserved hugepages",
                           fix: (shortage ?? MemlockShortage(needed: neededBytes, alreadyLocked: 0, limit: soft)).fix)
    }
}
