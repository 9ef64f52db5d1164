/// How a set of pages falls into physically contiguous runs: the data behind
/// `inspect-memory probe`. Runs are found in physical order, whatever the
/// pages' virtual order, and never cross a NUMA node boundary.
public struct FragmentationReport: Sendable, Equatable {
    public struct Run: Sendable, Equatable {
        public var physical: PhysicalAddress
        public var bytes: Int
        public var pages: Int
        public var node: Int?
    }
    public struct NodeSummary: Sendable, Equatable {
        public var node: Int
        public var pages: Int
        public var runs: Int
        public var largestRunBytes: Int
    }

    public let pageSize: PageSize
    /// Runs in ascending physical order.
    public let runs: [Run]
    /// Run length in pages → how many runs have that length, ascending.
    public let histogram: [(pages: Int, runs: Int)]
    /// Per node, when the nodes are known.
    public let nodes: [NodeSummary]

    public var largestRunBytes: Int { runs.map(\.bytes).max() ?? 0 }
    public var pageCount: Int { runs.reduce(0) { $0 + $1.pages } }

    public init(physical: [PhysicalAddress], nodes: [Int]? = nil, pageSize: PageSize) {
        self.pageSize = pageSize
        let pageBytes = pageSize.bytes
        let order = physical.indices.sorted { physical[$0] < physical[$1] }
        let ranges = PhysicalRun.ranges(count: order.count) { i in
            physical[order[i]] == physical[order[i - 1]] + pageBytes && nodes?[order[i]] == nodes?[order[i - 1]]
        }
        let runs = ranges.map { range in
            Run(physical: physical[order[range.lowerBound]], bytes: range.count * pageBytes, pages: range.count,
                node: nodes?[order[range.lowerBound]])
        }
        self.runs = runs
        var counts: [Int: Int] = [:]
        for run in runs { counts[run.pages, default: 0] += 1 }
        histogram = counts.sorted { $0.key < $1.key }.map { (pages: $0.key, runs: $0.value) }
        var perNode: [Int: NodeSummary] = [:]
        for run in runs {
            guard let node = run.node else { continue }
            var s = perNode[node] ?? NodeSummary(node: node, pages: 0, runs: 0, largestRunBytes: 0)
            s.pages += run.pages
            s.runs += 1
            s.largestRunBytes = max(s.largestRunBytes, run.bytes)
            perNode[node] = s
        }
        self.nodes = perNode.values.sorted { $0.node < $1.node }
    }

    /// The report for a mapping's pages (empty without a translation).
    public init(_ mapping: borrowing MemoryMapping) {
        let physical = (0..<mapping.pageCount).compactMap { mapping.physicalAddress(ofPage: $0) }
        self.init(physical: physical, nodes: physical.count == mapping.pageCount ? mapping.pageNodes : nil,
                  pageSize: mapping.pageSize)
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.pageSize == b.pageSize && a.runs == b.runs && a.nodes == b.nodes
    }
}
