import ArgumentParser
import HugeAlloc
import HugeAllocDiagnostics

/// `inspect-memory process PID`: the hugepage and locked memory of one process.
struct ProcessCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "process",
        abstract: "The hugepage and locked memory of one process, per mapping, with the physically contiguous runs of its hugepage mappings.",
        discussion: "Reads /proc/PID/smaps, /proc/PID/numa_maps and /proc/PID/pagemap."
    )

    @OptionGroup var options: CommonOptions

    @Argument(help: "The process ID.")
    var pid: Int32

    @Flag(help: "List every mapping, not only hugepage, transparent-hugepage and locked ones.")
    var all = false

    func validate() throws {
        guard pid > 0 else { throw ValidationError("PID must be a positive number, not \(pid)") }
    }

    struct Run: Encodable {
        var virtual: String
        var physical: String
        var bytes: Int
        var pages: Int
    }
    struct Mapping: Encodable {
        var start: String
        var end: String
        var bytes: Int
        var pageSize: Int
        var nodes: [Int]
        var locked: Bool
        var path: String?
        var hugetlbBytes: Int
        var transparentHugeBytes: Int
        var lockedBytes: Int
        var runs: [Run]?
        enum CodingKeys: String, CodingKey {
            case start, end, bytes, pageSize = "page_size", nodes, locked, path
            case hugetlbBytes = "hugetlb_bytes", transparentHugeBytes = "thp_bytes", lockedBytes = "locked_bytes", runs
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(start, forKey: .start)
            try c.encode(end, forKey: .end)
            try c.encode(bytes, forKey: .bytes)
            try c.encode(pageSize, forKey: .pageSize)
            try c.encode(nodes, forKey: .nodes)
            try c.encode(locked, forKey: .locked)
            try c.encode(path, forKey: .path)
            try c.encode(hugetlbBytes, forKey: .hugetlbBytes)
            try c.encode(transparentHugeBytes, forKey: .transparentHugeBytes)
            try c.encode(lockedBytes, forKey: .lockedBytes)
            try c.encodeIfPresent(runs, forKey: .runs)
        }
    }
    struct Report: Encodable {
        var pid: Int32
        var command: String
        var hugetlbBytes: Int
        var lockedBytes: Int
        var mappings: [Mapping]
        enum CodingKeys: String, CodingKey {
            case pid, command, hugetlbBytes = "hugetlb_bytes", lockedBytes = "locked_bytes", mappings
        }
    }

    /// Gathers the report; runs are read from pagemap for hugetlb mappings.
    static func report(pid: Int32, all: Bool, in fs: KernelFiles) throws -> Report {
        let mappings = try ProcessMemoryMap.read(pid: pid, in: fs)
        let shown = mappings.filter { all || $0.isHugetlb || $0.isLocked || $0.transparentHugeBytes > 0 }
        var result: [Mapping] = []
        for m in shown {
            var runs: [Run]?
            if m.isHugetlb {
                // PFNs hidden (no CAP_SYS_ADMIN) leave an empty list rather than failing.
                runs = ((try? ProcessTranslation.runs(of: m, pid: pid, in: fs)) ?? []).map {
                    Run(virtual: hex(m.start + UInt($0.offset)), physical: $0.physical.description, bytes: $0.bytes, pages: $0.pages)
                }
            }
            result.append(Mapping(start: hex(m.start), end: hex(m.end), bytes: m.bytes, pageSize: m.pageSize,
                                  nodes: m.nodes, locked: m.isLocked, path: m.path, hugetlbBytes: m.hugetlbBytes,
                                  transparentHugeBytes: m.transparentHugeBytes, lockedBytes: m.lockedBytes, runs: runs))
        }
        return Report(pid: pid, command: fs.command(of: pid) ?? "?",
                      hugetlbBytes: mappings.reduce(0) { $0 + $1.hugetlbBytes },
                      lockedBytes: mappings.reduce(0) { $0 + $1.lockedBytes }, mappings: result)
    }

    func run() throws {
        let report = try Self.report(pid: pid, all: all, in: options.fs)
        if options.json {
            try printJSON(report)
            return
        }
        print("process \(report.pid) (\(report.command)): hugetlb bytes \(bytesText(report.hugetlbBytes)), locked bytes \(bytesText(report.lockedBytes))")
        if report.mappings.isEmpty {
            print("no hugepage, transparent-hugepage or locked mappings (--all lists every mapping)")
            return
        }
        print(table(["START", "END", "BYTES", "PAGE", "NODES", "LOCKED", "PATH"], report.mappings.map {
            [$0.start, $0.end, "\($0.bytes)", sizeText($0.pageSize),
             $0.nodes.isEmpty ? "-" : $0.nodes.map(String.init).joined(separator: ","),
             $0.locked ? "yes" : "no", $0.path ?? "[anon]"]
        }))
        for m in report.mappings {
            guard let runs = m.runs else { continue }
            let largest = runs.map(\.bytes).max() ?? 0
            print("\nruns of \(m.start)-\(m.end): \(runs.count) physically contiguous run(s), largest \(bytesText(largest))")
            if runs.isEmpty { continue }
            print(table(["  VIRTUAL", "PHYSICAL", "BYTES"], runs.map { ["  " + $0.virtual, $0.physical, bytesText($0.bytes)] }))
        }
    }
}
