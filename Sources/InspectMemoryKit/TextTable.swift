/// Left-aligned text columns for the readable reports of `inspect-memory`.
public struct TextTable {
    public var header: [String]
    public var rows: [[String]] = []
    /// Spaces before each line.
    public var indent: Int

    public init(_ header: [String], indent: Int = 2) {
        self.header = header
        self.indent = indent
    }

    /// Appends a row. Control characters in a cell (a process named with a
    /// newline, a path with a tab) are shown escaped (`\n`, `\t`, `\x1b`),
    /// so one row stays one line.
    public mutating func append(_ row: [String]) { rows.append(row.map(Self.escaped)) }

    /// `text` with control characters written as escapes.
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case _ where scalar.properties.generalCategory == .control:
                let hex = String(scalar.value, radix: 16)
                out += "\\x" + (hex.count < 2 ? "0" + hex : hex)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// The table, one line per row, columns padded to their widest cell;
    /// trailing spaces are trimmed.
    public func render() -> String {
        let all = [header] + rows
        let columns = all.map(\.count).max() ?? 0
        let widths = (0..<columns).map { column in
            all.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0
        }
        return all.map { row in
            var line = String(repeating: " ", count: indent)
            for (column, cell) in row.enumerated() {
                line += cell
                if column < row.count - 1 {
                    line += String(repeating: " ", count: widths[column] - cell.count + 2)
                }
            }
            return line
        }.joined(separator: "\n")
    }
}

/// Formatting helpers for readable reports.
public enum ReportFormat {
    /// "6.59 GiB", "512 KiB", "100 B": bytes in the largest binary unit, two decimals.
    public static func bytes(_ value: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var unit = 0
        var scaled = Double(value)
        while scaled >= 1024, unit < units.count - 1 {
            scaled /= 1024
            unit += 1
        }
        if unit == 0 { return "\(value) B" }
        let hundredths = Int((scaled * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction) \(units[unit])"
    }

    /// "0-3,8,10-11": a sorted list of integers as ranges, the sysfs cpulist form.
    public static func ranges(_ values: [Int]) -> String {
        var parts: [String] = []
        var index = 0
        let sorted = values.sorted()
        while index < sorted.count {
            var end = index
            while end + 1 < sorted.count, sorted[end + 1] == sorted[end] + 1 { end += 1 }
            parts.append(end == index ? "\(sorted[index])" : "\(sorted[index])-\(sorted[end])")
            index = end + 1
        }
        return parts.isEmpty ? "-" : parts.joined(separator: ",")
    }
}
