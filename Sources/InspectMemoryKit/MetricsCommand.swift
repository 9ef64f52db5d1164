import ArgumentParser
import HugeAlloc
import HugeAllocDiagnostics

/// `inspect-memory metrics`: the hugepage and DMA-memory state in the
/// Prometheus text exposition format, for node_exporter's textfile collector.
struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "The hugepage and DMA-memory state as Prometheus/OpenMetrics text (hugealloc_* gauges).",
        discussion: """
            Pools per size and node, hugetlbfs mounts, hugepage bytes per process, stale files per mount, \
            the memlock limit, and (as root) the largest physically contiguous free run per node and size. \
            For node_exporter's textfile collector, write the output atomically into its directory, e.g. \
            from cron: * * * * * inspect-memory metrics > DIR/hugealloc.prom.$$ && mv DIR/hugealloc.prom.$$ DIR/hugealloc.prom
            """
    )

    /// A directory standing in for "/" (fixture trees in tests).
    @Option(help: .hidden)
    var root: String = "/"

    func run() throws {
        let snapshot: HugepageSnapshot
        do {
            snapshot = try HugepageSnapshot.read(staleFiles: true, contiguity: true, in: KernelFiles(root: root))
        } catch {
            throw CommandFailure("metrics: \(error.description)")
        }
        // The published shared objects are this machine's only: not read for a fixture root.
        let shared = root == "/" ? SharedRegistry.list() : []
        print(Self.exposition(snapshot, shared: shared), terminator: "")
    }

    /// The snapshot as Prometheus text exposition format 0.0.4 (which
    /// OpenMetrics parsers accept too): every family with `# HELP` and
    /// `# TYPE gauge`, names prefixed `hugealloc_`, units in the names.
    static func exposition(_ s: HugepageSnapshot, shared: [SharedRegistry.Entry] = []) -> String {
        var out = MetricsText()
        out.family("hugealloc_hugepage_size_bytes", "Bytes in one hugepage of the size.",
                   s.pools.map { (["size": "\($0.pageSize)"], Double($0.pageSize.bytes)) })
        // Per node; a machine without node directories is one node, 0.
        func perNode(_ value: (NodeHugepageCounts) -> Int, _ systemWide: (HugepagePool) -> Int) -> [([String: String], Double)] {
            s.pools.flatMap { pool -> [([String: String], Double)] in
                let nodes = s.nodePools.filter { $0.counts.pageSize == pool.pageSize }
                if nodes.isEmpty { return [(["size": "\(pool.pageSize)", "node": "0"], Double(systemWide(pool)))] }
                return nodes.map { (["size": "\(pool.pageSize)", "node": "\($0.node)"], Double(value($0.counts))) }
            }
        }
        out.family("hugealloc_hugepages_pool_pages", "Hugepages in the pool (nr_hugepages) per size and NUMA node.",
                   perNode(\.total, \.total))
        out.family("hugealloc_hugepages_free_pages", "Free hugepages (free_hugepages) per size and NUMA node; reserved ones included.",
                   perNode(\.free, \.free))
        out.family("hugealloc_hugepages_surplus_pages", "Surplus hugepages (surplus_hugepages, beyond nr_hugepages) per size and NUMA node.",
                   perNode(\.surplus, \.surplus))
        out.family("hugealloc_hugepages_reserved_pages", "Free hugepages promised to mappings not yet faulted (resv_hugepages), per size; the kernel keeps no per-node count.",
                   s.pools.map { (["size": "\($0.pageSize)"], Double($0.reserved)) })
        out.family("hugealloc_hugepages_overcommit_limit_pages", "Surplus hugepages the kernel may allocate (nr_overcommit_hugepages), per size.",
                   s.pools.map { (["size": "\($0.pageSize)"], Double($0.overcommit)) })
        out.family("hugealloc_hugetlbfs_mount_info", "A hugetlbfs mount (/proc/mounts) and its page size; always 1.",
                   s.mounts.map { (["mountpoint": $0.path, "size": "\($0.pageSize)"], 1) })
        out.family("hugealloc_process_hugepages_bytes", "Hugetlb bytes a process maps (Private_Hugetlb + Shared_Hugetlb in /proc/PID/smaps), per page size.",
                   s.holders.map { (["pid": "\($0.pid)", "command": $0.command, "size": PageSize(rawValue: $0.pageSize).map { "\($0)" } ?? "\($0.pageSize)"], Double($0.bytes)) })
        out.family("hugealloc_stale_hugetlbfs_files", "Files on a hugetlbfs mount that no process has open or mapped (inspect-memory hugepages --clean removes them).",
                   s.staleFiles.map { (["mountpoint": $0.mount], Double($0.files)) })
        out.family("hugealloc_stale_hugetlbfs_files_bytes", "Hugepage bytes pinned by the stale files of a hugetlbfs mount.",
                   s.staleFiles.map { (["mountpoint": $0.mount], Double($0.bytes)) })
        out.family("hugealloc_memlock_limit_bytes", "RLIMIT_MEMLOCK of the process running inspect-memory (+Inf: unlimited).",
                   [(["limit": "soft"], s.memlock.soft.map(Double.init) ?? .infinity),
                    (["limit": "hard"], s.memlock.hard.map(Double.init) ?? .infinity)])
        out.family("hugealloc_frame_tables_readable", "1 when /proc/kpageflags and /proc/kpagecount could be read (needs CAP_SYS_ADMIN); the free-run metrics are absent otherwise.",
                   [([:], s.contiguity == nil ? 0 : 1)])
        if let contiguity = s.contiguity {
            out.family("hugealloc_free_frames_pages", "Free hugepage frames found in the node's memory (not mapped by any process), per size.",
                       contiguity.map { (["size": "\($0.pageSize)", "node": "\($0.node)"], Double($0.freeFrames)) })
            out.family("hugealloc_free_runs", "Physically contiguous runs of free hugepage frames, per size and NUMA node.",
                       contiguity.map { (["size": "\($0.pageSize)", "node": "\($0.node)"], Double($0.freeRuns)) })
            out.family("hugealloc_largest_free_run_bytes", "The largest physically contiguous run of free hugepage frames, per size and NUMA node.",
                       contiguity.map { (["size": "\($0.pageSize)", "node": "\($0.node)"], Double($0.largestFreeRunBytes)) })
        }
        // Objects shared between processes (docs/multi-process.md), under the default runtime directory.
        let live = shared.filter { !$0.isStale }
        func labels(_ e: SharedRegistry.Entry) -> [String: String] { ["name": e.name, "kind": PoolsCommand.kindName(e.kind) ?? "unknown"] }
        out.family("hugealloc_shared_objects_bytes", "Bytes of each live object shared between processes (inspect-memory pools).",
                   live.map { (labels($0), Double($0.bytes ?? 0)) })
        out.family("hugealloc_shared_pool_objects", "Objects of a shared pool (slots of a shared ring) in all.",
                   live.compactMap { e in e.objectsTotal.map { (labels(e), Double($0)) } })
        out.family("hugealloc_shared_pool_available_objects", "Objects of a shared pool available, caches included (pointers queued in a shared ring).",
                   live.compactMap { e in e.objectsAvailable.map { (labels(e), Double($0)) } })
        out.family("hugealloc_shared_object_processes", "Live processes attached to a shared object.",
                   live.map { (labels($0), Double($0.processes.count { $0.isAlive })) })
        out.family("hugealloc_shared_stale_entries", "Rendezvous entries whose processes are all gone (inspect-memory pools --clean removes them).",
                   [([:], Double(shared.count { $0.isStale }))])
        return out.text
    }
}

/// Builds Prometheus text exposition: `# HELP`, `# TYPE`, then the samples
/// with escaped label values, labels in name order.
struct MetricsText {
    private(set) var text = ""

    mutating func family(_ name: String, _ help: String, _ samples: [([String: String], Double)], type: String = "gauge") {
        text += "# HELP \(name) \(Self.escapeHelp(help))\n# TYPE \(name) \(type)\n"
        for (labels, value) in samples {
            let rendered = labels.keys.sorted().map { "\($0)=\"\(Self.escapeLabel(labels[$0]!))\"" }.joined(separator: ",")
            text += name + (rendered.isEmpty ? "" : "{\(rendered)}") + " " + Self.format(value) + "\n"
        }
    }

    /// `\` and newline escaped, as the format wants in HELP text.
    static func escapeHelp(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
    }

    /// `\`, `"` and newline escaped, as the format wants in label values.
    static func escapeLabel(_ text: String) -> String {
        escapeHelp(text).replacingOccurrences(of: "\"", with: "\\\"")
    }

    /// Integers without a fraction, `+Inf` for infinity.
    static func format(_ value: Double) -> String {
        if value == .infinity { return "+Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return String(value)
    }
}
