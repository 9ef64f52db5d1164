import ArgumentParser
import Foundation
import HugeAlloc
import HugeAllocDiagnostics

/// `inspect-memory map`: where on each node the hugepages lie, which are
/// free, and which process holds the others.
struct MapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map",
        abstract: "A picture of physical memory: every hugepage frame per NUMA node by physical address, free or held by which process.",
        discussion: """
            Reads the frame tables /proc/kpageflags and /proc/kpagecount over each node's memory \
            blocks (/sys/devices/system/node/nodeN/memoryM) and the pagemap of every process that \
            maps hugepages; needs CAP_SYS_ADMIN (root). A frame no process maps is free, or holds \
            the data of a hugetlbfs file nobody maps: the node's free_hugepages count says how many \
            of those there are, the kernel does not say which. Reserved pages are free pages promised \
            to mappings and surplus pages are counted per pool: the kernel binds neither to a frame, \
            so both are stated as counts.
            """
    )

    @OptionGroup var options: CommonOptions

    @Option(help: "Show this NUMA node only.")
    var node: Int?

    @Option(help: ArgumentHelp("Show frames of this hugepage size only (2M, 1G).", valueName: "size"))
    var size: String?

    @Option(help: ArgumentHelp("Also write the picture as a standalone SVG file.", valueName: "file"))
    var svg: String?

    /// The strip's width in cells; the terminal's width by default (hidden: for tests).
    @Option(help: .hidden)
    var width: Int?

    func validate() throws {
        if let size, PageSize(parsing: size) == nil {
            throw ValidationError("\(size) is not a page size: give 2M or 1G (the sizes in /sys/kernel/mm/hugepages)")
        }
        if let width, width < 8 { throw ValidationError("--width must be at least 8 cells") }
        if let node {
            let nodes = HugepageSetup.nodes(in: options.fs)
            guard nodes.contains(node) else {
                throw ValidationError(DiagnosticsError.noSuchNode(UnknownNode(node: node, available: nodes)).description)
            }
        }
        if let size = size.flatMap(PageSize.init(parsing:)) {
            let offered = HugepagePoolDirectory.offeredSizes(in: options.fs)
            guard offered.contains(size) else {
                throw ValidationError(UnsupportedPageSize(requested: size.bytes, offered: offered).description)
            }
        }
    }

    func run() throws {
        let map: PhysicalHugepageMap
        do {
            map = try PhysicalHugepageMap.read(node: node, pageSize: size.flatMap(PageSize.init(parsing:)), in: options.fs)
        } catch {
            throw CommandFailure("map: \(error.description)")
        }
        let pools = try? SystemInventory.read(root: options.fs.root).hugepagePools
        if let svg {
            let text = MapSVG.render(map, pools: pools ?? [])
            do {
                try text.write(toFile: svg, atomically: true, encoding: .utf8)
            } catch {
                throw CommandFailure("cannot write \(svg): \(error.localizedDescription)")
            }
        }
        if options.json {
            try printJSON(MapReport(map))
        } else {
            let columns = width ?? Sys.terminalSize(1).map { $0.columns - 2 } ?? 78
            let colour = Sys.isTerminal(1) && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
            print(MapStrip.render(map, pools: pools ?? [], width: columns, colour: colour), terminator: "")
            if let svg { print("SVG written to \(svg)") }
        }
    }
}

/// The `--json` object of `inspect-memory map`.
struct MapReport: Encodable {
    struct Holder: Encodable {
        var pid: Int32
        var command: String
        /// The strip's letter for the process.
        var letter: String
    }
    struct Range: Encodable {
        var start: String
        var bytes: Int
    }
    struct Run: Encodable {
        var physical: String
        var frames: Int
        var bytes: Int
    }
    struct Size: Encodable {
        var pageSize: Int
        var frames: Int
        var free: Int
        var held: Int
        var inUse: Int
        /// The node's pool counters (sysfs), nil when unreadable.
        var kernelTotal: Int?
        var kernelFree: Int?
        var surplus: Int?
        /// Free frames (not mapped) beyond the kernel's free count: file pages nobody maps.
        var unmappedAllocated: Int
        var largestFreeRun: Run?
        var freeRuns: [Run]
        enum CodingKeys: String, CodingKey {
            case pageSize = "page_size", frames, free, held, inUse = "in_use", kernelTotal = "kernel_total"
            case kernelFree = "kernel_free", surplus, unmappedAllocated = "unmapped_allocated"
            case largestFreeRun = "largest_free_run", freeRuns = "free_runs"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(pageSize, forKey: .pageSize)
            try c.encode(frames, forKey: .frames)
            try c.encode(free, forKey: .free)
            try c.encode(held, forKey: .held)
            try c.encode(inUse, forKey: .inUse)
            try c.encode(kernelTotal, forKey: .kernelTotal)
            try c.encode(kernelFree, forKey: .kernelFree)
            try c.encode(surplus, forKey: .surplus)
            try c.encode(unmappedAllocated, forKey: .unmappedAllocated)
            try c.encode(largestFreeRun, forKey: .largestFreeRun)
            try c.encode(freeRuns, forKey: .freeRuns)
        }
    }
    struct Frame: Encodable {
        var physical: String
        var pageSize: Int
        var state: String
        var mapCount: Int
        var holders: [Int32]
        enum CodingKeys: String, CodingKey {
            case physical, pageSize = "page_size", state, mapCount = "map_count", holders
        }
    }
    struct Node: Encodable {
        var node: Int
        var memory: [Range]
        var sizes: [Size]
        var frames: [Frame]
    }
    var blockSize: Int
    var pageSizes: [Int]
    var holders: [Holder]
    var nodes: [Node]
    enum CodingKeys: String, CodingKey { case blockSize = "block_size", pageSizes = "page_sizes", holders, nodes }

    init(_ map: PhysicalHugepageMap) {
        let letters = MapStrip.letters(map)
        blockSize = map.blockSize
        pageSizes = map.pageSizes.map(\.bytes)
        holders = map.holders.keys.sorted().map { Holder(pid: $0, command: map.holders[$0] ?? "?", letter: letters[$0] ?? "+") }
        nodes = map.nodes.map { node in
            Node(
                node: node.node,
                memory: node.memory.map { Range(start: $0.start.description, bytes: $0.bytes) },
                sizes: map.pageSizes.map { size in
                    let frames = node.frames(of: size)
                    let counters = node.counters.first { $0.pageSize == size }
                    func run(_ r: FreeHugepageRun) -> Run { Run(physical: r.physical.description, frames: r.frames, bytes: r.bytes) }
                    return Size(
                        pageSize: size.bytes, frames: frames.count, free: frames.count { $0.state == .free },
                        held: frames.count { $0.state == .held }, inUse: frames.count { $0.state == .inUse },
                        kernelTotal: counters?.total, kernelFree: counters?.free, surplus: counters?.surplus,
                        unmappedAllocated: node.unmappedAllocated(of: size),
                        largestFreeRun: node.largestFreeRun(of: size).map(run), freeRuns: node.freeRuns(of: size).map(run))
                },
                frames: node.frames.map {
                    Frame(physical: $0.physical.description, pageSize: $0.pageSize.bytes, state: $0.state.rawValue,
                          mapCount: $0.mapCount, holders: $0.holders)
                })
        }
    }
}
