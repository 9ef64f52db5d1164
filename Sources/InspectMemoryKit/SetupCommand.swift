import ArgumentParser
import HugeAlloc
import HugeAllocDiagnostics

/// `inspect-memory setup --pages 2M:512[,1G:2] [--node N] [--mount PATH]`.
struct SetupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "setup",
        abstract: "Reserve hugepages (system-wide or on one node) and mount hugetlbfs, like dpdk-hugepages.py --setup.",
        discussion: """
            Sets each pool to COUNT pages by writing nr_hugepages in sysfs \
            (/sys/kernel/mm/hugepages/hugepages-<kB>kB, or the node's own directory with --node) \
            and reports what the kernel granted; exits 1 when it granted fewer. \
            --mount mounts a hugetlbfs at PATH with the page size given (with several sizes, \
            one per size at PATH/<size>, e.g. PATH/2M and PATH/1G); a path already mounted, \
            however it is spelled, is not mounted again. Mount paths are checked before anything \
            changes; if a later step fails, what was changed is rolled back.
            """
    )

    @OptionGroup var options: CommonOptions

    @Option(help: ArgumentHelp("Pool sizes to set: SIZE:COUNT[,SIZE:COUNT], e.g. 2M:512,1G:2.", valueName: "pages"))
    var pages: String

    @Option(help: "Reserve on this NUMA node only.")
    var node: Int?

    @Option(help: ArgumentHelp("Mount hugetlbfs here (created if missing).", valueName: "path"))
    var mount: String?

    func validate() throws {
        let fs = options.fs
        do {
            _ = try HugepageSetup.parseRequests(pages, in: fs)
        } catch {
            throw ValidationError(error.description)
        }
        if let node {
            let nodes = HugepageSetup.nodes(in: fs)
            guard nodes.contains(node) else {
                throw ValidationError(DiagnosticsError.noSuchNode(UnknownNode(node: node, available: nodes)).description)
            }
        }
        if let mount {
            guard mount.hasPrefix("/") else { throw ValidationError("--mount needs an absolute path, not \"\(mount)\"") }
            let requests = (try? HugepageSetup.parseRequests(pages, in: fs)) ?? []
            for point in HugepageSetup.mountPoints(mount, for: requests) {
                do {
                    _ = try HugepageSetup.checkMountPoint(point.path, in: fs)
                } catch {
                    throw ValidationError(error.description)
                }
            }
        }
    }

    struct Grant: Encodable {
        var pageSize: Int
        var node: Int?
        var previous: Int
        var requested: Int
        var granted: Int
        enum CodingKeys: String, CodingKey { case pageSize = "page_size", node, previous, requested, granted }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(pageSize, forKey: .pageSize)
            try c.encode(node, forKey: .node)
            try c.encode(previous, forKey: .previous)
            try c.encode(requested, forKey: .requested)
            try c.encode(granted, forKey: .granted)
        }
    }
    struct Mount: Encodable {
        var path: String
        var pageSize: Int
        /// False when a hugetlbfs of this size was already mounted there.
        var mounted: Bool
        enum CodingKeys: String, CodingKey { case path, pageSize = "page_size", mounted }
    }
    struct Report: Encodable {
        var grants: [Grant]
        var mounts: [Mount]
    }

    func run() throws {
        let fs = options.fs
        let requests: [HugepageRequest]
        do {
            requests = try HugepageSetup.parseRequests(pages, in: fs)
        } catch {
            throw UsageError(error.description)
        }
        let applied: HugepageSetup.Applied
        do {
            applied = try HugepageSetup.apply(requests, node: node, mount: mount, in: fs)
        } catch {
            if case .invalidMountPoint = error { throw UsageError(error.description) }
            throw CommandFailure(error.description)
        }
        let report = Report(
            grants: applied.grants.map {
                Grant(pageSize: $0.pageSize, node: $0.node, previous: $0.previous, requested: $0.requested, granted: $0.granted)
            },
            mounts: applied.mounts.map { Mount(path: $0.path, pageSize: $0.pageSize, mounted: $0.mounted) })
        if options.json {
            try printJSON(report)
        } else {
            for g in report.grants {
                let scope = g.node.map { "node \($0)" } ?? "system-wide"
                let verdict = g.granted >= g.requested ? "OK" : "SHORT"
                print("\(verdict)  \(ByteCount.format(g.pageSize)) pages \(scope): requested \(g.requested), granted \(g.granted) (was \(g.previous))")
            }
            for m in report.mounts {
                print("OK  hugetlbfs pagesize=\(ByteCount.format(m.pageSize)) \(m.mounted ? "mounted" : "already mounted") at \(m.path)")
            }
        }
        if let short = report.grants.first(where: { $0.granted < $0.requested }) {
            let size = ByteCount.format(short.pageSize)
            let scope = short.node.map { " on node \($0)" } ?? ""
            throw CommandFailure(
                "the kernel granted \(short.granted) of \(short.requested) \(size) pages\(scope) (memory is short or fragmented); "
                + "compact and retry: echo 1 > /proc/sys/vm/compact_memory && inspect-memory setup --pages \(size):\(short.requested)"
                + ", or reserve at boot with hugepagesz=\(size) hugepages=\(short.requested) on the kernel command line")
        }
    }
}
