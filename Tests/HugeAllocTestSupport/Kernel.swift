import Foundation
import HugeAlloc
import Testing

/// Reads the kernel's files with Foundation, independently of the library's
/// readers, so tests can check the library against them.
public enum Kernel {
    public static func text(_ path: String) throws -> String {
        try String(contentsOfFile: path, encoding: .utf8)
    }

    public static func integer(_ path: String) throws -> Int {
        try #require(Int(text(path).trimmingCharacters(in: .whitespacesAndNewlines)), "\(path) is not an integer")
    }

    /// The integer in `path`, or nil when it is missing or holds none.
    public static func integerIfPresent(_ path: String) -> Int? {
        (try? text(path)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// The number after "key:" in /proc/meminfo (kB values stay in kB).
    public static func meminfo(_ key: String, file: String = "/proc/meminfo") throws -> Int? {
        for line in try text(file).split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0] == key { return Int(parts[1].split(whereSeparator: \.isWhitespace).first ?? "") }
        }
        return nil
    }

    /// The number after "key:" in /proc/self/status, in bytes (VmLck, VmPin, ...).
    public static func statusBytes(_ key: String) -> Int {
        ((try? meminfo(key, file: "/proc/self/status")) ?? nil).map { $0 * 1024 } ?? 0
    }

    public static func directory(_ path: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }

    /// Hugepage sizes in bytes from the names of /sys/kernel/mm/hugepages.
    public static func hugepageSizes() -> [Int] {
        directory("/sys/kernel/mm/hugepages").compactMap { name in
            Int(name.dropFirst("hugepages-".count).dropLast(2)).map { $0 * 1024 }
        }.sorted()
    }

    /// [size in bytes: [total, free, reserved, surplus, overcommit]] of every
    /// pool in /sys/kernel/mm/hugepages.
    public static func pools() throws -> [Int: [Int]] {
        var pools: [Int: [Int]] = [:]
        for size in hugepageSizes() {
            let directory = "/sys/kernel/mm/hugepages/hugepages-\(size / 1024)kB/"
            pools[size] = try ["nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
                               "nr_overcommit_hugepages"].map { try integer(directory + $0) }
        }
        return pools
    }

    /// The hugetlbfs mounts of /proc/mounts, in its order: the path (with
    /// "\\040" read as a space) and the page size of the pagesize= option,
    /// else the default size (Hugepagesize in /proc/meminfo).
    public static func hugetlbfsMounts() throws -> [HugetlbfsMountLine] {
        let defaultSize = try meminfo("Hugepagesize").map { $0 * 1024 }
        return try text("/proc/mounts").split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count > 3, fields[2] == "hugetlbfs" else { return nil }
            let option = fields[3].split(separator: ",").first { $0.hasPrefix("pagesize=") }
            let size = option.map { ByteCount.parse(String($0.dropFirst(9))) } ?? defaultSize
            return HugetlbfsMountLine(path: fields[1].replacingOccurrences(of: "\\040", with: " "), size: size)
        }
    }

    public struct HugetlbfsMountLine: Equatable, Sendable {
        public var path: String
        public var size: Int?
        public init(path: String, size: Int?) { self.path = path; self.size = size }
    }

    /// The NUMA node ids of /sys/devices/system/node.
    public static func nodeIDs() -> [Int] {
        directory("/sys/devices/system/node").compactMap { name in
            name.hasPrefix("node") ? Int(name.dropFirst(4)) : nil
        }.sorted()
    }

    /// Expands "0-3,8" the way the kernel documents cpulist.
    public static func expand(_ list: String) -> [Int] {
        list.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").flatMap { part -> [Int] in
            let bounds = part.split(separator: "-").compactMap { Int($0) }
            return bounds.count == 2 ? Array(bounds[0]...bounds[1]) : bounds
        }
    }

    /// The effective capability mask of this process.
    public static func capEff() throws -> UInt64 {
        let line = try #require(try text("/proc/self/status").split(separator: "\n").first { $0.hasPrefix("CapEff:") })
        return try #require(UInt64(line.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16))
    }

    /// The word /proc/self/pagemap holds for `address` (read with pread),
    /// or nil when it cannot be read.
    public static func pagemapWord(_ address: UInt) -> UInt64? {
        let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var word: UInt64 = 0
        return pread(fd, &word, 8, off_t(address / UInt(getpagesize()) * 8)) == 8 ? word : nil
    }

    /// The physical address of the byte at `address` from /proc/self/pagemap;
    /// nil when the page is not present or its frame number is hidden.
    public static func physicalAddress(_ address: UInt) -> UInt64? {
        guard let word = pagemapWord(address) else { return nil }
        let pfn = word & ((1 << 55) - 1)
        guard word & (1 << 63) != 0, pfn != 0 else { return nil }
        return pfn * UInt64(getpagesize()) + UInt64(address % UInt(getpagesize()))
    }

    /// How many page-table entries map the frame at `physical`
    /// (`/proc/kpagecount`, root only); nil when unreadable.
    public static func mapCount(physical: UInt64) -> Int? {
        let fd = open("/proc/kpagecount", O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var word: UInt64 = 0
        let pfn = physical / UInt64(getpagesize())
        guard pread(fd, &word, 8, off_t(pfn * 8)) == 8 else { return nil }
        return Int(word)
    }
}

/// Reads `kernel` before and after `ours` until the kernel's value held
/// still across the read and `ours`, seen through `view`, agrees with it:
/// other processes move global hugepage counters at any moment. It tries
/// for up to `seconds` (at least five rounds) and then returns the last
/// reading, which the caller's expectation judges, so a real disagreement
/// still fails.
public func stableReading<K: Equatable, O>(
    seconds: Double = 5, _ kernel: () throws -> K, _ ours: () throws -> O, _ view: (O) throws -> K
) throws -> (kernel: K, ours: O) {
    let deadline = Date().addingTimeInterval(seconds)
    var round = 0
    while true {
        let before = try kernel()
        let value = try ours()
        let after = try kernel()
        round += 1
        if before == after, try view(value) == after { return (after, value) }
        if round >= 5, Date() > deadline { return (after, value) }
        usleep(UInt32.random(in: 1_000...20_000))
    }
}
