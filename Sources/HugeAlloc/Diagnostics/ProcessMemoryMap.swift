/// One mapping of a process, as /proc/PID/smaps and /proc/PID/numa_maps describe it.
public struct ProcessMapping: Equatable, Sendable {
    /// First virtual address of the mapping.
    public var start: UInt
    /// One past the last virtual address.
    public var end: UInt
    /// "rw-p" and the like.
    public var permissions: String
    /// The mapped file, "[heap]", "[stack]", or nil for anonymous memory.
    public var path: String?
    /// The page size the kernel backs the mapping with (`KernelPageSize`).
    public var pageSize: Int
    /// Resident bytes (`Rss`).
    public var residentBytes: Int
    /// Bytes of hugetlb pages mapped (`Private_Hugetlb` + `Shared_Hugetlb`).
    public var hugetlbBytes: Int
    /// Bytes of transparent hugepages (`AnonHugePages`).
    public var transparentHugeBytes: Int
    /// Bytes locked in memory (`Locked`).
    public var lockedBytes: Int
    /// The mapping flags (`VmFlags`: "rd", "wr", "lo", "ht", ...).
    public var flags: [String]
    /// NUMA nodes that hold the mapping's pages, from numa_maps `N<node>=` entries.
    public var nodes: [Int]

    /// Length in bytes.
    public var bytes: Int { Int(end - start) }
    /// A hugetlb mapping (`VmFlags` `ht`, or a hugepage `KernelPageSize`).
    public var isHugetlb: Bool { flags.contains("ht") || pageSize > Sys.basePageSize }
    /// Locked with `mlock`/`MAP_LOCKED` (`VmFlags` `lo`) or holding locked bytes.
    public var isLocked: Bool { flags.contains("lo") || lockedBytes > 0 }
}

/// The memory map of one process.
public enum ProcessMemoryMap {
    /// Reads /proc/PID/smaps and /proc/PID/numa_maps below `fs`'s root.
    ///
    /// Throws ``DiagnosticsError/noSuchProcess(pid:)`` when the process does
    /// not exist and ``DiagnosticsError/unreadable(path:_:)`` when smaps
    /// cannot be read (another user's process without root).
    public static func read(pid: Int32, in fs: ProcFileSystem = .live) throws(DiagnosticsError) -> [ProcessMapping] {
        guard pid > 0, fs.exists("/proc/\(pid)") else { throw .noSuchProcess(pid: pid) }
        let smaps: String
        do {
            smaps = try fs.text("/proc/\(pid)/smaps")
        } catch {
            if !fs.exists("/proc/\(pid)") { throw .noSuchProcess(pid: pid) }
            throw error
        }
        var mappings = try parseSmaps(smaps, path: "/proc/\(pid)/smaps")
        if let numa = fs.textIfPresent("/proc/\(pid)/numa_maps") {
            let nodes = parseNumaMaps(numa)
            for i in mappings.indices {
                mappings[i].nodes = nodes[mappings[i].start] ?? []
            }
        }
        return mappings
    }

    /// Parses the text of an smaps file.
    public static func parseSmaps(_ text: String, path: String = "smaps") throws(DiagnosticsError) -> [ProcessMapping] {
        var result: [ProcessMapping] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if let header = parseHeader(line) {
                result.append(header)
                continue
            }
            guard !result.isEmpty else {
                throw .malformed(path: path, detail: "expected a mapping line, found \"\(line)\"")
            }
            if line.hasPrefix("VmFlags:") {
                result[result.count - 1].flags = line.dropFirst("VmFlags:".count)
                    .split(separator: " ").map(String.init)
                continue
            }
            guard let (name, bytes) = parseKilobyteField(line) else { continue }
            switch name {
            case "KernelPageSize": result[result.count - 1].pageSize = bytes
            case "Rss": result[result.count - 1].residentBytes = bytes
            case "Private_Hugetlb", "Shared_Hugetlb": result[result.count - 1].hugetlbBytes += bytes
            case "AnonHugePages": result[result.count - 1].transparentHugeBytes = bytes
            case "Locked": result[result.count - 1].lockedBytes = bytes
            default: break
            }
        }
        return result
    }

    /// "start-end perms offset dev inode [path]" → a mapping with only the header filled in.
    static func parseHeader(_ line: Substring) -> ProcessMapping? {
        let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
        guard fields.count >= 5, let dash = fields[0].firstIndex(of: "-"),
              let start = UInt(fields[0][..<dash], radix: 16),
              let end = UInt(fields[0][fields[0].index(after: dash)...], radix: 16),
              end >= start, fields[1].count == 4 else { return nil }
        let path = fields.count == 6 ? String(fields[5].trimmingWhitespace()) : nil
        return ProcessMapping(
            start: start, end: end, permissions: String(fields[1]),
            path: path?.isEmpty == true ? nil : path,
            pageSize: Sys.basePageSize, residentBytes: 0, hugetlbBytes: 0,
            transparentHugeBytes: 0, lockedBytes: 0, flags: [], nodes: [])
    }

    /// Parses numa_maps: start address → nodes holding pages (`N<node>=<pages>`).
    public static func parseNumaMaps(_ text: String) -> [UInt: [Int]] {
        var result: [UInt: [Int]] = [:]
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let first = fields.first, let start = UInt(first, radix: 16) else { continue }
            var nodes: [Int] = []
            for field in fields.dropFirst() where field.hasPrefix("N") {
                guard let eq = field.firstIndex(of: "="),
                      let node = Int(field[field.index(after: field.startIndex)..<eq]),
                      let pages = Int(field[field.index(after: eq)...]), pages > 0 else { continue }
                nodes.append(node)
            }
            result[start] = nodes.sorted()
        }
        return result
    }
}
