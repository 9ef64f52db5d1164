/// One hugepage pool's directory in sysfs: the system-wide pool of a size
/// (/sys/kernel/mm/hugepages/hugepages-<kB>kB) or one NUMA node's share of it
/// (/sys/devices/system/node/nodeN/hugepages/hugepages-<kB>kB).
///
/// The one place that builds these paths, reads their counters and writes
/// the "reserve more" command every shortage error shows.
package struct HugepagePoolDirectory: Hashable, Sendable {
    package var pageSize: PageSize
    /// The node, or nil for the system-wide pool.
    package var node: Int?

    package init(_ pageSize: PageSize, node: Int? = nil) {
        self.pageSize = pageSize
        self.node = node
    }

    /// The system-wide pools' parent directory.
    package static let systemDirectory = "/sys/kernel/mm/hugepages"

    /// "hugepages-2048kB".
    package var leaf: String { "hugepages-\(pageSize.bytes >> 10)kB" }

    /// The directory as the kernel names it (below "/").
    package var kernelPath: String {
        if let node { return "/sys/devices/system/node/node\(node)/hugepages/\(leaf)" }
        return "\(Self.systemDirectory)/\(leaf)"
    }

    /// The `nr_hugepages` file an administrator writes to resize the pool.
    package var countFile: String { kernelPath + "/nr_hugepages" }

    /// The pool's counters. The per-node directories have no `resv_hugepages`
    /// or `nr_overcommit_hugepages`; those read as 0 there.
    package struct Counters: Hashable, Sendable {
        /// nr_hugepages.
        package var total: Int
        /// free_hugepages (reserved pages included).
        package var free: Int
        /// resv_hugepages: promised to mappings, not yet faulted in.
        package var reserved: Int
        /// surplus_hugepages.
        package var surplus: Int
        /// nr_overcommit_hugepages.
        package var overcommit: Int
        /// Counter files that held a value below zero as the kernel's
        /// unsigned type (see ``KernelFiles/counter(_:)``), read as 0.
        package var clamped: [String] = []

        /// Pages a new mapping can still get: free minus those reserved.
        package var available: Int { max(0, free - reserved) }
    }

    /// Reads the counters under `files`' root.
    package func counters(in files: KernelFiles = .live) throws(KernelFileError) -> Counters {
        let directory = kernelPath
        let systemWide = node == nil
        var clamped: [String] = []
        func read(_ name: String) throws(KernelFileError) -> Int {
            let counter = try files.counter(directory + "/" + name)
            if counter.clamped { clamped.append(files.path(directory + "/" + name)) }
            return counter.value
        }
        var counters = Counters(
            total: try read("nr_hugepages"),
            free: try read("free_hugepages"),
            reserved: systemWide ? try read("resv_hugepages") : 0,
            surplus: try read("surplus_hugepages"),
            overcommit: systemWide ? try read("nr_overcommit_hugepages") : 0)
        counters.clamped = clamped
        return counters
    }

    /// The command that raises this pool so that `needed` pages are free,
    /// given `free` available of `total`. It never suggests fewer pages than
    /// the pool has now: a shortage that more pages cannot cure (a cgroup
    /// limit, a quota) must not be "fixed" by shrinking the pool.
    package func reserveCommand(needed: Int, free: Int, total: Int) -> String {
        let (sum, overflow) = total.addingReportingOverflow(max(0, needed - free))
        return "echo \(overflow ? total : sum) > \(countFile)"
    }

    /// The hugepage sizes the kernel offers (the size directories of
    /// /sys/kernel/mm/hugepages), ascending.
    package static func offeredSizes(in files: KernelFiles = .live) -> [PageSize] {
        files.entries(systemDirectory).compactMap {
            try? KernelText.hugepageDirectorySize($0, path: files.path(systemDirectory))
        }.sorted()
    }

    /// The default hugepage size (/proc/meminfo `Hugepagesize:`), nil when
    /// the kernel has no hugepages or the value is not a power of two.
    package static func defaultSize(in files: KernelFiles = .live) throws(KernelFileError) -> PageSize? {
        let meminfo = try files.text("/proc/meminfo")
        guard let bytes = try KernelText.meminfoValue(meminfo, key: "Hugepagesize", path: files.path("/proc/meminfo"))
        else { return nil }
        guard let size = PageSize(rawValue: bytes) else {
            throw .malformed(path: files.path("/proc/meminfo"), line: 0, text: "Hugepagesize: \(bytes / 1024) kB",
                             expected: "a power-of-two hugepage size")
        }
        return size
    }
}
