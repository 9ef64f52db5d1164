import HugeAlloc

/// One mapping of a process, as /proc/PID/smaps and /proc/PID/numa_maps describe it.
package struct ProcessMapping: Equatable, Sendable {
    /// First virtual address of the mapping.
    package var start: UInt
    /// One past the last virtual address.
    package var end: UInt
    /// "rw-p" and the like.
    package var permissions: String
    /// The mapped file, "[heap]", "[stack]", or nil for anonymous memory.
    package var path: String?
    /// The page size the kernel backs the mapping with (`KernelPageSize`).
    package var pageSize: Int
    /// Resident bytes (`Rss`).
    package var residentBytes: Int
    /// Bytes of hugetlb pages mapped (`Private_Hugetlb` + `Shared_Hugetlb`).
    package var hugetlbBytes: Int
    /// Bytes of transparent hugepages (`AnonHugePages`).
    package var transparentHugeBytes: Int
    /// Bytes locked in memory (`Locked`).
    package var lockedBytes: Int
    /// The mapping flags (`VmFlags`: "rd", "wr", "lo", "ht", ...).
    package var flags: [String]
    /// NUMA nodes that hold the mapping's pages, from numa_maps `N<node>=` entries.
    package var nodes: [Int]

    /// Length in bytes.
    package var bytes: Int { Int(end - start) }
    /// A hugetlb mapping (`VmFlags` `ht`, or a hugepage `KernelPageSize`).
    package var isHugetlb: Bool { flags.contains("ht") || pageSize > Sys.basePageSize }
    /// Locked with `mlock`/`MAP_LOCKED` (`VmFlags` `lo`) or holding locked bytes.
    package var isLocked: Bool { flags.contains("lo") || lockedBytes > 0 }
}

/// The memory map of one process.
package enum ProcessMemoryMap {
    /// Reads /proc/PID/smaps and /proc/PID/numa_maps below `fs`'s root.
    ///
    /// Throws ``DiagnosticsError/noSuchProcess(pid:)`` when the process does
    /// not exist and ``DiagnosticsError/unreadable(_:)`` when smaps
    /// cannot be read (another user's process without root).
    package static func read(pid: Int32, in fs: KernelFiles = .live) throws(DiagnosticsError) -> [ProcessMapping] {
        guard pid > 0, fs.exists("/proc/\(pid)") else { throw .noSuchProcess(pid: pid) }
        let smaps: String
        do {
            smaps = try fs.text("/proc/\(pid)/smaps")
        } catch {
            if !fs.exists("/proc/\(pid)") { throw .noSuchProcess(pid: pid) }
            throw DiagnosticsError(error)
        }
        var mappings = try parseSmaps(smaps, path: "/proc/\(pid)/smaps")
        if let numa = fs.textIfReadable("/proc/\(pid)/numa_maps") {
            let nodes = parseNumaMaps(numa)
            for i in mappings.indices {
                mappings[i].nodes = nodes[mappings[i].start] ?? []
            }
        }
        return mappings
    }

    /// Parses the text of an smaps file.
    package static func parseSmaps(_ text: String, path: String = "smaps") throws(DiagnosticsError) -> [ProcessMapping] {
        var result: [ProcessMapping] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if let header = parseHeader(line) {
                result.append(header)
                continue
            }
            guard !result.isEmpty else {
                throw .malformed(MalformedFile(path: path, line: 0, text: String(line), expected: "a mapping line \"start-end perms offset dev inode [path]\""))
            }
            if line.hasPrefix("VmFlags:") {
                result[result.count - 1].flags = line.dropFirst("VmFlags:".count)
                    .split(separator: " ").map(String.init)
                continue
            }
            guard let (name, bytes) = KernelText.kilobyteLine(line) else { continue }
            switch name {
            case "KernelPageSize": result[result.count - 1].pageSize = bytes
            case "Rss": result[result.count - 1].residentBytes = bytes
            case "Private_Hugetlb", "Shared_Hugetlb":
                let (sum, overflow) = result[result.count - 1].hugetlbBytes.addingReportingOverflow(bytes)
                guard !overflow else {
                    throw .malformed(MalformedFile(path: path, line: 0, text: String(line),
                                                   expected: "hugetlb byte counts whose sum fits in 64 bits"))
                }
                result[result.count - 1].hugetlbBytes = sum
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
              end >= start, end - start <= UInt(Int.max), fields[1].count == 4 else { return nil }
        // The kernel pads with spaces up to the path; the path itself may end
        // in spaces (a file named "x "), so only the padding is dropped.
        let path = fields.count == 6 ? String(fields[5].drop(while: { $0 == " " })) : nil
        return ProcessMapping(
            start: start, end: end, permissions: String(fields[1]),
            path: path?.isEmpty == true ? nil : path,
            pageSize: Sys.basePageSize, residentBytes: 0, hugetlbBytes: 0,
            transparentHugeBytes: 0, lockedBytes: 0, flags: [], nodes: [])
    }

    /// Parses numa_maps: start address → nodes holding pages (`N<node>=<pages>`).
    package static func parseNumaMaps(_ text: String) -> [UInt: [Int]] {
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
