import ArgumentParser
import HugeAlloc
import HugeAllocDiagnostics

/// `inspect-memory hugepages`: pools per size and node, mounts, holders and stale files.
struct HugepagesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hugepages",
        abstract: "Hugepage pools per size and node, hugetlbfs mounts, the processes holding hugepages, and stale files.",
        discussion: """
            A stale file is a file on a hugetlbfs mount that pins hugepages while no \
            process has it open (/proc/*/fd) or mapped (/proc/*/maps): what a crashed \
            DPDK application leaves behind. --clean removes those files, never one in use \
            or one it cannot prove unused (it locks each file, asks the kernel for an exclusive \
            lease, and reads /proc again just before the unlink), and reports every file it did \
            not remove with the reason. The search and the clean stay on the hugetlbfs.
            """
    )

    @OptionGroup var options: CommonOptions

    @Flag(help: "Remove stale files on hugetlbfs mounts (never one a process has open, mapped or locked, nor one that cannot be proven unused).")
    var clean = false

    @Option(help: ArgumentHelp("Look for stale files (and clean) on this hugetlbfs mount only.", valueName: "path"))
    var mount: String?

    /// `--mount` as /proc/mounts spells it (no trailing or doubled "/", no symbolic link).
    func mountPoint(_ fs: KernelFiles) -> String? {
        mount.map { HugepageSetup.canonicalPath($0, in: fs) }
    }

    func validate() throws {
        if let mount, !StaleHugepageFiles.mounts(in: options.fs).contains(where: { $0.path == mountPoint(options.fs) }) {
            throw ValidationError("\(mount) is not a hugetlbfs mount point (see /proc/mounts)")
        }
    }

    struct Pool: Encodable {
        var pageSize: Int
        var node: Int?
        var total: Int
        var free: Int
        /// System-wide only: per-node pools have no reservation or overcommit counters.
        var reserved: Int?
        var surplus: Int
        var overcommit: Int?
        enum CodingKeys: String, CodingKey {
            case pageSize = "page_size", node, total, free, reserved, surplus, overcommit
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(pageSize, forKey: .pageSize)
            try c.encode(node, forKey: .node)
            try c.encode(total, forKey: .total)
            try c.encode(free, forKey: .free)
            try c.encode(reserved, forKey: .reserved)
            try c.encode(surplus, forKey: .surplus)
            try c.encode(overcommit, forKey: .overcommit)
        }
    }
    struct Mount: Encodable {
        var path: String
        var pageSize: Int
        enum CodingKeys: String, CodingKey { case path, pageSize = "page_size" }
    }
    struct Holder: Encodable {
        var pid: Int32
        var command: String
        var pageSize: Int
        var bytes: Int
        enum CodingKeys: String, CodingKey { case pid, command, pageSize = "page_size", bytes }
    }
    struct File: Encodable {
        var path: String
        var bytes: Int
    }
    struct Skipped: Encodable {
        var path: String
        var reason: String
    }
    struct NotRemoved: Encodable {
        var path: String
        var bytes: Int
        var reason: String
    }
    struct Report: Encodable {
        var pools: [Pool]
        var mounts: [Mount]
        var holders: [Holder]
        var staleFiles: [File]
        /// Paths the stale-file walk did not enter (another file system mounted there).
        var skipped: [Skipped]
        /// Why the stale files cannot be proven unused (some process could not be read), or null.
        var unprovenReason: String?
        /// With --clean: every file removed, and every file not removed with the reason.
        var removed: [File]?
        var notRemoved: [NotRemoved]?
        /// The stale files as found, with what identifies them (not printed).
        var found: [StaleHugepageFile] = []
        enum CodingKeys: String, CodingKey {
            case pools, mounts, holders, staleFiles = "stale_files", skipped, removed, notRemoved = "not_removed"
            case unprovenReason = "unproven_reason"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(pools, forKey: .pools)
            try c.encode(mounts, forKey: .mounts)
            try c.encode(holders, forKey: .holders)
            try c.encode(staleFiles, forKey: .staleFiles)
            try c.encode(skipped, forKey: .skipped)
            try c.encode(unprovenReason, forKey: .unprovenReason)  // null when every process was read
            try c.encodeIfPresent(removed, forKey: .removed)
            try c.encodeIfPresent(notRemoved, forKey: .notRemoved)
        }
    }

    /// Gathers the report: pools and mounts from the inventory
    /// (``SystemInventory``), holders from /proc/*/smaps, stale files from
    /// the mounts against /proc/*/fd and /proc/*/maps.
    static func report(in fs: KernelFiles, mountPoint: String? = nil) throws -> Report {
        let inventory: SystemInventory
        do {
            inventory = try SystemInventory.read(root: fs.root)
        } catch {
            throw CommandFailure(error.description)
        }
        var pools: [Pool] = []
        for pool in inventory.hugepagePools {
            pools.append(Pool(pageSize: pool.pageSize.bytes, node: nil, total: pool.total, free: pool.free,
                              reserved: pool.reserved, surplus: pool.surplus, overcommit: pool.overcommit))
            for (node, counts) in inventory.nodeCounts(for: pool.pageSize) {
                pools.append(Pool(pageSize: pool.pageSize.bytes, node: node, total: counts.total, free: counts.free,
                                  reserved: nil, surplus: counts.surplus, overcommit: nil))
            }
        }
        let mounts = inventory.hugetlbfsMounts.map { Mount(path: $0.path, pageSize: $0.pageSize.bytes) }
        let holders = HugepageHolders.scan(in: fs).map {
            Holder(pid: $0.pid, command: $0.command, pageSize: $0.pageSize, bytes: $0.bytes)
        }
        let search = StaleHugepageFiles.search(in: fs, mountPoint: mountPoint)
        return Report(pools: pools, mounts: mounts, holders: holders,
                      staleFiles: search.files.map { File(path: $0.path, bytes: $0.bytes) },
                      skipped: search.skipped.map { Skipped(path: $0.path, reason: $0.reason) },
                      unprovenReason: search.unproven, removed: nil, notRemoved: nil, found: search.files)
    }

    func run() throws {
        let fs = options.fs
        let mount = mountPoint(fs)
        var report = try Self.report(in: fs, mountPoint: mount)
        var failures: [NotRemovedFile] = []
        if clean {
            let result = StaleHugepageFiles.clean(report.found, in: fs)
            report.removed = result.removed.map { File(path: $0.path, bytes: $0.bytes) }
            report.notRemoved = result.notRemoved.map {
                NotRemoved(path: $0.file.path, bytes: $0.file.bytes, reason: $0.reason.description)
            }
            failures = result.notRemoved.filter(\.reason.isFailure)
            report.staleFiles = StaleHugepageFiles.find(in: fs, mountPoint: mount).map { File(path: $0.path, bytes: $0.bytes) }
        }
        if options.json {
            try printJSON(report)
        } else {
            printText(report)
        }
        if let first = failures.first {
            let more = failures.count > 1 ? " (and \(failures.count - 1) more; see the report)" : ""
            throw CommandFailure("\(failures.count) stale file(s) not removed: \(first.file.path): \(first.reason)\(more)")
        }
    }

    func printText(_ report: Report) {
        print(table(["SIZE", "NODE", "TOTAL", "FREE", "RESERVED", "SURPLUS", "OVERCOMMIT"], report.pools.map {
            [sizeText($0.pageSize), $0.node.map(String.init) ?? "all", "\($0.total)", "\($0.free)",
             $0.reserved.map(String.init) ?? "-", "\($0.surplus)", $0.overcommit.map(String.init) ?? "-"]
        }))
        print("\nhugetlbfs mounts:")
        print(report.mounts.isEmpty ? "  none" : table(["  PATH", "PAGE SIZE"], report.mounts.map { ["  " + $0.path, sizeText($0.pageSize)] }))
        print("\nprocesses holding hugepages:")
        print(report.holders.isEmpty ? "  none" : table(["  PID", "COMMAND", "PAGE SIZE", "BYTES"], report.holders.map {
            ["  \($0.pid)", $0.command, sizeText($0.pageSize), bytesText($0.bytes)]
        }))
        if let removed = report.removed {
            print("\nremoved stale files:")
            print(removed.isEmpty ? "  none" : table(["  PATH", "BYTES"], removed.map { ["  " + $0.path, bytesText($0.bytes)] }))
        }
        if let notRemoved = report.notRemoved, !notRemoved.isEmpty {
            print("\nnot removed:")
            print(table(["  PATH", "BYTES", "REASON"], notRemoved.map { ["  " + $0.path, bytesText($0.bytes), $0.reason] }))
        }
        print("\nstale files (no process has them open or mapped):")
        print(report.staleFiles.isEmpty ? "  none" : table(["  PATH", "BYTES"], report.staleFiles.map { ["  " + $0.path, bytesText($0.bytes)] }))
        if let reason = report.unprovenReason, !report.staleFiles.isEmpty {
            print("  not proven unused: \(reason)")
        } else if !report.staleFiles.isEmpty && report.removed == nil {
            print("  remove them with: inspect-memory hugepages --clean")
        }
        if !report.skipped.isEmpty {
            print("\nnot searched (not on the hugetlbfs mount):")
            print(table(["  PATH", "REASON"], report.skipped.map { ["  " + $0.path, $0.reason] }))
        }
    }
}
