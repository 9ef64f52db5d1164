import HugeAlloc
import HugeAllocDiagnostics

/// The SVG picture of a ``PhysicalHugepageMap``: standalone (no external
/// assets), one framed block per NUMA node, its memory drawn in rows of
/// equal physical span with frames to scale by physical address.
///
/// - A row spans 1 GiB (or the largest page size shown), 1 px per MiB.
/// - The node's memory is a grey band; a hole in physical memory is left
///   blank within a row, and a run of rows with no memory is one dashed
///   "hole" line. Runs of rows with memory but no hugepage frame are folded
///   into one line that says how much memory they hold.
/// - Frames are coloured by state; adjacent frames of one state and holder
///   are one rectangle, whose `<title>` (shown on hover) gives the frames,
///   the address and the holders' PIDs and names.
/// - Physically contiguous free runs of two or more frames are underlined;
///   the largest per size and node is outlined.
///
/// Elements carry classes (`node`, `row`, `frame free|held|in_use`, `run`,
/// `largest-free-run`, `hole`, `folded`, `legend`) and `data-` attributes
/// (`data-node`, `data-physical`, `data-frames`, `data-pids`) so the
/// structure can be checked without looking at pixels.
enum MapSVG {
    static let freeColour = "#43a047", inUseColour = "#fb8c00", memoryColour = "#e4e4e4"
    static let holderColours = ["#1e88e5", "#8e24aa", "#e53935", "#00897b", "#6d4c41", "#d81b60", "#3949ab", "#c0ca33"]
    static let manyColour = "#212121"
    static let rowWidth = 1024.0, labelWidth = 96.0, margin = 16.0, rowHeight = 14.0, rowGap = 6.0

    static func render(_ map: PhysicalHugepageMap, pools: [HugepagePool]) -> String {
        let pids = map.holders.keys.sorted()
        let letters = MapStrip.letters(map)
        func colour(_ frame: HugepageFrame) -> String {
            switch frame.state {
            case .free: return freeColour
            case .inUse: return inUseColour
            case .held:
                guard frame.holders.count == 1, let i = pids.firstIndex(of: frame.holders[0]) else { return manyColour }
                return holderColours[i % holderColours.count]
            }
        }
        let span = max(1 << 30, map.pageSizes.map(\.bytes).max() ?? 0)
        let scale = rowWidth / Double(span)
        var body = ""
        var y = margin

        // Title and legend.
        body += text(margin, y + 12, "Hugepage frames by physical address", size: 15, weight: "bold")
        y += 22
        let held = MapStrip.heldBytes(map)
        var legend: [(String, String)] = [(freeColour, "free"), (inUseColour, "mapped, holder not read")]
        for (i, pid) in pids.enumerated() {
            let bytes = map.pageSizes.compactMap { size in held[pid]?[size].map { "\(ByteCount.format($0)) of \(size)" } }
            legend.append((holderColours[i % holderColours.count],
                           "\(letters[pid] ?? "+") · PID \(pid) \(map.holders[pid] ?? "?") (\(bytes.joined(separator: ", ")))"))
        }
        if map.nodes.contains(where: { $0.frames.contains { $0.holders.count > 1 } }) {
            legend.append((manyColour, "held by several processes"))
        }
        legend.append((memoryColour, "memory without hugepage frames"))
        body += "<g class=\"legend\">\n"
        var x = margin
        for (fill, label) in legend {
            let width = 22 + Double(label.count) * 6.6
            if x + width > margin + labelWidth + rowWidth { x = margin; y += 18 }
            body += "<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"12\" height=\"12\" fill=\"\(fill)\" stroke=\"#555\" stroke-width=\"0.5\"/>"
            body += text(x + 16, y + 10, label, size: 11) + "\n"
            x += width
        }
        y += 18
        body += "<line x1=\"\(f(margin))\" y1=\"\(f(y + 6))\" x2=\"\(f(margin + 24))\" y2=\"\(f(y + 6))\" stroke=\"#1b5e20\" stroke-width=\"2\"/>"
        body += text(margin + 30, y + 10, "physically contiguous free run (2+ frames)", size: 11)
        body += "<rect x=\"\(f(margin + 300))\" y=\"\(f(y))\" width=\"24\" height=\"12\" fill=\"none\" stroke=\"#000\" stroke-width=\"2\"/>"
        body += text(margin + 330, y + 10, "largest free run of the node and size", size: 11)
        body += "</g>\n"
        y += 20
        let reservedText = pools.filter { map.pageSizes.contains($0.pageSize) }.map {
            "\($0.pageSize): \($0.reserved) reserved, \($0.surplus) surplus"
        }
        if !reservedText.isEmpty {
            body += text(margin, y + 10, "Not bound to frames by the kernel (system-wide): " + reservedText.joined(separator: "; "),
                         size: 11, fill: "#555")
            y += 18
        }

        for node in map.nodes {
            let top = y
            y += 8
            body += "<g class=\"node\" id=\"node\(node.node)\" data-node=\"\(node.node)\">\n"
            body += text(margin + 8, y + 12, "node \(node.node)", size: 13, weight: "bold")
            let summaries = MapStrip.sizeSummaries(node, sizes: map.pageSizes)
            for summary in summaries.isEmpty ? ["no hugepage frames"] : summaries {
                body += text(margin + 70, y + 12, summary, size: 11)
                y += 16
            }
            y += 6
            var row = rowsOf(node, span: span)
            var lastEnd: UInt64? = nil
            while let next = row.first {
                row.removeFirst()
                if let lastEnd, next.start > lastEnd {
                    body += "<g class=\"hole\" data-start=\"0x\(String(lastEnd, radix: 16))\" data-bytes=\"\(next.start - lastEnd)\">"
                    let label = "hole in physical memory: \(ByteCount.format(Int(next.start - lastEnd))) at 0x\(String(lastEnd, radix: 16))"
                    let after = margin + labelWidth + 10 + Double(label.count) * 5.6
                    body += text(margin + labelWidth + 4, y + 9, label, size: 10, fill: "#777")
                    body += "<line x1=\"\(f(after))\" y1=\"\(f(y + 6))\" x2=\"\(f(margin + labelWidth + rowWidth))\" y2=\"\(f(y + 6))\" stroke=\"#999\" stroke-dasharray=\"4 4\"/>"
                    body += "</g>\n"
                    y += 14
                }
                if next.frames.isEmpty {
                    // Fold this and following rows without frames (and without holes between them).
                    var end = next.end, memory = next.memoryBytes
                    while let more = row.first, more.frames.isEmpty, more.start == end {
                        end = more.end
                        memory += more.memoryBytes
                        row.removeFirst()
                    }
                    body += "<g class=\"folded\" data-start=\"0x\(String(next.start, radix: 16))\" data-bytes=\"\(end - next.start)\">"
                    body += text(margin + labelWidth + 4, y + 9, "⋯ 0x\(String(next.start, radix: 16))–0x\(String(end, radix: 16)): \(ByteCount.format(memory)) of memory, no hugepage frames", size: 10, fill: "#777")
                    body += "</g>\n"
                    y += 14
                    lastEnd = end
                    continue
                }
                body += "<g class=\"row\" data-start=\"0x\(String(next.start, radix: 16))\">"
                body += text(margin + 8, y + 11, "0x" + String(next.start, radix: 16), size: 10, fill: "#444", family: "monospace")
                for range in next.memory {
                    body += "<rect x=\"\(f(margin + labelWidth + Double(range.lowerBound - next.start) * scale))\" y=\"\(f(y))\" width=\"\(f(Double(range.count) * scale))\" height=\"\(f(rowHeight))\" fill=\"\(memoryColour)\"/>"
                }
                // Adjacent frames with the same look become one rectangle.
                var i = 0
                let frames = next.frames
                while i < frames.count {
                    var end = i + 1
                    while end < frames.count, frames[end].physical == frames[end - 1].end,
                          frames[end].state == frames[i].state, frames[end].holders == frames[i].holders,
                          frames[end].pageSize == frames[i].pageSize { end += 1 }
                    let first = frames[i], count = end - i
                    let x0 = margin + labelWidth + Double(first.physical.rawValue - next.start) * scale
                    let width = Double(count * first.pageSize.bytes) * scale
                    let who = first.holders.map { "PID \($0) \(map.holders[$0] ?? "?")" }.joined(separator: ", ")
                    let what = first.state == .free ? "free" : first.state == .inUse ? "mapped, holder not read" : "held by \(who)"
                    let title = "\(count) × \(first.pageSize) at \(first.physical)–\(frames[end - 1].end): \(what)"
                    body += "\n<rect class=\"frame \(first.state.rawValue)\" x=\"\(f(x0))\" y=\"\(f(y))\" width=\"\(f(width))\" height=\"\(f(rowHeight))\" fill=\"\(colour(first))\" data-physical=\"\(first.physical)\" data-frames=\"\(count)\" data-page-size=\"\(first.pageSize.bytes)\""
                    body += first.holders.isEmpty ? "" : " data-pids=\"\(first.holders.map(String.init).joined(separator: " "))\""
                    body += "><title>\(escape(title))</title></rect>"
                    i = end
                }
                // Free runs in this row: underlined; the node's largest per size outlined.
                for size in map.pageSizes {
                    let best = node.largestFreeRun(of: size)
                    for run in node.freeRuns(of: size) where run.frames >= 2 {
                        let start = max(run.physical.rawValue, next.start), stop = min(run.physical.rawValue + UInt64(run.bytes), next.end)
                        guard start < stop else { continue }
                        let x0 = margin + labelWidth + Double(start - next.start) * scale, width = Double(stop - start) * scale
                        let title = "free run: \(run.frames) × \(size) = \(ByteCount.format(run.bytes)) at \(run.physical)"
                        body += "\n<line class=\"run\" x1=\"\(f(x0))\" y1=\"\(f(y + rowHeight + 2))\" x2=\"\(f(x0 + width))\" y2=\"\(f(y + rowHeight + 2))\" stroke=\"#1b5e20\" stroke-width=\"2\" data-physical=\"\(run.physical)\" data-frames=\"\(run.frames)\"><title>\(escape(title))</title></line>"
                        if run == best {
                            body += "\n<rect class=\"largest-free-run\" x=\"\(f(x0))\" y=\"\(f(y - 1))\" width=\"\(f(width))\" height=\"\(f(rowHeight + 2))\" fill=\"none\" stroke=\"#000\" stroke-width=\"2\" data-physical=\"\(run.physical)\" data-frames=\"\(run.frames)\"><title>largest \(escape(title))</title></rect>"
                        }
                    }
                }
                body += "</g>\n"
                y += rowHeight + rowGap
                lastEnd = next.end
            }
            if node.frames.isEmpty && node.memory.isEmpty {
                body += text(margin + labelWidth + 4, y + 9, "no memory blocks listed for this node", size: 10, fill: "#777")
                y += 14
            }
            y += 6
            body += "<rect class=\"node-boundary\" x=\"\(f(margin))\" y=\"\(f(top))\" width=\"\(f(labelWidth + rowWidth + 8))\" height=\"\(f(y - top))\" fill=\"none\" stroke=\"#333\" stroke-width=\"1.5\" rx=\"6\"/>\n"
            body += "</g>\n"
            y += 12
        }
        let width = margin * 2 + labelWidth + rowWidth + 8, height = y + margin
        return """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(f(width))" height="\(f(height))" viewBox="0 0 \(f(width)) \(f(height))" font-family="sans-serif">
            <title>Hugepage frames by physical address</title>
            <rect width="100%" height="100%" fill="#ffffff"/>
            \(body)</svg>

            """
    }

    /// One row of a node's picture: `[start, end)` of physical addresses,
    /// the node's memory in it and the frames starting in it.
    struct Row {
        var start: UInt64
        var end: UInt64
        var memory: [Range<UInt64>]
        var frames: [HugepageFrame]
        var memoryBytes: Int { memory.reduce(0) { $0 + Int($1.count) } }
    }

    /// The rows of `span` bytes that hold some of the node's memory, ascending.
    static func rowsOf(_ node: NodeHugepageMap, span: Int) -> [Row] {
        let span = UInt64(span)
        var rows: [UInt64: Row] = [:]
        for range in node.memory {
            var start = range.start.rawValue
            let end = range.end.rawValue
            while start < end {
                let rowStart = start / span * span
                let stop = min(end, rowStart + span)
                rows[rowStart, default: Row(start: rowStart, end: rowStart + span, memory: [], frames: [])].memory.append(start..<stop)
                start = stop
            }
        }
        for frame in node.frames {
            let rowStart = frame.physical.rawValue / span * span
            rows[rowStart, default: Row(start: rowStart, end: rowStart + span, memory: [], frames: [])].frames.append(frame)
        }
        return rows.values.sorted { $0.start < $1.start }
    }

    static func text(_ x: Double, _ y: Double, _ content: String, size: Int, weight: String? = nil, fill: String = "#222",
                     family: String? = nil) -> String {
        "<text x=\"\(f(x))\" y=\"\(f(y))\" font-size=\"\(size)\" fill=\"\(fill)\""
            + (weight.map { " font-weight=\"\($0)\"" } ?? "") + (family.map { " font-family=\"\($0)\"" } ?? "")
            + ">\(escape(content))</text>"
    }

    /// Text and attribute values with XML's special characters escaped;
    /// control characters (a command name may hold any) become U+FFFD.
    static func escape(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case _ where scalar.value < 0x20 && scalar != "\t" && scalar != "\n": out += "\u{FFFD}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// A coordinate with at most two decimals.
    static func f(_ value: Double) -> String {
        let rounded = (value * 100).rounded() / 100
        return rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
    }
}
