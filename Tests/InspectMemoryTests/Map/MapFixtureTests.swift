@testable import HugeAllocDiagnostics
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import HugeAlloc
import HugeAllocTestSupport
@testable import InspectMemoryKit

/// `inspect-memory map` over the fixture tree `hugepage-map`, whose frame
/// tables and pagemaps ``HugepageMapFixture`` writes (its doc comment lists
/// every frame).
@Suite struct MapFixtureTests {
    @Test func framesStatesAndHoldersComeFromTheFrameTablesAndPagemaps() throws {
        let fixture = try HugepageMapFixture()
        defer { fixture.remove() }
        let map = try PhysicalHugepageMap.read(in: fixture.copy.fs)
        #expect(map.blockSize == 128 << 20)
        #expect(map.pageSizes == [.huge2M, .huge1G])
        #expect(map.holders == [4242: "l2fwd", 4343: "spdk_tgt"])
        #expect(map.nodes.map(\.node) == [0, 1])
        let node0 = map.nodes[0], node1 = map.nodes[1]
        #expect(node0.memory == [PhysicalMemoryRange(start: PhysicalAddress(0), bytes: 256 << 20)])
        #expect(node1.memory == [PhysicalMemoryRange(start: PhysicalAddress(1 << 30), bytes: 1 << 30),
                                 PhysicalMemoryRange(start: PhysicalAddress(3200 << 20), bytes: 128 << 20)])
        // Every 2 MiB frame where the fixture put one, and nothing else (not the buddy page, not the THP).
        #expect(node0.frames.map { $0.physical.rawValue >> 21 } == Array(8...25) + Array(60...69))
        #expect(node0.frames.allSatisfy { $0.pageSize == .huge2M })
        func frame(_ index: UInt64, _ node: NodeHugepageMap) throws -> HugepageFrame {
            try #require(node.frames.first { $0.physical.rawValue == index << 21 })
        }
        #expect(try frame(16, node0).state == .held && frame(16, node0).holders == [4242])
        #expect(try frame(24, node0).holders == [4343])
        #expect(try frame(25, node0).holders == [4242, 4343] && frame(25, node0).mapCount == 2)
        #expect(try frame(19, node0).state == .inUse && frame(19, node0).holders.isEmpty)
        #expect(try frame(18, node0).state == .free && frame(18, node0).mapCount == 0)
        // The 1 GiB page: one frame, its tails not taken for 2 MiB frames.
        #expect(node1.frames(of: .huge1G) == [HugepageFrame(physical: PhysicalAddress(1 << 30), pageSize: .huge1G,
                                                             state: .held, mapCount: 1, holders: [4242])])
        #expect(node1.frames(of: .huge2M).map { $0.physical.rawValue >> 21 } == [1600, 1601, 1602, 1603, 1607])
        // Runs: contiguous free frames, the largest across the block 0/1 boundary.
        #expect(node0.freeRuns(of: .huge2M).map(\.frames) == [8, 1, 4, 10])
        #expect(node0.largestFreeRun(of: .huge2M) == FreeHugepageRun(physical: PhysicalAddress(60 << 21), pageSize: .huge2M, frames: 10))
        #expect(node1.largestFreeRun(of: .huge1G) == nil)
        // Node 1 has 5 unmapped 2 MiB frames and the kernel counts 4 free.
        #expect(node1.unmappedAllocated(of: .huge2M) == 1 && node0.unmappedAllocated(of: .huge2M) == 0)
    }

    @Test func stripShowsEveryFrameHolderHoleAndRun() throws {
        let fixture = try HugepageMapFixture()
        defer { fixture.remove() }
        let map = try PhysicalHugepageMap.read(in: fixture.copy.fs)
        let text = MapStrip.render(map, pools: [], width: 78, colour: false)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let node0 = try #require(lines.firstIndex { $0.hasPrefix("node 0:") })
        #expect(lines[node0] == "node 0: 28 × 2M (23 free, 4 held, 1 in use), largest free run 20M (10 × 2M at 0x7800000)")
        #expect(lines[node0 + 1] == "  ........AA.?....B+..........")
        #expect(lines[node0 + 2] == "  --------    ----  ==========")
        let node1 = try #require(lines.firstIndex { $0.hasPrefix("node 1:") })
        #expect(lines[node1] == "node 1: 5 × 2M (5 free; the kernel counts 1 of the free ones as hugetlbfs file pages nobody maps),"
            + " largest free run 8M (4 × 2M at 0xc8000000); 1 × 1G (0 free, 1 held), no free frame")
        #expect(lines[node1 + 1] == "  A|.....")
        #expect(lines[node1 + 2] == "   |====")
        #expect(lines.contains("  A     4242  l2fwd     6M of 2M, 1G of 1G"))
        #expect(lines.contains("  B     4343  spdk_tgt  4M of 2M"))

        // Narrow: 28 frames in 10 cells, 3 frames a cell; a held frame wins its cell, several holders show "+".
        let narrow = MapStrip.render(map, pools: [], width: 10, colour: false).split(separator: "\n").map(String.init)
        let n0 = try #require(narrow.firstIndex { $0.hasPrefix("node 0:") })
        #expect(narrow[n0 + 1] == "  one cell per 3 frames")
        #expect(narrow[n0 + 2] == "  ..AA.+....")
        // Coloured: the same glyphs inside ANSI escapes.
        let coloured = MapStrip.render(map, pools: [], width: 78, colour: true)
        #expect(coloured.contains("\u{1B}[32m.\u{1B}[0m") && coloured.contains("\u{1B}[1;36mA\u{1B}[0m"))
    }

    @Test func sizeAndNodeNarrowTheMap() throws {
        let fixture = try HugepageMapFixture()
        defer { fixture.remove() }
        let map = try PhysicalHugepageMap.read(node: 1, pageSize: .huge1G, in: fixture.copy.fs)
        #expect(map.nodes.map(\.node) == [1] && map.pageSizes == [.huge1G])
        #expect(map.nodes[0].frames.count == 1 && map.holders == [4242: "l2fwd"])
        #expect(throws: DiagnosticsError.noSuchNode(UnknownNode(node: 4, available: [0, 1]))) {
            try PhysicalHugepageMap.read(node: 4, in: fixture.copy.fs)
        }
    }

    @Test func svgIsStandaloneWithNodesFramesHolesLegendAndHover() throws {
        let fixture = try HugepageMapFixture()
        defer { fixture.remove() }
        let file = fixture.root + "/map.svg"
        let result = try run(["map", "--root", fixture.root, "--svg", file])
        #expect(result.status == 0, "\(result.err)")
        let text = try String(contentsOfFile: file, encoding: .utf8)
        // Standalone: no links to anything outside the file.
        #expect(!text.contains("href") && !text.contains("url(") && !text.contains("<image") && !text.contains("@import"))
        let document = try XMLDocument(xmlString: text)
        let svg = try #require(document.rootElement())
        #expect(svg.name == "svg" && svg.uri == "http://www.w3.org/2000/svg")
        // (attribute(forName:) misses attributes of elements in a default namespace on Linux.)
        func attribute(_ e: XMLElement, _ name: String) -> String? { e.attributes?.first { $0.name == name }?.stringValue }
        /// Every element below `root` named `name` whose class is `cls` (or starts with it and a space).
        func elements(_ name: String, _ cls: String? = nil, in root: XMLElement? = nil) -> [XMLElement] {
            var found: [XMLElement] = []
            func walk(_ e: XMLElement) {
                for child in e.children ?? [] {
                    guard let c = child as? XMLElement else { continue }
                    let classes = attribute(c, "class")
                    if (c.localName ?? c.name) == name, cls == nil || classes == cls || classes?.hasPrefix(cls! + " ") == true {
                        found.append(c)
                    }
                    walk(c)
                }
            }
            walk(root ?? svg)
            return found
        }

        // Node boundaries: one group per node with its frame.
        let nodes = elements("g", "node")
        #expect(nodes.compactMap { attribute($0, "data-node") } == ["0", "1"])
        for node in nodes { #expect(elements("rect", "node-boundary", in: node).count == 1) }

        // Frames: adjacent frames of one state and holder share a rectangle, to scale (2 px per 2 MiB).
        let frames = elements("rect", "frame")
        let summary = frames.map { "\(attribute($0, "class") ?? "") \(attribute($0, "data-physical") ?? "") \(attribute($0, "data-frames") ?? "")" }
        #expect(summary == [
            "frame free 0x1000000 8", "frame held 0x2000000 2", "frame free 0x2400000 1", "frame in_use 0x2600000 1",
            "frame free 0x2800000 4", "frame held 0x3000000 1", "frame held 0x3200000 1", "frame free 0x7800000 10",
            "frame held 0x40000000 1", "frame free 0xc8000000 4", "frame free 0xc8e00000 1",
        ])
        #expect(frames.map { attribute($0, "width") } == ["16", "4", "2", "2", "8", "2", "2", "20", "1024", "8", "2"])
        // Hover: holders' PIDs and names in <title>.
        let shared = try #require(frames.first { attribute($0, "data-physical") == "0x3200000" })
        #expect(attribute(shared, "data-pids") == "4242 4343")
        #expect(elements("title", in: shared).first?.stringValue
            == "1 × 2M at 0x3200000–0x3400000: held by PID 4242 l2fwd, PID 4343 spdk_tgt")
        // Gaps: the hole between node 1's two ranges (2 GiB to 3200 MiB).
        #expect(elements("g", "hole").map { attribute($0, "data-start") } == ["0x80000000"])
        let node1Rows = elements("g", "row", in: nodes[1])
        let node1Memory = node1Rows.flatMap { elements("rect", in: $0).filter { attribute($0, "fill") == "#e4e4e4" } }
        #expect(node1Memory.map { attribute($0, "x") } == ["112", "240"])  // 1 GiB at its row's start; 128 MiB into the 3 GiB row
        // Runs: underlined; the largest per node and size outlined.
        let largest = elements("rect", "largest-free-run")
        #expect(largest.map { "\(attribute($0, "data-physical") ?? "") \(attribute($0, "data-frames") ?? "")" } == ["0x7800000 10", "0xc8000000 4"])
        #expect(elements("line", "run").count == 4)
        // Legend: the states and each holder with PID and name.
        let legend = try #require(elements("g", "legend").first)
        let labels = elements("text", in: legend).compactMap(\.stringValue)
        #expect(labels.contains("free") && labels.contains("mapped, holder not read"))
        #expect(labels.contains("A · PID 4242 l2fwd (6M of 2M, 1G of 1G)") && labels.contains("B · PID 4343 spdk_tgt (4M of 2M)"))
    }

    @Test func jsonGivesFramesRunsAndCounts() throws {
        let fixture = try HugepageMapFixture()
        defer { fixture.remove() }
        let result = try run(["map", "--json", "--node", "1", "--root", fixture.root])
        #expect(result.status == 0, "\(result.err)")
        let object = try #require(try jsonObject(result.out) as? [String: Any])
        #expect((object["holders"] as? [[String: Any]])?.map { $0["pid"] as? Int } == [4242])
        let node = try #require((object["nodes"] as? [[String: Any]])?.first)
        let sizes = try #require(node["sizes"] as? [[String: Any]])
        let twoMiB = try #require(sizes.first { $0["page_size"] as? Int == 2 << 20 })
        #expect(twoMiB["frames"] as? Int == 5 && twoMiB["free"] as? Int == 5 && twoMiB["kernel_free"] as? Int == 4)
        #expect(twoMiB["unmapped_allocated"] as? Int == 1)
        let run = try #require(twoMiB["largest_free_run"] as? [String: Any])
        #expect(run["physical"] as? String == "0xc8000000" && run["frames"] as? Int == 4 && run["bytes"] as? Int == 8 << 20)
        let oneGiB = try #require(sizes.first { $0["page_size"] as? Int == 1 << 30 })
        #expect(oneGiB["largest_free_run"] is NSNull && oneGiB["held"] as? Int == 1)
        let frames = try #require(node["frames"] as? [[String: Any]])
        #expect(frames.first?["physical"] as? String == "0x40000000" && frames.first?["holders"] as? [Int] == [4242])
    }

    @Test func withoutCapSysAdminOneLineSaysWhatIsNeeded() throws {
        let fixture = try HugepageMapFixture()
        defer { fixture.remove() }
        let status = try String(contentsOfFile: fixture.copy.path("/proc/self/status"), encoding: .utf8)
        try fixture.copy.write("/proc/self/status", status.replacingOccurrences(of: "000001ffffffffff", with: "00000000a80425fb"))
        #expect(throws: DiagnosticsError.self) { try PhysicalHugepageMap.read(in: fixture.copy.fs) }
        let result = try run(["map", "--root", fixture.root])
        #expect(result.status == 1)
        #expect(result.err == "inspect-memory: map: needs CAP_SYS_ADMIN to read /proc/kpageflags, /proc/kpagecount and other processes' frame numbers; run it as root (sudo inspect-memory map)\n")
        #expect(result.out.isEmpty)
    }

    @Test func badNodeOrSizeIsAUsageError() throws {
        let fixture = try HugepageMapFixture()
        defer { fixture.remove() }
        for arguments in [["--node", "7"], ["--size", "3M"], ["--size", "64K"], ["--size", "huge"]] {
            let result = try run(["map", "--root", fixture.root] + arguments)
            #expect(result.status == 64, "\(arguments): \(result.err)")
            #expect(result.err.split(separator: "\n").count == 1, "\(arguments): \(result.err)")
        }
    }
}
