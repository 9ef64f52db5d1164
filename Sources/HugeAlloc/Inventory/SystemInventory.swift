import CHugetlbfs

/// A snapshot of the machine's memory facts: hugepage pools, hugetlbfs
/// mounts, transparent hugepages, memlock limit, capabilities, NUMA nodes,
/// IOMMU groups.
///
/// Every fact is read from the file the kernel publishes it in, under a
/// file-system root: "/" for this machine, a fixture tree in tests. On the
/// live root, libhugetlbfs and libnuma are consulted as well and disagreements
/// with the kernel's files are listed in ``warnings`` (the files win).
///
/// A machine without hugepages, without a hugetlbfs mount or without NUMA
/// is a valid inventory with empty lists, not an error.
public struct SystemInventory: Sendable, Equatable {
    /// The kernel release, from /proc/sys/kernel/osrelease ("6.1.0-18-amd64").
    public var kernelRelease: String
    /// The base page size. No /proc or /sys file states it, so it is
    /// `sysconf(_SC_PAGESIZE)` of the running kernel for every root.
    public var basePageSize: PageSize
    /// The default hugepage size, from /proc/meminfo "Hugepagesize:"; nil
    /// when the kernel has no hugepage support.
    public var defaultHugepageSize: PageSize?
    /// One pool per hugepage size in /sys/kernel/mm/hugepages, ascending.
    public var hugepagePools: [HugepagePool]
    /// The hugetlbfs mounts of /proc/mounts, in file order.
    public var hugetlbfsMounts: [HugetlbfsMount]
    /// /sys/kernel/mm/transparent_hugepage/{enabled,defrag}.
    public var transparentHugepages: TransparentHugepageModes
    /// RLIMIT_MEMLOCK of this process.
    public var memlockLimit: MemlockLimit
    /// Effective capabilities that matter for DMA memory.
    public var capabilities: Capabilities
    /// Whether this process sees physical frame numbers in
    /// /proc/self/pagemap (a real read of a touched page; the kernel reports
    /// PFN 0 without CAP_SYS_ADMIN). Nil for fixture roots: it is a property
    /// of the running process, which no file of a fixture tree can describe.
    public var physicalAddressesVisible: Bool?
    /// NUMA nodes, their CPUs, memory, distances and hugepage shares.
    public var numa: NUMATopology
    /// IOMMU groups and VFIO.
    public var iommu: IOMMUSummary
    /// Disagreements between libhugetlbfs or libnuma and the kernel's own
    /// files (live root only); empty when everything agrees.
    public var warnings: [String]

    /// Reads the inventory under `root` ("/" for this machine).
    ///
    /// Reads /proc/sys/kernel/osrelease, /proc/meminfo,
    /// /sys/kernel/mm/hugepages, /sys/devices/system/node, /proc/mounts,
    /// /sys/kernel/mm/transparent_hugepage, /proc/self/status,
    /// /sys/kernel/iommu_groups and /dev/vfio. Live, it also calls
    /// libhugetlbfs `gethugepagesizes` and `hugetlbfs_find_path_for_size`,
    /// libnuma, `getrlimit(RLIMIT_MEMLOCK)` and reads /proc/self/pagemap;
    /// for a fixture root the memlock limit comes from `<root>/proc/self/limits`.
    public static func read(root: String = "/") throws(InventoryError) -> SystemInventory {
        let files = KernelFiles(root: root)
        var liveMemlock: MemlockLimit?
        if files.isLive {
            do {
                let limit = try Sys.memlockLimit()
                liveMemlock = MemlockLimit(soft: limit.soft, hard: limit.hard)
            } catch {
                throw .systemCall(error)
            }
        }
        do {
            return try read(files, liveMemlock: liveMemlock)
        } catch {
            throw InventoryError(error)
        }
    }

    /// The inventory under `files`' root; `liveMemlock` is `getrlimit`'s answer on the live root.
    static func read(_ files: KernelFiles, liveMemlock: MemlockLimit?) throws(KernelFileError) -> SystemInventory {
        var warnings: [String] = []

        let kernel = try files.text("proc/sys/kernel/osrelease").trimmingWhitespace()
        let defaultSize = try HugepagePoolDirectory.defaultSize(in: files)

        let pools = try readPools(files, warnings: &warnings)
        if let defaultSize, !pools.isEmpty, !pools.contains(where: { $0.pageSize == defaultSize }) {
            warnings.append("/proc/meminfo Hugepagesize \(defaultSize) has no directory in /sys/kernel/mm/hugepages")
        }
        let mounts = try readMounts(files, defaultSize: defaultSize)
        if files.isLive { crossCheckMounts(mounts, pools: pools, warnings: &warnings) }

        let thpDirectory = "sys/kernel/mm/transparent_hugepage"
        func mode(_ name: String) throws(KernelFileError) -> String? {
            guard let text = try files.textIfPresent("\(thpDirectory)/\(name)") else { return nil }
            return try KernelText.bracketedChoice(text, path: files.path("\(thpDirectory)/\(name)"))
        }
        let thp = TransparentHugepageModes(enabled: try mode("enabled"), defrag: try mode("defrag"))

        let numa = try NUMATopology.read(files, warnings: &warnings)
        let iommuGroups = try files.entriesIfPresent("sys/kernel/iommu_groups")?.count ?? 0
        let memlock: MemlockLimit
        if let liveMemlock { memlock = liveMemlock } else { memlock = try readMemlock(files) }

        return SystemInventory(
            kernelRelease: String(kernel),
            basePageSize: .base,
            defaultHugepageSize: defaultSize,
            hugepagePools: pools,
            hugetlbfsMounts: mounts,
            transparentHugepages: thp,
            memlockLimit: memlock,
            capabilities: try readCapabilities(files),
            physicalAddressesVisible: files.isLive ? PagemapReader.physicalAddressesVisible() : nil,
            numa: numa,
            iommu: IOMMUSummary(groups: iommuGroups, vfio: files.exists("dev/vfio")),
            warnings: warnings)
    }

    /// The pool of one size, if the kernel has it.
    public func pool(_ size: PageSize) -> HugepagePool? {
        hugepagePools.first { $0.pageSize == size }
    }

    /// The hugetlbfs mounts whose page size is `size`.
    public func mounts(for size: PageSize) -> [HugetlbfsMount] {
        hugetlbfsMounts.filter { $0.pageSize == size }
    }

    /// Each NUMA node's share of the pool of `size`, by node id.
    public func nodeCounts(for size: PageSize) -> [(node: Int, counts: NodeHugepageCounts)] {
        numa.nodes.compactMap { node in
            node.hugepages.first { $0.pageSize == size }.map { (node.id, $0) }
        }
    }
}

// MARK: - value types

/// One hugepage pool: /sys/kernel/mm/hugepages/hugepages-<size>kB.
public struct HugepagePool: Sendable, Equatable {
    public var pageSize: PageSize
    /// nr_hugepages: pages in the pool, persistent and surplus.
    public var total: Int
    /// free_hugepages: pages not faulted in (reserved ones included).
    public var free: Int
    /// resv_hugepages: pages promised to mappings but not yet faulted in.
    public var reserved: Int
    /// surplus_hugepages: pages above nr_hugepages taken from overcommit.
    public var surplus: Int
    /// nr_overcommit_hugepages: how many surplus pages the kernel may create.
    public var overcommit: Int

    public init(pageSize: PageSize, total: Int, free: Int, reserved: Int, surplus: Int, overcommit: Int) {
        self.pageSize = pageSize
        self.total = total
        self.free = free
        self.reserved = reserved
        self.surplus = surplus
        self.overcommit = overcommit
    }
}

/// A hugetlbfs mount from /proc/mounts.
public struct HugetlbfsMount: Sendable, Equatable {
    /// The mount point, with /proc/mounts escapes ("\040") undone.
    public var path: String
    /// The `pagesize=` mount option, or the default hugepage size without it.
    public var pageSize: PageSize

    public init(path: String, pageSize: PageSize) {
        self.path = path
        self.pageSize = pageSize
    }
}

/// The bracketed words of /sys/kernel/mm/transparent_hugepage/{enabled,defrag};
/// nil when the kernel has no transparent hugepages.
public struct TransparentHugepageModes: Sendable, Equatable {
    public var enabled: String?
    public var defrag: String?

    public init(enabled: String?, defrag: String?) {
        self.enabled = enabled
        self.defrag = defrag
    }
}

/// RLIMIT_MEMLOCK in bytes; nil is unlimited.
public struct MemlockLimit: Sendable, Equatable {
    public var soft: Int?
    public var hard: Int?

    public init(soft: Int?, hard: Int?) {
        self.soft = soft
        self.hard = hard
    }
}

/// Effective capabilities (CapEff of /proc/self/status).
public struct Capabilities: Sendable, Equatable {
    /// CAP_SYS_ADMIN (bit 21): needed to see physical frame numbers in pagemap.
    public var sysAdmin: Bool
    /// CAP_IPC_LOCK (bit 14): lifts RLIMIT_MEMLOCK for mlock and SHM_HUGETLB.
    public var ipcLock: Bool

    public init(sysAdmin: Bool, ipcLock: Bool) {
        self.sysAdmin = sysAdmin
        self.ipcLock = ipcLock
    }

    static let sysAdminBit = 21
    static let ipcLockBit = 14
}

/// IOMMU groups (/sys/kernel/iommu_groups) and VFIO (/dev/vfio).
public struct IOMMUSummary: Sendable, Equatable {
    /// Entries of /sys/kernel/iommu_groups; 0 without an IOMMU.
    public var groups: Int
    /// Whether /dev/vfio exists.
    public var vfio: Bool

    public init(groups: Int, vfio: Bool) {
        self.groups = groups
        self.vfio = vfio
    }
}

// MARK: - readers

extension SystemInventory {
    /// The pools of /sys/kernel/mm/hugepages; live, the sizes are
    /// cross-checked with libhugetlbfs `gethugepagesizes`.
    static func readPools(_ files: KernelFiles, warnings: inout [String]) throws(KernelFileError) -> [HugepagePool] {
        var pools: [HugepagePool] = []
        for name in try files.entriesIfPresent(HugepagePoolDirectory.systemDirectory) ?? [] {
            let size = try KernelText.hugepageDirectorySize(
                name, path: files.path("\(HugepagePoolDirectory.systemDirectory)/\(name)"))
            let counters = try HugepagePoolDirectory(size).counters(in: files)
            for path in counters.clamped {
                warnings.append("\(path) read below zero as the kernel's unsigned counter (it does so briefly after "
                                + "a process that registered hugepage memory with io_uring or AF_XDP exits); counted as 0")
            }
            pools.append(HugepagePool(
                pageSize: size, total: counters.total, free: counters.free, reserved: counters.reserved,
                surplus: counters.surplus, overcommit: counters.overcommit))
        }
        pools.sort { $0.pageSize < $1.pageSize }

        if files.isLive {
            var sizes = [Int](repeating: 0, count: 32)
            let count = unsafe sizes.withUnsafeMutableBufferPointer { buffer in
                unsafe gethugepagesizes(buffer.baseAddress, Int32(buffer.count))
            }
            let library = count >= 0 ? sizes.prefix(Int(count)).sorted() : []
            let kernel = pools.map(\.pageSize.bytes)
            if library != kernel {
                warnings.append("libhugetlbfs gethugepagesizes reports \(library.map(ByteCount.format)) "
                                + "but /sys/kernel/mm/hugepages has \(kernel.map(ByteCount.format))")
            }
        }
        return pools
    }

    /// The hugetlbfs lines of /proc/mounts.
    package static func readMounts(_ files: KernelFiles, defaultSize: PageSize?) throws(KernelFileError) -> [HugetlbfsMount] {
        let path = files.path("proc/mounts")
        var mounts: [HugetlbfsMount] = []
        for (number, line) in KernelText.lines(try files.text("proc/mounts")) {
            guard let entry = KernelText.mountEntry(line) else {
                throw .malformed(path: path, line: number, text: String(line),
                                 expected: "\"<device> <mount point> <type> <options> <dump> <pass>\"")
            }
            guard entry.type == "hugetlbfs" else { continue }
            var size = defaultSize
            for option in entry.options where option.hasPrefix("pagesize=") {
                guard let parsed = PageSize(parsing: String(option.dropFirst("pagesize=".count))) else {
                    throw .malformed(path: path, line: number, text: String(line),
                                     expected: "a pagesize= option such as pagesize=2M or pagesize=1G")
                }
                size = parsed
            }
            guard let size else {
                throw .malformed(path: path, line: number, text: String(line),
                                 expected: "a pagesize= option (/proc/meminfo has no Hugepagesize)")
            }
            mounts.append(HugetlbfsMount(path: entry.mountPoint, pageSize: size))
        }
        return mounts
    }

    /// The hugetlbfs mounts under `files`' root now (``readMounts(_:defaultSize:)``
    /// with the default hugepage size of /proc/meminfo); empty when /proc/mounts
    /// cannot be read.
    package static func hugetlbfsMounts(in files: KernelFiles = .live) -> [HugetlbfsMount] {
        (try? readMounts(files, defaultSize: (try? HugepagePoolDirectory.defaultSize(in: files)) ?? nil)) ?? []
    }

    /// Checks libhugetlbfs `hugetlbfs_find_path_for_size` against /proc/mounts.
    static func crossCheckMounts(_ mounts: [HugetlbfsMount], pools: [HugepagePool], warnings: inout [String]) {
        for pool in pools {
            guard let found = unsafe hugetlbfs_find_path_for_size(pool.pageSize.bytes) else { continue }
            let path = unsafe String(cString: found)
            if !mounts.contains(where: { $0.path == path && $0.pageSize == pool.pageSize }) {
                warnings.append("libhugetlbfs finds \(path) for \(pool.pageSize) pages, "
                                + "but /proc/mounts has no hugetlbfs mount there of that page size")
            }
        }
    }

    /// RLIMIT_MEMLOCK: `getrlimit` live, the "Max locked memory" line of
    /// `<root>/proc/self/limits` for a fixture root.
    static func readMemlock(_ files: KernelFiles) throws(KernelFileError) -> MemlockLimit {
        let path = files.path("proc/self/limits")
        let label = "Max locked memory"
        for (number, line) in KernelText.lines(try files.text("proc/self/limits")) where line.hasPrefix(label) {
            let malformed = KernelFileError.malformed(
                path: path, line: number, text: String(line),
                expected: "\"Max locked memory <soft> <hard> bytes\" with numbers or \"unlimited\"")
            let fields = line.dropFirst(label.count).split(whereSeparator: \.isWhitespace)
            guard fields.count >= 2 else { throw malformed }
            var values: [Int?] = []
            for field in fields.prefix(2) {
                if field == "unlimited" {
                    values.append(nil)
                } else if let bytes = Int(field), bytes >= 0 {
                    values.append(bytes)
                } else {
                    throw malformed
                }
            }
            let (soft, hard) = (values[0], values[1])
            return MemlockLimit(soft: soft, hard: hard)
        }
        throw .malformed(path: path, line: 0, text: "", expected: "a \"Max locked memory\" line")
    }

    /// CapEff of /proc/self/status: CAP_SYS_ADMIN and CAP_IPC_LOCK.
    static func readCapabilities(_ files: KernelFiles) throws(KernelFileError) -> Capabilities {
        let mask = try MemlockCheck.effectiveCapabilities(in: files)
        return Capabilities(sysAdmin: mask & (1 << Capabilities.sysAdminBit) != 0,
                            ipcLock: mask & (1 << Capabilities.ipcLockBit) != 0)
    }
}
