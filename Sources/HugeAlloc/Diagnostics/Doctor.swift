/// The outcome of one ``Doctor`` check.
public enum CheckStatus: String, Sendable, Equatable, Comparable {
    case ok = "OK", warn = "WARN", fail = "FAIL"

    private var rank: Int {
        switch self { case .ok: 0; case .warn: 1; case .fail: 2 }
    }
    public static func < (a: Self, b: Self) -> Bool { a.rank < b.rank }
}

/// One check of whether this machine can serve DMA memory.
public struct DoctorCheck: Equatable, Sendable {
    /// Short name: "hugepages", "mount", "memlock", ...
    public var name: String
    public var status: CheckStatus
    /// What was found.
    public var detail: String
    /// The exact command that fixes a WARN or FAIL; nil when OK.
    public var fix: String?
}

/// Checks that this machine can serve DMA memory: hugepages reserved and
/// free, hugetlbfs mounts, the memlock limit, access to physical addresses,
/// THP mode, IOMMU/VFIO, per-node balance and stale hugetlbfs files.
public enum Doctor {
    /// Runs every check against the files below `fs`'s root. On the live
    /// machine, physical-address access is tested by reading this process's
    /// own pagemap; on a fixture tree, from /proc/self/status `CapEff`.
    public static func run(in fs: ProcFileSystem = .live) -> [DoctorCheck] {
        var checks: [DoctorCheck] = []
        let sizes = HugepageSetup.availableSizes(in: fs)
        let nodes = HugepageSetup.nodes(in: fs)
        func count(_ name: String, _ size: Int, _ node: Int? = nil) -> Int {
            (try? HugepageSetup.counter(name, pageSize: size, node: node, in: fs)) ?? 0
        }
        let pools = sizes.map { (size: $0, total: count("nr_hugepages", $0), free: count("free_hugepages", $0)) }
        let reserved = pools.filter { $0.total > 0 }
        let defaultSize = HugepageSetup.defaultPageSize(in: fs) ?? sizes.first ?? (2 << 20)
        let setupFix = "inspect-memory setup --pages \(ByteCount.format(defaultSize)):512   (or: echo 512 > \(HugepageSetup.directory(pageSize: defaultSize, node: nil))/nr_hugepages)"

        // Hugepages reserved.
        if sizes.isEmpty {
            checks.append(DoctorCheck(name: "hugepages", status: .fail, detail: "this kernel offers no hugepage sizes (/sys/kernel/mm/hugepages is empty)",
                                      fix: "boot a kernel built with CONFIG_HUGETLBFS=y"))
        } else if reserved.isEmpty {
            checks.append(DoctorCheck(name: "hugepages", status: .fail, detail: "no hugepages reserved of any size", fix: setupFix))
        } else {
            let list = reserved.map { "\(ByteCount.format($0.size)): \($0.total)" }.joined(separator: ", ")
            checks.append(DoctorCheck(name: "hugepages", status: .ok, detail: "reserved \(list)", fix: nil))
        }

        // Hugepages free.
        if !reserved.isEmpty {
            let list = reserved.map { "\(ByteCount.format($0.size)): \($0.free) of \($0.total)" }.joined(separator: ", ")
            if reserved.allSatisfy({ $0.free == 0 }) {
                let s = reserved[0]
                checks.append(DoctorCheck(name: "hugepages-free", status: .fail, detail: "every reserved hugepage is in use (\(list))",
                                          fix: "inspect-memory setup --pages \(ByteCount.format(s.size)):\(s.total * 2)   (or free stale files: inspect-memory hugepages --clean)"))
            } else if let s = reserved.first(where: { $0.free == 0 }) {
                checks.append(DoctorCheck(name: "hugepages-free", status: .warn, detail: "no free \(ByteCount.format(s.size)) pages (\(list))",
                                          fix: "inspect-memory setup --pages \(ByteCount.format(s.size)):\(s.total * 2)"))
            } else {
                checks.append(DoctorCheck(name: "hugepages-free", status: .ok, detail: "free \(list)", fix: nil))
            }
        }

        // Mounts.
        let mounts = StaleHugepageFiles.mounts(in: fs)
        for pool in reserved {
            let mounted = mounts.filter { ($0.pageSize ?? defaultSize) == pool.size }
            let name = "mount-\(ByteCount.format(pool.size))"
            if let m = mounted.first {
                checks.append(DoctorCheck(name: name, status: .ok, detail: "hugetlbfs for \(ByteCount.format(pool.size)) pages at \(m.path)", fix: nil))
            } else {
                let dir = pool.size == defaultSize ? "/dev/hugepages" : "/dev/hugepages-\(ByteCount.format(pool.size))"
                checks.append(DoctorCheck(name: name, status: .warn,
                                          detail: "no hugetlbfs mounted for \(ByteCount.format(pool.size)) pages (needed for file-backed and multi-process memory)",
                                          fix: "mkdir -p \(dir) && mount -t hugetlbfs -o pagesize=\(ByteCount.format(pool.size)) nodev \(dir)"))
            }
        }

        // Memlock limit.
        checks.append(memlockCheck(in: fs, neededBytes: reserved.reduce(0) { $0 + $1.total * $1.size }))

        // Physical addresses.
        let visible: Bool
        if fs.root == "/" || fs.root.isEmpty {
            visible = PagemapReader.physicalAddressesVisible()
        } else {
            visible = hasCapability(21, in: fs)  // CAP_SYS_ADMIN
        }
        if visible {
            checks.append(DoctorCheck(name: "physical-addresses", status: .ok, detail: "pagemap shows page frame numbers (CAP_SYS_ADMIN)", fix: nil))
        } else {
            checks.append(DoctorCheck(name: "physical-addresses", status: .warn,
                                      detail: "pagemap hides page frame numbers from this process (no CAP_SYS_ADMIN); physical addresses need root or an IOMMU",
                                      fix: "sudo setcap cap_sys_admin,cap_ipc_lock+ep $(command -v inspect-memory)   (or run as root)"))
        }

        // THP.
        if let thp = fs.textIfPresent("/sys/kernel/mm/transparent_hugepage/enabled"),
           let mode = selectedMode(thp) {
            if mode == "always" {
                checks.append(DoctorCheck(name: "thp", status: .warn,
                                          detail: "transparent hugepages: always (background compaction and khugepaged can stall and move pages)",
                                          fix: "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"))
            } else {
                checks.append(DoctorCheck(name: "thp", status: .ok, detail: "transparent hugepages: \(mode)", fix: nil))
            }
        }

        // IOMMU / VFIO.
        let iommus = fs.list("/sys/class/iommu")
        let groups = fs.list("/sys/kernel/iommu_groups")
        let vfio = fs.exists("/sys/module/vfio") || fs.exists("/dev/vfio")
        if !iommus.isEmpty || !groups.isEmpty {
            let vfioText = vfio ? "vfio loaded" : "vfio not loaded"
            checks.append(DoctorCheck(name: "iommu", status: vfio ? .ok : .warn,
                                      detail: "IOMMU present (\(groups.count) groups), \(vfioText)",
                                      fix: vfio ? nil : "modprobe vfio-pci"))
        } else {
            checks.append(DoctorCheck(name: "iommu", status: .warn,
                                      detail: "no IOMMU: devices need physical addresses (no isolation, no IOVA)",
                                      fix: "add intel_iommu=on iommu=pt (or amd_iommu=on) to the kernel command line and reboot"))
        }

        // Per-node balance.
        if nodes.count > 1 {
            for pool in reserved {
                let perNode = nodes.map { (node: $0, total: count("nr_hugepages", pool.size, $0)) }
                if let empty = perNode.first(where: { $0.total == 0 }) {
                    let list = perNode.map { "node\($0.node)=\($0.total)" }.joined(separator: " ")
                    checks.append(DoctorCheck(name: "numa-\(ByteCount.format(pool.size))", status: .warn,
                                              detail: "\(ByteCount.format(pool.size)) pages unevenly spread (\(list))",
                                              fix: "inspect-memory setup --pages \(ByteCount.format(pool.size)):\(max(1, pool.total / nodes.count)) --node \(empty.node)"))
                } else {
                    checks.append(DoctorCheck(name: "numa-\(ByteCount.format(pool.size))", status: .ok,
                                              detail: perNode.map { "node\($0.node)=\($0.total)" }.joined(separator: " "), fix: nil))
                }
            }
        } else {
            checks.append(DoctorCheck(name: "numa", status: .ok, detail: "\(max(nodes.count, 1)) node: nothing to balance", fix: nil))
        }

        // Stale files.
        let stale = StaleHugepageFiles.find(in: fs)
        if stale.isEmpty {
            checks.append(DoctorCheck(name: "stale-files", status: .ok, detail: "no stale files on hugetlbfs mounts", fix: nil))
        } else {
            let bytes = stale.reduce(0) { $0 + $1.bytes }
            checks.append(DoctorCheck(name: "stale-files", status: .warn,
                                      detail: "\(stale.count) stale file(s) on hugetlbfs pin \(bytes >> 20) MiB of hugepages",
                                      fix: "inspect-memory hugepages --clean"))
        }
        return checks
    }

    /// "always [madvise] never" → "madvise".
    static func selectedMode(_ text: String) -> String? {
        guard let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close else { return nil }
        return String(text[text.index(after: open)..<close])
    }

    /// Whether /proc/self/status `CapEff` has capability bit `bit`.
    static func hasCapability(_ bit: Int, in fs: ProcFileSystem) -> Bool {
        guard let status = fs.textIfPresent("/proc/self/status") else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            if let mask = UInt64(line.dropFirst("CapEff:".count).trimmingWhitespace(), radix: 16) {
                return mask & (1 << UInt64(bit)) != 0
            }
        }
        return false
    }

    /// `Max locked memory` of /proc/self/limits against the reserved hugepage bytes.
    static func memlockCheck(in fs: ProcFileSystem, neededBytes: Int) -> DoctorCheck {
        let fix = "ulimit -l unlimited   (persistently: '* - memlock unlimited' in /etc/security/limits.conf, or LimitMEMLOCK=infinity for a systemd service)"
        guard let limits = fs.textIfPresent("/proc/self/limits"),
              let line = limits.split(separator: "\n").first(where: { $0.hasPrefix("Max locked memory") }) else {
            return DoctorCheck(name: "memlock", status: .warn, detail: "cannot read /proc/self/limits", fix: fix)
        }
        let fields = line.dropFirst("Max locked memory".count).split(separator: " ")
        guard let soft = fields.first else {
            return DoctorCheck(name: "memlock", status: .warn, detail: "cannot parse Max locked memory", fix: fix)
        }
        if soft == "unlimited" {
            return DoctorCheck(name: "memlock", status: .ok, detail: "memlock limit unlimited", fix: nil)
        }
        let bytes = Int(soft) ?? 0
        if hasCapability(14, in: fs) {  // CAP_IPC_LOCK ignores the limit
            return DoctorCheck(name: "memlock", status: .ok, detail: "memlock limit \(ByteCount.format(bytes)), but CAP_IPC_LOCK lifts it", fix: nil)
        }
        if bytes >= neededBytes && neededBytes > 0 {
            return DoctorCheck(name: "memlock", status: .ok, detail: "memlock limit \(ByteCount.format(bytes)) covers the \(ByteCount.format(neededBytes)) reserved", fix: nil)
        }
        return DoctorCheck(name: "memlock", status: .warn,
                           detail: "memlock limit \(ByteCount.format(bytes)) is below the \(ByteCount.format(neededBytes)) of reserved hugepages", fix: fix)
    }
}
