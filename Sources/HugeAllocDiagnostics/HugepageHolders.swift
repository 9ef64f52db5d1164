import HugeAlloc

/// A process that maps hugetlb pages of one size.
package struct HugepageHolder: Equatable, Sendable {
    package var pid: Int32
    /// The command name (/proc/PID/comm).
    package var command: String
    /// The hugepage size in bytes.
    package var pageSize: Int
    /// Hugetlb bytes the process maps (`Private_Hugetlb` + `Shared_Hugetlb`).
    package var bytes: Int
}

/// Every process that maps hugetlb pages.
package enum HugepageHolders {
    /// Scans /proc/*/smaps below `fs`'s root and sums `Private_Hugetlb` and
    /// `Shared_Hugetlb` per process and page size. Processes that exit during
    /// the scan or whose smaps cannot be read are left out. A process whose
    /// /proc/PID/smaps_rollup shows no hugetlb bytes is skipped without
    /// reading its smaps (a compiler's smaps runs to megabytes).
    package static func scan(in fs: KernelFiles = .live) -> [HugepageHolder] {
        var result: [HugepageHolder] = []
        for pid in fs.processIDs() {
            if let rollup = fs.textIfReadable("/proc/\(pid)/smaps_rollup"), !mapsHugetlb(rollup: rollup) { continue }
            guard let smaps = fs.textIfReadable("/proc/\(pid)/smaps"),
                  let mappings = try? ProcessMemoryMap.parseSmaps(smaps) else { continue }
            var perSize: [Int: Int] = [:]
            var overflow = false
            for m in mappings where m.hugetlbBytes > 0 {
                let (sum, over) = perSize[m.pageSize, default: 0].addingReportingOverflow(m.hugetlbBytes)
                perSize[m.pageSize] = sum
                overflow = overflow || over
            }
            // No kernel holds 2^63 bytes: such an smaps is not the kernel's; leave the process out.
            if overflow { continue }
            let command = fs.command(of: pid) ?? "?"
            for (size, bytes) in perSize.sorted(by: { $0.key < $1.key }) {
                result.append(HugepageHolder(pid: pid, command: command, pageSize: size, bytes: bytes))
            }
        }
        return result
    }

    /// Whether an smaps_rollup text counts any hugetlb bytes (or cannot be
    /// read as one: then the full smaps decides).
    static func mapsHugetlb(rollup: String) -> Bool {
        var found = false
        for line in rollup.split(separator: "\n") {
            guard let (name, bytes) = KernelText.kilobyteLine(line) else { continue }
            if name == "Private_Hugetlb" || name == "Shared_Hugetlb" {
                found = true
                if bytes > 0 { return true }
            }
        }
        return !found
    }
}
