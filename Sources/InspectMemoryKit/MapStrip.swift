import HugeAlloc
import HugeAllocDiagnostics

/// The terminal picture of a ``PhysicalHugepageMap``: one strip per NUMA
/// node, a cell per hugepage frame (or per group of frames, so the strip
/// fits the width), ordered by physical address.
///
/// Cells: `.` free, a letter for the process holding the frame (the
/// holders' legend names them), `+` several processes, `?` mapped by no
/// process read, `|` a hole in the node's physical memory. The line under
/// a strip marks physically contiguous free runs of two or more frames
/// (`-`) and the largest one (`=`). With `colour`, cells are coloured with
/// ANSI escapes as well.
enum MapStrip {
    /// A letter per holding process, by PID: A-Z, then a-z; later ones share "+".
    static func letters(_ map: PhysicalHugepageMap) -> [Int32: String] {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
        var result: [Int32: String] = [:]
        for (i, pid) in map.holders.keys.sorted().enumerated() where i < alphabet.count {
            result[pid] = String(alphabet[i])
        }
        return result
    }

    /// The ANSI colour of a holder letter (cycled), free and unknown cells.
    static let holderColours = ["36", "35", "34", "31", "96", "95", "94", "91"]
    static let freeColour = "32", inUseColour = "33"

    enum Cell: Equatable {
        case free, inUse, held(Int32), heldByMany, hole
    }

    static func render(_ map: PhysicalHugepageMap, pools: [HugepagePool], width: Int, colour: Bool) -> String {
        let letters = letters(map)
        var out = "hugepage frames by physical address: . free  A-Z held by a process (below)  + several processes"
            + "  ? mapped, holder not read  | hole in physical memory\n"
        out += "under each strip: = the largest physically contiguous free run, - other free runs of 2+ frames\n"
        for node in map.nodes {
            out += "\n" + header(node, sizes: map.pageSizes) + "\n"
            guard !node.frames.isEmpty else {
                out += "  (no hugepage frames)\n"
                continue
            }
            let (strip, runs, perCell) = cells(node, width: width)
            if perCell > 1 { out += "  one cell per \(perCell) frames\n" }
            out += "  " + strip.map { draw($0, letters: letters, colour: colour) }.joined() + "\n"
            out += "  " + String(runs) + "\n"
        }
        let held = heldBytes(map)
        if !map.holders.isEmpty {
            out += "\nholders:\n"
            var rows: [[String]] = []
            for pid in map.holders.keys.sorted() {
                let bytes = map.pageSizes.compactMap { size -> String? in
                    guard let b = held[pid]?[size], b > 0 else { return nil }
                    return "\(ByteCount.format(b)) of \(size)"
                }.joined(separator: ", ")
                rows.append(["  " + (letters[pid] ?? "+"), "\(pid)", map.holders[pid] ?? "?", bytes])
            }
            out += table(["  CELL", "PID", "COMMAND", "HUGEPAGES"], rows) + "\n"
        }
        let shown = pools.filter { map.pageSizes.contains($0.pageSize) }
        if !shown.isEmpty {
            out += "\nnot bound to frames (system-wide): " + shown.map {
                "\($0.pageSize): \($0.reserved) reserved, \($0.surplus) surplus"
            }.joined(separator: "; ") + "\n"
        }
        return out
    }

    /// "node 0: 28 × 2M (23 free, 4 held, 1 in use), largest free run 20 MiB (10 × 2M at 0x7800000)".
    static func header(_ node: NodeHugepageMap, sizes: [PageSize]) -> String {
        let parts = sizeSummaries(node, sizes: sizes)
        return "node \(node.node): " + (parts.isEmpty ? "no hugepage frames" : parts.joined(separator: "; "))
    }

    /// One summary per size with frames on the node: counts by state and the largest free run.
    static func sizeSummaries(_ node: NodeHugepageMap, sizes: [PageSize]) -> [String] {
        var parts: [String] = []
        for size in sizes {
            let frames = node.frames(of: size)
            guard !frames.isEmpty else { continue }
            var states = ["\(frames.count { $0.state == .free }) free"]
            let held = frames.count { $0.state == .held }, inUse = frames.count { $0.state == .inUse }
            if held > 0 { states.append("\(held) held") }
            if inUse > 0 { states.append("\(inUse) in use") }
            var text = "\(frames.count) × \(size) (\(states.joined(separator: ", "))"
            let unmapped = node.unmappedAllocated(of: size)
            if unmapped > 0 {
                text += "; the kernel counts \(unmapped) of the free ones as hugetlbfs file pages nobody maps"
            }
            text += ")"
            if let run = node.largestFreeRun(of: size) {
                text += ", largest free run \(ByteCount.format(run.bytes)) (\(run.frames) × \(size) at \(run.physical))"
            } else {
                text += ", no free frame"
            }
            parts.append(text)
        }
        return parts
    }

    /// The strip's cells, the run-marker line, and how many frames a cell holds.
    static func cells(_ node: NodeHugepageMap, width: Int) -> (cells: [Cell], runs: [Character], perCell: Int) {
        let frames = node.frames
        // A hole lies between two frames when a memory range ends between them.
        func holeBefore(_ i: Int) -> Bool {
            i > 0 && node.memory.contains { $0.end <= frames[i].physical && $0.end > frames[i - 1].physical }
        }
        let holes = (0..<frames.count).count(where: holeBefore)
        let room = max(1, width - holes)
        let perCell = (frames.count + room - 1) / room
        var largest = Set<Int>(), inRun = Set<Int>()
        for size in Set(frames.map(\.pageSize)) {
            let best = node.largestFreeRun(of: size)
            for run in node.freeRuns(of: size) where run.frames >= 2 {
                guard let first = frames.firstIndex(where: { $0.physical == run.physical }) else { continue }
                // The run's frames of this size, in order from its first.
                let members = frames[first...].indices.filter { frames[$0].pageSize == size }.prefix(run.frames)
                if run == best { largest.formUnion(members) } else { inRun.formUnion(members) }
            }
        }
        var cells: [Cell] = [], runs: [Character] = []
        var i = 0
        while i < frames.count {
            if holeBefore(i) {
                cells.append(.hole)
                runs.append("|")
            }
            // A group never spans a hole.
            var end = i + 1
            while end < min(frames.count, i + perCell), !holeBefore(end) { end += 1 }
            let group = frames[i..<end]
            let holders = Set(group.flatMap(\.holders))
            if holders.count > 1 {
                cells.append(.heldByMany)
            } else if let pid = holders.first {
                cells.append(.held(pid))
            } else if group.contains(where: { $0.state == .inUse }) {
                cells.append(.inUse)
            } else {
                cells.append(.free)
            }
            runs.append((i..<end).contains(where: largest.contains) ? "=" : (i..<end).contains(where: inRun.contains) ? "-" : " ")
            i = end
        }
        while runs.last == " " { runs.removeLast() }
        return (cells, runs, perCell)
    }

    static func draw(_ cell: Cell, letters: [Int32: String], colour: Bool) -> String {
        let glyph: String, code: String
        switch cell {
        case .free: (glyph, code) = (".", freeColour)
        case .inUse: (glyph, code) = ("?", inUseColour)
        case .hole: return "|"
        case .heldByMany: (glyph, code) = ("+", "1")
        case .held(let pid):
            glyph = letters[pid] ?? "+"
            let index = letters.keys.sorted().firstIndex(of: pid) ?? 0
            code = "1;" + holderColours[index % holderColours.count]
        }
        return colour ? "\u{1B}[\(code)m\(glyph)\u{1B}[0m" : glyph
    }

    /// Bytes of frames each process holds, per page size (a shared frame counts for each holder).
    static func heldBytes(_ map: PhysicalHugepageMap) -> [Int32: [PageSize: Int]] {
        var result: [Int32: [PageSize: Int]] = [:]
        for frame in map.nodes.flatMap(\.frames) {
            for pid in frame.holders { result[pid, default: [:]][frame.pageSize, default: 0] += frame.pageSize.bytes }
        }
        return result
    }
}
