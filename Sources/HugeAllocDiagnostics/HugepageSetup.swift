import HugeAlloc

/// A request for a hugepage pool of one size: "2M:512".
package struct HugepageRequest: Equatable, Sendable {
    package var pageSize: Int
    package var count: Int

    package init(pageSize: Int, count: Int) {
        self.pageSize = pageSize
        self.count = count
    }
}

/// What the kernel granted for one ``HugepageRequest``.
package struct HugepageGrant: Equatable, Sendable {
    package var pageSize: Int
    /// The node the pool belongs to, nil for the system-wide pool.
    package var node: Int?
    /// The pool size before the change.
    package var previous: Int
    package var requested: Int
    /// The pool size the kernel reports after the change.
    package var granted: Int

    package var isComplete: Bool { granted >= requested }
}

/// Sizing the hugepage pools through sysfs and mounting hugetlbfs, like
/// `dpdk-hugepages.py --setup`.
package enum HugepageSetup {
    /// The hugepage sizes this kernel offers (/sys/kernel/mm/hugepages, read
    /// by the inventory), ascending.
    package static func availableSizes(in fs: KernelFiles = .live) -> [Int] {
        HugepagePoolDirectory.offeredSizes(in: fs).map(\.bytes)
    }

    /// The NUMA nodes (the inventory's topology), ascending.
    package static func nodes(in fs: KernelFiles = .live) -> [Int] {
        ((try? NUMATopology.read(root: fs.root))?.nodes.map(\.id) ?? []).sorted()
    }

    /// Reads one counter of a pool ("nr_hugepages", "free_hugepages", "surplus_hugepages", ...).
    package static func counter(_ name: String, pageSize: Int, node: Int?, in fs: KernelFiles = .live) throws(DiagnosticsError) -> Int {
        guard let size = PageSize(rawValue: pageSize) else {
            throw .unsupportedPageSize(UnsupportedPageSize(requested: pageSize, offered: HugepagePoolDirectory.offeredSizes(in: fs)))
        }
        do {
            return try fs.integer(HugepagePoolDirectory(size, node: node).kernelPath + "/" + name)
        } catch {
            throw DiagnosticsError(error)
        }
    }

    /// Parses "2M:512,1G:2": each size must be one this kernel offers, each
    /// count a positive number whose pages fit in the machine's memory
    /// (MemTotal of /proc/meminfo).
    package static func parseRequests(_ text: String, in fs: KernelFiles = .live) throws(HugepageRequestError) -> [HugepageRequest] {
        let sizes = availableSizes(in: fs)
        let memTotal = memoryTotal(in: fs)
        var result: [HugepageRequest] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw .malformed(String(item)) }
            guard let size = ByteCount.parse(String(parts[0])), sizes.contains(size) else {
                throw .unsupportedSize(String(parts[0]), available: sizes)
            }
            guard let count = Int(parts[1].trimmingWhitespace()) else { throw .badCount(String(parts[1]), reason: "not a number") }
            guard count > 0 else { throw .badCount(String(parts[1]), reason: "must be at least 1") }
            if let memTotal {
                let (bytes, overflow) = count.multipliedReportingOverflow(by: size)
                if overflow || bytes > memTotal {
                    throw .badCount(String(parts[1]), reason: "\(count) × \(ByteCount.format(size)) exceeds this machine's \(memTotal >> 20) MiB of memory")
                }
            }
            guard !result.contains(where: { $0.pageSize == size }) else { throw .malformed("\(item) (size given twice)") }
            result.append(HugepageRequest(pageSize: size, count: count))
        }
        return result
    }

    /// MemTotal from /proc/meminfo in bytes.
    static func memoryTotal(in fs: KernelFiles) -> Int? {
        meminfoValue("MemTotal", in: fs)
    }

    static func meminfoValue(_ key: String, in fs: KernelFiles) -> Int? {
        fs.kilobyteField("/proc/meminfo", key: key)
    }

    /// Sets the pool of `request.pageSize` (on `node`, or system-wide) to
    /// `request.count` pages by writing `nr_hugepages` in sysfs, and reads
    /// back what the kernel granted.
    package static func reserve(_ request: HugepageRequest, node: Int?, in fs: KernelFiles = .live) throws(DiagnosticsError) -> HugepageGrant {
        if let node, !nodes(in: fs).contains(node) { throw .noSuchNode(UnknownNode(node: node, available: nodes(in: fs))) }
        let offered = HugepagePoolDirectory.offeredSizes(in: fs)
        guard let size = PageSize(rawValue: request.pageSize), offered.contains(size) else {
            throw .unsupportedPageSize(UnsupportedPageSize(requested: request.pageSize, offered: offered))
        }
        let previous = try counter("nr_hugepages", pageSize: request.pageSize, node: node, in: fs)
        do {
            try Sys.writeFile(fs.path(HugepagePoolDirectory(size, node: node).countFile), "\(request.count)\n")
        } catch {
            // The kernel answers a partial grant with success; a failure is a refusal.
            throw .systemCall(error)
        }
        let granted = try counter("nr_hugepages", pageSize: request.pageSize, node: node, in: fs)
        return HugepageGrant(pageSize: request.pageSize, node: node, previous: previous,
                             requested: request.count, granted: granted)
    }

    /// Mounts hugetlbfs with `pageSize` at `path` (creating the directory),
    /// unless a hugetlbfs of that size is already mounted there. Returns
    /// whether it mounted now. Calls `mount(2)`.
    package static func mount(at path: String, pageSize: Int, in fs: KernelFiles = .live) throws(DiagnosticsError) -> Bool {
        if StaleHugepageFiles.mounts(in: fs).contains(where: { $0.path == path && $0.pageSize.bytes == pageSize }) {
            return false
        }
        do {
            try Sys.makeDirectory(fs.path(path))
            try Sys.mountHugetlbfs(at: fs.path(path), pageSize: pageSize)
        } catch {
            throw .systemCall(error)
        }
        return true
    }

    /// Creates a directory below `fs`'s root (an existing one is fine). Calls `mkdir(2)`.
    package static func makeDirectory(_ path: String, in fs: KernelFiles = .live) throws(DiagnosticsError) {
        do {
            try Sys.makeDirectory(fs.path(path))
        } catch {
            throw .systemCall(error)
        }
    }

    /// The default hugepage size (Hugepagesize of /proc/meminfo).
    package static func defaultPageSize(in fs: KernelFiles = .live) -> Int? {
        ((try? HugepagePoolDirectory.defaultSize(in: fs)) ?? nil)?.bytes
    }
}

/// Why a "2M:512,1G:2" page request was rejected (a usage error).
package enum HugepageRequestError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case unsupportedSize(String, available: [Int])
    case badCount(String, reason: String)

    package var description: String {
        switch self {
        case .malformed(let item):
            return "malformed page request \"\(item)\": expected SIZE:COUNT such as 2M:512 or 1G:2"
        case .unsupportedSize(let size, let available):
            let list = available.map { ByteCount.format($0) }.joined(separator: ", ")
            return "unknown or unsupported page size \"\(size)\"; this kernel offers \(list.isEmpty ? "none" : list)"
        case .badCount(let count, let reason):
            return "bad page count \"\(count)\": \(reason)"
        }
    }
}
