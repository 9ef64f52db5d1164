import ArgumentParser
import HugeAlloc
import HugeAllocDiagnostics

/// `inspect-memory numa [--node N]`: like `numactl -H`, plus hugepages per node.
struct NumaCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "numa",
        abstract: "NUMA nodes: CPUs, memory, distances and hugepages per node (like numactl -H, plus hugepages).",
        discussion: "Reads /sys/devices/system/node (and libnuma on the live machine)."
    )

    @OptionGroup var options: CommonOptions

    @Option(help: "Show this node only.")
    var node: Int?

    func validate() throws {
        if let node {
            let nodes = HugepageSetup.nodes(in: options.fs)
            guard nodes.contains(node) else {
                throw ValidationError(DiagnosticsError.noSuchNode(UnknownNode(node: node, available: nodes)).description)
            }
        }
    }

    struct Hugepages: Encodable {
        var pageSize: Int
        var total: Int
        var free: Int
        var surplus: Int
        enum CodingKeys: String, CodingKey { case pageSize = "page_size", total, free, surplus }
    }
    struct Node: Encodable {
        var node: Int
        var cpus: [Int]
        var memTotal: Int
        var memFree: Int
        /// Distance to every node, keyed by node id as a string.
        var distances: [String: Int]
        var hugepages: [Hugepages]
        enum CodingKeys: String, CodingKey {
            case node, cpus, memTotal = "mem_total", memFree = "mem_free", distances, hugepages
        }
    }
    struct Report: Encodable {
        var available: Bool
        var nodes: [Node]
    }

    /// The topology from the inventory (``NUMATopology``), one node or all.
    static func report(node: Int?, in fs: KernelFiles) throws -> Report {
        let topology: NUMATopology
        do {
            topology = try NUMATopology.read(root: fs.root)
        } catch {
            throw CommandFailure(error.description)
        }
        let ids = topology.nodes.map(\.id)
        let nodes = topology.nodes.filter { node == nil || $0.id == node }.map { n in
            Node(node: n.id, cpus: n.cpus, memTotal: n.memTotalBytes, memFree: n.memFreeBytes,
                 distances: Dictionary(uniqueKeysWithValues: zip(ids, n.distances).map { ("\($0.0)", $0.1) }),
                 hugepages: n.hugepages.map { Hugepages(pageSize: $0.pageSize.bytes, total: $0.total, free: $0.free, surplus: $0.surplus) })
        }
        return Report(available: topology.available, nodes: nodes)
    }

    func run() throws {
        let report = try Self.report(node: node, in: options.fs)
        if options.json {
            try printJSON(report)
            return
        }
        let all = try Self.report(node: nil, in: options.fs).nodes.map(\.node)
        print("available: \(all.count) node\(all.count == 1 ? "" : "s") (\(ReportFormat.ranges(all)))\(report.available ? "" : ", no NUMA support: one memory node")")
        for n in report.nodes {
            print("node \(n.node) cpus: \(ReportFormat.ranges(n.cpus))")
            print("node \(n.node) size: \(n.memTotal >> 20) MB")
            print("node \(n.node) free: \(n.memFree >> 20) MB")
            for h in n.hugepages {
                print("node \(n.node) hugepages \(ByteCount.format(h.pageSize)): \(h.total) total, \(h.free) free, \(h.surplus) surplus")
            }
        }
        print("node distances:")
        print(table(["node"] + all.map(String.init), report.nodes.map { n in
            ["  \(n.node):"] + all.map { n.distances["\($0)"].map(String.init) ?? "-" }
        }))
    }
}
