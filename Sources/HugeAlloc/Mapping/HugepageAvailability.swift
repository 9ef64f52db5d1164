import CHugetlbfs

#if canImport(Glibc)
import Glibc
#endif

/// The few hugepage facts the mapping layer checks before it maps: which
/// sizes the kernel offers, how many pages of a size are free, where a
/// hugetlbfs mount of a size is. Reads /sys/kernel/mm/hugepages and
/// /proc/mounts; libhugetlbfs finds mounts. (The full picture is the
/// inventory layer's.)
enum HugepageAvailability {
    static let sysfs = "/sys/kernel/mm/hugepages"

    /// Hugepage sizes offered by the kernel, ascending.
    static func offeredSizes() -> [PageSize] {
        guard let dir = unsafe opendir(sysfs) else { return [] }
        defer { unsafe closedir(dir) }
        var sizes: [PageSize] = []
        while let entry = unsafe readdir(dir) {
            let name = unsafe withUnsafeBytes(of: entry.pointee.d_name) { raw in
                unsafe String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
            }
            if name.hasPrefix("hugepages-"), name.hasSuffix("kB"),
               let kb = Int(name.dropFirst("hugepages-".count).dropLast(2)),
               let size = PageSize(rawValue: kb * 1024) {
                sizes.append(size)
            }
        }
        return sizes.sorted()
    }

    static func directory(_ size: PageSize, node: Int? = nil) -> String {
        let leaf = "hugepages-\(size.bytes / 1024)kB"
        if let node { return "/sys/devices/system/node/node\(node)/hugepages/\(leaf)" }
        return "\(sysfs)/\(leaf)"
    }

    static func readCount(_ path: String) -> Int? {
        guard let text = try? Sys.readText(atPath: path) else { return nil }
        return Int(text.trimmingWhitespace())
    }

    /// Pages of `size` that a new mapping can still get: free minus those
    /// reserved by existing mappings but not yet faulted.
    static func available(_ size: PageSize) -> (available: Int, total: Int)? {
        let dir = directory(size)
        guard let free = readCount("\(dir)/free_hugepages"),
              let reserved = readCount("\(dir)/resv_hugepages"),
              let total = readCount("\(dir)/nr_hugepages") else { return nil }
        return (max(0, free - reserved), total)
    }

    /// The command that raises the system-wide pool so `needed` more pages are free.
    static func reserveCommand(_ size: PageSize, needed: Int, available: Int, total: Int) -> String {
        "echo \(total + needed - available) > \(directory(size))/nr_hugepages"
    }

    /// A hugetlbfs mount of page size `size`: libhugetlbfs first, then /proc/mounts
    /// (libhugetlbfs reads the mount table once, when the process starts).
    static func mount(for size: PageSize) -> String? {
        if let path = unsafe hugetlbfs_find_path_for_size(size.bytes) {
            return unsafe String(cString: path)
        }
        guard let mounts = try? Sys.readText(atPath: "/proc/mounts") else { return nil }
        let defaultSize = defaultHugepageSize()
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 4, fields[2] == "hugetlbfs" else { continue }
            var pageSize = defaultSize
            for option in fields[3].split(separator: ",") where option.hasPrefix("pagesize=") {
                pageSize = PageSize(parsing: String(option.dropFirst("pagesize=".count)))
            }
            if pageSize == size { return String(fields[1]).replacingOctalEscapes() }
        }
        return nil
    }

    /// The default hugepage size (/proc/meminfo Hugepagesize).
    static func defaultHugepageSize() -> PageSize? {
        guard let meminfo = try? Sys.readText(atPath: "/proc/meminfo") else { return nil }
        for line in meminfo.split(separator: "\n") where line.hasPrefix("Hugepagesize:") {
            let kb = line.split(separator: " ").dropFirst().first.flatMap { Int($0) }
            return kb.flatMap { PageSize(rawValue: $0 * 1024) }
        }
        return nil
    }

    /// Bytes this process has locked already (/proc/self/status VmLck).
    static func lockedBytes() -> Int {
        guard let status = try? Sys.readText(atPath: "/proc/self/status") else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmLck:") {
            return (line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0) * 1024
        }
        return 0
    }

    /// Whether CAP_IPC_LOCK is effective (it lifts RLIMIT_MEMLOCK).
    static func hasIPCLock() -> Bool {
        guard let status = try? Sys.readText(atPath: "/proc/self/status") else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            let hex = line.split(separator: "\t").last.map(String.init) ?? ""
            return (UInt64(hex.trimmingWhitespace(), radix: 16) ?? 0) & (1 << 14) != 0
        }
        return false
    }
}

extension String {
    /// /proc/mounts escapes space, tab, newline and backslash as \ooo.
    func replacingOctalEscapes() -> String {
        guard contains("\\") else { return self }
        var out = ""
        var chars = Substring(self)
        while let c = chars.first {
            chars.removeFirst()
            if c == "\\", chars.count >= 3, let code = UInt8(chars.prefix(3), radix: 8) {
                out.append(Character(Unicode.Scalar(code)))
                chars.removeFirst(3)
            } else {
                out.append(c)
            }
        }
        return out
    }
}
