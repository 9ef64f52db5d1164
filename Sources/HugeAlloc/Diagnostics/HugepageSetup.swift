/// A request for a hugepage pool of one size: "2M:512".
public struct HugepageRequest: Equatable, Sendable {
    public var pageSize: Int
    public var count: Int

    public init(pageSize: Int, count: Int) {
        self.pageSize = pageSize
        self.count = count
    }
}

/// What the kernel granted for one ``HugepageRequest``.
public struct HugepageGrant: Equatable, Sendable {
    public var pageSize: Int
    /// The node the pool belongs to, nil for the system-wide pool.
    public var node: Int?
    /// The pool size before the change.
    public var previous: Int
    public var requested: Int
    /// The pool size the kernel reports after the change.
    public var granted: Int

    public var isComplete: Bool { granted >= requested }
}

/// Sizing the hugepage pools through sysfs and mounting hugetlbfs, like
/// `dpdk-hugepages.py --setup`.
public enum HugepageSetup {
    /// The hugepage sizes this kernel offers (/sys/kernel/mm/hugepages, read
    /// by the inventory), ascending.
    public static func availableSizes(in fs: ProcFileSystem = .live) -> [Int] {
        var warnings: [String] = []
        return ((try? SystemInventory.readPools(SystemFiles(root: fs.root), warnings: &warnings)) ?? [])
            .map(\.pageSize.bytes).sorted()
    }

    /// The NUMA nodes (the inventory's topology), ascending.
    public static func nodes(in fs: ProcFileSystem = .live) -> [Int] {
        ((try? NUMATopology.read(root: fs.root))?.nodes.map(\.id) ?? []).sorted()
    }

    /// The sysfs directory of one pool: system-wide or one node's.
    public static func directory(pageSize: Int, node: Int?) -> String {
        let leaf = "hugepages-\(pageSize >> 10)kB"
        if let node { return "/sys/devices/system/node/node\(node)/hugepages/\(leaf)" }
        return "/sys/kernel/mm/hugepages/\(leaf)"
    }

    /// Reads one counter of a pool ("nr_hugepages", "free_hugepages", "surplus_hugepages", ...).
    public static func counter(_ name: String, pageSize: Int, node: Int?, in fs: ProcFileSystem = .live) throws(DiagnosticsError) -> Int {
        let path = directory(pageSize: pageSize, node: node) + "/" + name
        let text = try fs.text(path)
        guard let value = Int(text.trimmingWhitespace()) else {
            throw .malformed(path: path, detail: "expected a number, found \"\(text.trimmingWhitespace())\"")
        }
        return value
    }

    /// Parses "2M:512,1G:2": each size must be one this kernel offers, each
    /// count a positive number whose pages fit in the machine's memory
    /// (MemTotal of /proc/meminfo).
    public static func parseRequests(_ text: String, in fs: ProcFileSystem = .live) throws(HugepageRequestError) -> [HugepageRequest] {
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
    static func memoryTotal(in fs: ProcFileSystem) -> Int? {
        meminfoValue("MemTotal", in: fs)
    }

    static func meminfoValue(_ key: String, in fs: ProcFileSystem) -> Int? {
        let files = SystemFiles(root: fs.root)
        guard let text = try? files.text("proc/meminfo") else { return nil }
        return (try? InventoryParse.meminfoValue(text, key: key, path: files.path("proc/meminfo"))) ?? nil
    }

    /// Sets the pool of `request.pageSize` (on `node`, or system-wide) to
    /// `request.count` pages by writing `nr_hugepages` in sysfs, and reads
    /// back what the kernel granted.
    public static func reserve(_ request: HugepageRequest, node: Int?, in fs: ProcFileSystem = .live) throws(DiagnosticsError) -> HugepageGrant {
        if let node, !nodes(in: fs).contains(node) { throw .noSuchNode(node, available: nodes(in: fs)) }
        guard availableSizes(in: fs).contains(request.pageSize) else {
            throw .unsupportedPageSize(bytes: request.pageSize, available: availableSizes(in: fs))
        }
        let previous = try counter("nr_hugepages", pageSize: request.pageSize, node: node, in: fs)
        let path = directory(pageSize: request.pageSize, node: node) + "/nr_hugepages"
        do {
            try Sys.writeFile(fs.path(path), "\(request.count)\n")
        } catch {
            // The kernel answers a partial grant with success; a failure is a refusal.
            throw .operationFailed(what: "writing \(request.count) to \(path)", error)
        }
        let granted = try counter("nr_hugepages", pageSize: request.pageSize, node: node, in: fs)
        return HugepageGrant(pageSize: request.pageSize, node: node, previous: previous,
                             requested: request.count, granted: granted)
    }

    /// Mounts hugetlbfs with `pageSize` at `path` (creating the directory),
    /// unless a hugetlbfs of that size is already mounted there. Returns
    /// whether it mounted now. Calls `mount(2)`.
    public static func mount(at path: String, pageSize: Int, in fs: ProcFileSystem = .live) throws(DiagnosticsError) -> Bool {
        if StaleHugepageFiles.mounts(in: fs).contains(where: { $0.path == path && $0.pageSize.bytes == pageSize }) {
            return false
        }
        do {
            try Sys.makeDirectory(fs.path(path))
            try Sys.mountHugetlbfs(at: fs.path(path), pageSize: pageSize)
        } catch {
            throw .operationFailed(what: "mounting hugetlbfs (pagesize=\(ByteCount.format(pageSize))) at \(path)", error)
        }
        return true
    }

    /// Creates a directory below `fs`'s root (an existing one is fine). Calls `mkdir(2)`.
    public static func makeDirectory(_ path: String, in fs: ProcFileSystem = .live) throws(DiagnosticsError) {
        do {
            try Sys.makeDirectory(fs.path(path))
        } catch {
            throw .operationFailed(what: "creating \(path)", error)
        }
    }

    /// The default hugepage size (Hugepagesize of /proc/meminfo).
    public static func defaultPageSize(in fs: ProcFileSystem = .live) -> Int? {
        meminfoValue("Hugepagesize", in: fs)
    }
}

/// Why a "2M:512,1G:2" page request was rejected (a usage error).
public enum HugepageRequestError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case unsupportedSize(String, available: [Int])
    case badCount(String, reason: String)

    public var description: String {
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
