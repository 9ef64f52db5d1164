/// The machine's NUMA nodes: CPUs, memory, distances and hugepage pools.
///
/// On the live machine (root "/") the node facts come from libnuma when
/// `numa_available() >= 0` and are cross-checked with
/// /sys/devices/system/node; where the two disagree the kernel's sysfs file
/// wins. Fixture roots are read from sysfs alone. A machine without NUMA
/// support is a valid topology: `available` is false and the machine is
/// presented as node 0 if sysfs has node0, otherwise with no nodes.
public struct NUMATopology: Sendable, Equatable {
    /// Live root: libnuma's `numa_available() >= 0`; fixture root: sysfs node directories exist.
    public var available: Bool
    /// The nodes, sorted by id.
    public var nodes: [NUMANodeInfo]

    public init(available: Bool, nodes: [NUMANodeInfo]) {
        self.available = available
        self.nodes = nodes
    }

    /// Reads the topology under `root`. Reads /sys/devices/system/node/nodeN/
    /// {cpulist, meminfo, distance, hugepages/} and, live, libnuma's
    /// `numa_node_to_cpus`, `numa_node_size64` and `numa_distance`.
    public static func read(root: String = "/") throws(InventoryError) -> NUMATopology {
        var warnings: [String] = []
        do {
            return try read(KernelFiles(root: root), warnings: &warnings)
        } catch {
            throw InventoryError(error)
        }
    }

    /// The node whose CPU list holds `cpu`, or nil.
    public func node(ofCPU cpu: Int) -> Int? {
        nodes.first { $0.cpus.contains(cpu) }?.id
    }

    /// The distance from node `from` to node `to` (10 for a node to itself),
    /// or nil when either node is unknown.
    public func distance(from: Int, to: Int) -> Int? {
        guard let source = nodes.first(where: { $0.id == from }),
              let column = nodes.firstIndex(where: { $0.id == to }),
              column < source.distances.count
        else { return nil }
        return source.distances[column]
    }

    static let nodeDirectory = "sys/devices/system/node"

    /// Reads the topology; disagreements between libnuma and sysfs are
    /// appended to `warnings`.
    static func read(_ files: KernelFiles, warnings: inout [String]) throws(KernelFileError) -> NUMATopology {
        let ids = (try files.entriesIfPresent(nodeDirectory) ?? []).compactMap { name -> Int? in
            guard name.hasPrefix("node") else { return nil }
            let digits = name.dropFirst(4)
            guard !digits.isEmpty, digits.allSatisfy(\.isASCIIDigit) else { return nil }
            return Int(digits)
        }.sorted()

        let available = files.isLive ? Sys.numaAvailable : !ids.isEmpty
        guard available else {
            guard ids.contains(0) else { return NUMATopology(available: false, nodes: []) }
            let node0 = try readNode(0, order: [0], files: files)
            return NUMATopology(available: false, nodes: [node0])
        }

        var nodes: [NUMANodeInfo] = []
        for id in ids {
            var node = try readNode(id, order: ids, files: files)
            if files.isLive { crossCheckWithLibnuma(&node, order: ids, warnings: &warnings) }
            nodes.append(node)
        }
        if files.isLive {
            let maxNode = Sys.highestNode
            if maxNode != (ids.last ?? 0) {
                warnings.append("libnuma numa_max_node() is \(maxNode) but sysfs lists nodes \(ids)")
            }
        }
        return NUMATopology(available: true, nodes: nodes)
    }

    /// One node from sysfs.
    static func readNode(_ id: Int, order: [Int], files: KernelFiles) throws(KernelFileError) -> NUMANodeInfo {
        let directory = "\(nodeDirectory)/node\(id)"
        let cpus = try KernelText.cpuList(files.text("\(directory)/cpulist"),
                                              path: files.path("\(directory)/cpulist"))
        let meminfoPath = files.path("\(directory)/meminfo")
        let meminfo = try files.text("\(directory)/meminfo")
        func value(_ key: String) throws(KernelFileError) -> Int {
            guard let bytes = try KernelText.meminfoValue(meminfo, key: key, linePrefix: "Node \(id) ",
                                                              path: meminfoPath)
            else {
                throw .malformed(path: meminfoPath, line: 0, text: "",
                                 expected: "a line \"Node \(id) \(key): <number> kB\"")
            }
            return bytes
        }
        let distances = try KernelText.integers(files.text("\(directory)/distance"),
                                                    path: files.path("\(directory)/distance"))
        var hugepages: [NodeHugepageCounts] = []
        for name in try files.entriesIfPresent("\(directory)/hugepages") ?? [] {
            let sizeDirectory = "\(directory)/hugepages/\(name)"
            let size = try KernelText.hugepageDirectorySize(name, path: files.path(sizeDirectory))
            hugepages.append(NodeHugepageCounts(
                pageSize: size,
                total: try files.integer("\(sizeDirectory)/nr_hugepages"),
                free: try files.integer("\(sizeDirectory)/free_hugepages"),
                surplus: try files.integer("\(sizeDirectory)/surplus_hugepages")))
        }
        hugepages.sort { $0.pageSize < $1.pageSize }
        return NUMANodeInfo(id: id, cpus: cpus, memTotalBytes: try value("MemTotal"),
                            memFreeBytes: try value("MemFree"), distances: distances, hugepages: hugepages)
    }

    /// Replaces the sysfs memory figures with libnuma's and checks libnuma's
    /// CPUs and distances against sysfs, keeping sysfs where they differ.
    /// Calls `numa_node_size64`, `numa_node_to_cpus` and `numa_distance`.
    static func crossCheckWithLibnuma(_ node: inout NUMANodeInfo, order: [Int], warnings: inout [String]) {
        if let size = Sys.nodeMemory(node.id) {
            // Memory moves between reads (and with ballooning, MemTotal too),
            // so libnuma's later reading replaces the sysfs one.
            node.memTotalBytes = size.total
            node.memFreeBytes = size.free
        } else {
            warnings.append("libnuma numa_node_size64(\(node.id)) failed; memory figures are from sysfs")
        }

        if let cpus = Sys.cpusOfNode(node.id) {
            if cpus != node.cpus {
                warnings.append("node \(node.id): libnuma CPUs \(cpus) differ from sysfs cpulist \(node.cpus); using sysfs")
            }
        } else {
            warnings.append("libnuma numa_node_to_cpus(\(node.id)) failed; CPUs are from sysfs")
        }

        let distances = order.map { Sys.nodeDistance(node.id, $0) ?? 0 }
        if distances != node.distances {
            warnings.append("node \(node.id): libnuma distances \(distances) differ from sysfs \(node.distances); using sysfs")
        }
    }
}

/// One NUMA node, from /sys/devices/system/node/nodeN (and libnuma, live).
public struct NUMANodeInfo: Sendable, Equatable {
    public var id: Int
    /// CPUs of the node, from nodeN/cpulist ("0-3,8-11"), ascending.
    public var cpus: [Int]
    /// nodeN/meminfo "Node N MemTotal: X kB", in bytes.
    public var memTotalBytes: Int
    /// nodeN/meminfo "Node N MemFree: X kB", in bytes.
    public var memFreeBytes: Int
    /// nodeN/distance: the distance to each node, in order of node ids.
    public var distances: [Int]
    /// nodeN/hugepages/hugepages-*kB: the node's share of each pool, by size.
    public var hugepages: [NodeHugepageCounts]

    public init(id: Int, cpus: [Int], memTotalBytes: Int, memFreeBytes: Int,
                distances: [Int], hugepages: [NodeHugepageCounts]) {
        self.id = id
        self.cpus = cpus
        self.memTotalBytes = memTotalBytes
        self.memFreeBytes = memFreeBytes
        self.distances = distances
        self.hugepages = hugepages
    }
}

/// A node's share of one hugepage pool: nodeN/hugepages/hugepages-*kB/
/// nr_hugepages, free_hugepages and surplus_hugepages.
public struct NodeHugepageCounts: Sendable, Equatable {
    public var pageSize: PageSize
    public var total: Int
    public var free: Int
    public var surplus: Int

    public init(pageSize: PageSize, total: Int, free: Int, surplus: Int) {
        self.pageSize = pageSize
        self.total = total
        self.free = free
        self.surplus = surplus
    }
}
