/// This process's hugetlb cgroup limits for one page size: the fault limit
/// (pages faulted in) and, since Linux 5.7, the reservation limit (pages
/// promised at `mmap` time), with what is in use of each.
///
/// Reads /proc/self/cgroup for the process's cgroup, /proc/mounts for where
/// the hugetlb controller is mounted (cgroup v1 with the `hugetlb` option, or
/// the cgroup2 hierarchy), and the controller's files: v1
/// `hugetlb.<size>.{limit_in_bytes,usage_in_bytes,rsvd.limit_in_bytes,rsvd.usage_in_bytes}`,
/// v2 `hugetlb.<size>.{max,current,rsvd.max,rsvd.current}`.
package struct HugetlbCgroup: Hashable, Sendable {
    /// 1 or 2.
    package var version: Int
    /// The cgroup's directory (full path under the files' root).
    package var directory: String
    package var pageSize: PageSize
    /// One limit: the file that sets it, the limit in bytes (nil: none) and
    /// the bytes charged against it.
    package struct Limit: Hashable, Sendable {
        package var file: String
        package var bytes: Int?
        package var usage: Int
    }
    /// Pages faulted in (a shortage is a SIGBUS at the fault).
    package var fault: Limit
    /// Pages reserved at `mmap` (a shortage is `ENOMEM` from `mmap`); nil on
    /// kernels without reservation accounting.
    package var reservation: Limit?

    /// The size as the controller names it: "2MB", "1GB", "64KB".
    package static func sizeName(_ size: PageSize) -> String {
        let bytes = size.bytes
        if bytes >= 1 << 30 { return "\(bytes >> 30)GB" }
        if bytes >= 1 << 20 { return "\(bytes >> 20)MB" }
        return "\(bytes >> 10)KB"
    }

    /// The limits of this process's hugetlb cgroup for `pageSize`, or nil when
    /// no hugetlb controller is mounted (then no cgroup limits hugepages) or
    /// its files cannot be read.
    package static func read(pageSize: PageSize, files: KernelFiles = .live) -> HugetlbCgroup? {
        guard let membership = files.textIfReadable("/proc/self/cgroup"),
              let mounts = files.textIfReadable("/proc/mounts") else { return nil }
        let name = sizeName(pageSize)
        var v1Path: String?, v2Path: String?
        for line in membership.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            if fields[0] == "0" && fields[1].isEmpty { v2Path = String(fields[2]) }
            if fields[1].split(separator: ",").contains("hugetlb") { v1Path = String(fields[2]) }
        }
        for line in mounts.split(separator: "\n") {
            guard let entry = KernelText.mountEntry(line) else { continue }
            if entry.type == "cgroup", let v1Path, entry.options.contains("hugetlb") {
                let directory = files.path(entry.mountPoint + (v1Path == "/" ? "" : v1Path))
                return read(version: 1, directory: directory, pageSize: pageSize, name: name)
            }
            if entry.type == "cgroup2", let v2Path {
                let directory = files.path(entry.mountPoint + (v2Path == "/" ? "" : v2Path))
                if let found = read(version: 2, directory: directory, pageSize: pageSize, name: name) { return found }
            }
        }
        return nil
    }

    private static func read(version: Int, directory: String, pageSize: PageSize, name: String) -> HugetlbCgroup? {
        let direct = KernelFiles(root: directory)
        func value(_ leaf: String) -> Int?? {
            guard let text = direct.textIfReadable(leaf) else { return nil }
            let word = text.trimmingWhitespace()
            if word == "max" { return .some(nil) }
            guard let bytes = Int(word) else { return nil }
            // v1 shows "no limit" as PAGE_COUNTER_MAX pages in bytes (about 2^63).
            return .some(bytes >= 1 << 62 ? nil : bytes)
        }
        let (limitLeaf, usageLeaf, rsvdLimitLeaf, rsvdUsageLeaf) = version == 1
            ? ("hugetlb.\(name).limit_in_bytes", "hugetlb.\(name).usage_in_bytes",
               "hugetlb.\(name).rsvd.limit_in_bytes", "hugetlb.\(name).rsvd.usage_in_bytes")
            : ("hugetlb.\(name).max", "hugetlb.\(name).current", "hugetlb.\(name).rsvd.max", "hugetlb.\(name).rsvd.current")
        guard let faultLimit = value(limitLeaf), let faultUsage = value(usageLeaf) ?? nil else { return nil }
        var reservation: Limit?
        if let limit = value(rsvdLimitLeaf), let usage = value(rsvdUsageLeaf) ?? nil {
            reservation = Limit(file: directory + "/" + rsvdLimitLeaf, bytes: limit, usage: usage)
        }
        return HugetlbCgroup(
            version: version, directory: directory, pageSize: pageSize,
            fault: Limit(file: directory + "/" + limitLeaf, bytes: faultLimit, usage: faultUsage),
            reservation: reservation)
    }

    /// The first limit that `bytes` more of these pages would pass, as a
    /// shortage: the reservation limit first (it refuses the `mmap`), then
    /// the fault limit (it refuses the touch). Nil when both have room.
    package func shortage(adding bytes: Int) -> HugetlbCgroupShortage? {
        for (limit, kind) in [(reservation, HugetlbCgroupShortage.Kind.reservation), (fault, .fault)] {
            guard let limit, let max = limit.bytes else { continue }
            let (total, overflow) = limit.usage.addingReportingOverflow(bytes)
            if overflow || total > max {
                return HugetlbCgroupShortage(pageSize: pageSize, cgroup: directory, kind: kind, limitFile: limit.file,
                                             limit: max, usage: limit.usage, needed: bytes)
            }
        }
        return nil
    }
}

/// A hugetlb cgroup limit that leaves no room for the hugepages asked for,
/// although the system pool may have them free: more pages in the pool would
/// not help, a higher limit would.
public struct HugetlbCgroupShortage: Hashable, Sendable, CustomStringConvertible {
    /// Which of the controller's limits.
    public enum Kind: String, Hashable, Sendable {
        /// Charged at `mmap` (hugetlb.<size>.rsvd.*): the mapping is refused.
        case reservation
        /// Charged at the fault (hugetlb.<size>.limit_in_bytes / .max): the touch gets SIGBUS.
        case fault
    }
    public var pageSize: PageSize
    /// The cgroup's directory.
    public var cgroup: String
    public var kind: Kind
    /// The file that sets the limit.
    public var limitFile: String
    /// The limit, in bytes.
    public var limit: Int
    /// Bytes charged against it now.
    public var usage: Int
    /// Bytes asked for.
    public var needed: Int

    public init(pageSize: PageSize, cgroup: String, kind: Kind, limitFile: String, limit: Int, usage: Int, needed: Int) {
        self.pageSize = pageSize
        self.cgroup = cgroup
        self.kind = kind
        self.limitFile = limitFile
        self.limit = limit
        self.usage = usage
        self.needed = needed
    }

    /// Raises the limit just enough (the pool itself is not the problem).
    public var command: String {
        let (total, overflow) = usage.addingReportingOverflow(needed)
        return "echo \(overflow ? "max" : String(total)) > \(limitFile)"
    }

    public var description: String {
        "the hugetlb cgroup \(cgroup) limits \(pageSize) hugepage \(kind == .reservation ? "reservations" : "faults") "
            + "to \(limit) bytes (\(usage) in use) and \(needed) more bytes were asked for; "
            + "more free hugepages would not help. Raise the limit with: \(command)"
    }
}
