/// Parsers for the line formats of /proc and /sys. Each takes the file's
/// path only to name it in errors.
package enum KernelText {
    /// Lines of `text`, numbered from 1, without the trailing empty line.
    package static func lines(_ text: String) -> [(number: Int, text: Substring)] {
        var result: [(Int, Substring)] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            result.append((index + 1, line))
        }
        if let last = result.last, last.1.isEmpty { result.removeLast() }
        return result
    }

    /// The value of `key` in a meminfo-style file ("HugePages_Total:   600",
    /// "Hugepagesize:    2048 kB", "Node 0 MemTotal:  6908108 kB"), in
    /// bytes when the line has a "kB" unit. `linePrefix` is "Node 0 " for
    /// node meminfo files. Nil when the key is absent.
    package static func meminfoValue(
        _ text: String, key: String, linePrefix: String = "", path: String
    ) throws(KernelFileError) -> Int? {
        let label = linePrefix + key + ":"
        for (number, line) in lines(text) where line.hasPrefix(label) {
            guard let field = kilobyteLine(line) else {
                throw .malformed(path: path, line: number, text: String(line),
                                 expected: "\"\(label) <count>\" or \"\(label) <number> kB\"")
            }
            return field.value
        }
        return nil
    }

    /// Splits a "Name:   value" or "Name:   value kB" line of /proc/meminfo,
    /// /proc/PID/status or smaps into the name and the value, in bytes when
    /// the unit is kB. Nil when the line has another shape or the value does
    /// not fit in 64 bits.
    package static func kilobyteLine(_ line: Substring) -> (name: Substring, value: Int)? {
        guard let colon = line.firstIndex(of: ":") else { return nil }
        let fields = line[line.index(after: colon)...].split(whereSeparator: \.isWhitespace)
        guard fields.count == 1 || (fields.count == 2 && fields[1] == "kB"),
              let value = Int(fields[0]), value >= 0 else { return nil }
        if fields.count == 1 { return (line[..<colon], value) }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: 1024)
        return overflow ? nil : (line[..<colon], bytes)
    }

    /// A CPU or node list such as "0-3,8-11" (sysfs `cpulist`); empty text is
    /// an empty list (a memory-only node).
    package static func cpuList(_ text: String, path: String) throws(KernelFileError) -> [Int] {
        let line = text.trimmingWhitespace()
        if line.isEmpty { return [] }
        let bad = KernelFileError.malformed(path: path, line: 1, text: String(line),
                                           expected: "a CPU list such as \"0-3,8-11\"")
        var ranges: [ClosedRange<Int>] = []
        for part in line.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 1 || bounds.count == 2,
                  bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCIIDigit) }),
                  let low = Int(bounds[0]), let high = Int(bounds[bounds.count - 1]),
                  low <= high, high < 1 << 20
            else { throw bad }
            ranges.append(low...high)
        }
        // Overlapping ranges are merged before they are expanded, so the
        // result never holds more than 2^20 CPUs whatever the text repeats.
        var cpus: [Int] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            let start = max(range.lowerBound, (cpus.last ?? -1) + 1)
            if start <= range.upperBound { cpus.append(contentsOf: start...range.upperBound) }
        }
        return cpus
    }

    /// Whitespace-separated non-negative integers on the first line (sysfs `distance`).
    package static func integers(_ text: String, path: String) throws(KernelFileError) -> [Int] {
        let line = lines(text).first?.text ?? ""
        var values: [Int] = []
        for field in line.split(whereSeparator: \.isWhitespace) {
            guard let value = Int(field), value >= 0 else {
                throw .malformed(path: path, line: 1, text: String(line),
                                 expected: "space-separated node distances such as \"10 21\"")
            }
            values.append(value)
        }
        return values
    }

    /// The bracketed choice of a sysfs mode file: "always [madvise] never" → "madvise".
    package static func bracketedChoice(_ text: String, path: String) throws(KernelFileError) -> String {
        let line = lines(text).first?.text ?? ""
        guard let open = line.firstIndex(of: "["), let close = line[open...].firstIndex(of: "]"),
              line.index(after: open) < close
        else {
            throw .malformed(path: path, line: 1, text: String(line),
                             expected: "a list of modes with the active one in brackets, such as \"always [madvise] never\"")
        }
        return String(line[line.index(after: open)..<close])
    }

    /// A size directory name of /sys/kernel/mm/hugepages: "hugepages-2048kB" → 2 MiB.
    package static func hugepageDirectorySize(_ name: String, path: String) throws(KernelFileError) -> PageSize {
        let digits = name.dropFirst("hugepages-".count).dropLast("kB".count)
        guard name.hasPrefix("hugepages-"), name.hasSuffix("kB"), !digits.isEmpty,
              digits.allSatisfy(\.isASCIIDigit), let kilobytes = Int(digits),
              kilobytes < 1 << 40, let size = PageSize(rawValue: kilobytes * 1024)
        else {
            throw .malformed(path: path, line: 0, text: name,
                             expected: "a directory named hugepages-<power of two>kB")
        }
        return size
    }

    /// A /proc/mounts line, "<device> <mount point> <type> <options> <dump>
    /// <pass>", as its fields; nil when it has fewer than four. The one
    /// reading of mount lines: hugetlbfs mounts (the inventory), cgroup
    /// hierarchies (`HugetlbCgroup`) and /proc's own options (diagnostics).
    package static func mountEntry(_ line: Substring) -> MountEntry? {
        let fields = line.split(whereSeparator: \.isWhitespace)
        guard fields.count >= 4 else { return nil }
        return MountEntry(mountPoint: unescapeMountField(fields[1]), type: fields[2],
                          options: fields[3].split(separator: ","))
    }

    /// Undoes the octal escapes of /proc/mounts fields ("\040" is a space).
    package static func unescapeMountField(_ field: Substring) -> String {
        var bytes: [UInt8] = []
        let utf8 = Array(field.utf8)
        var index = 0
        while index < utf8.count {
            if utf8[index] == UInt8(ascii: "\\"), index + 3 < utf8.count,
               let value = UInt8(String(decoding: utf8[(index + 1)...(index + 3)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                index += 4
            } else {
                bytes.append(utf8[index])
                index += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// One mount of /proc/mounts (see ``KernelText/mountEntry(_:)``).
package struct MountEntry: Sendable {
    /// The mount point, octal escapes ("\040" for a space) undone.
    package var mountPoint: String
    /// The file-system type ("hugetlbfs", "cgroup2", "proc").
    package var type: Substring
    /// The comma-separated options ("rw", "pagesize=2M", "hugetlb").
    package var options: [Substring]
}
