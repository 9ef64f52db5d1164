import SystemPackage

/// The /proc and /sys files under one file-system root, read as text.
///
/// The live machine is root "/"; tests pass a fixture tree laid out the same
/// way (`<root>/proc/meminfo`, `<root>/sys/kernel/mm/hugepages/...`).
struct SystemFiles {
    /// The root with no trailing slash ("" for the live root "/").
    let prefix: String
    /// Whether this is the running machine (root "/"), so libraries and
    /// system calls may be consulted as well as files.
    let isLive: Bool

    init(root: String) {
        var trimmed = Substring(root)
        while trimmed.hasSuffix("/") { trimmed.removeLast() }
        prefix = String(trimmed)
        isLive = trimmed.isEmpty
    }

    /// The absolute path of `relative` ("proc/meminfo") under the root.
    func path(_ relative: String) -> String { prefix + "/" + relative }

    /// The whole text of a file that must exist.
    func text(_ relative: String) throws(InventoryError) -> String {
        let full = path(relative)
        do {
            return String(decoding: try Sys.readFile(atPath: full), as: UTF8.self)
        } catch {
            throw .unreadable(path: full, errno: error.errno)
        }
    }

    /// The text of a file, or nil if it does not exist (the feature is absent).
    func textIfPresent(_ relative: String) throws(InventoryError) -> String? {
        do {
            return try text(relative)
        } catch .unreadable(_, .noSuchFileOrDirectory) {
            return nil
        }
    }

    /// The names in a directory, sorted, or nil if it does not exist.
    func entriesIfPresent(_ relative: String) throws(InventoryError) -> [String]? {
        let full = path(relative)
        do {
            return try Sys.directoryEntries(atPath: full).sorted()
        } catch where error.errno == .noSuchFileOrDirectory || error.errno == .notDirectory {
            return nil
        } catch {
            throw .unreadable(path: full, errno: error.errno)
        }
    }

    func exists(_ relative: String) -> Bool { Sys.fileExists(atPath: path(relative)) }

    /// A file holding one non-negative decimal integer (sysfs counters).
    func integer(_ relative: String) throws(InventoryError) -> Int {
        let content = try text(relative)
        let line = content.split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
        guard let value = Int(line.trimmingWhitespace()), value >= 0 else {
            throw .malformed(path: path(relative), line: 1, text: String(line),
                             expected: "one non-negative decimal integer")
        }
        return value
    }
}

/// Parsers for the line formats of /proc and /sys. Each takes the file's
/// path only to name it in errors.
enum InventoryParse {
    /// Lines of `text`, numbered from 1, without the trailing empty line.
    static func lines(_ text: String) -> [(number: Int, text: Substring)] {
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
    static func meminfoValue(
        _ text: String, key: String, linePrefix: String = "", path: String
    ) throws(InventoryError) -> Int? {
        let label = linePrefix + key + ":"
        for (number, line) in lines(text) where line.hasPrefix(label) {
            let fields = line.dropFirst(label.count).split(whereSeparator: \.isWhitespace)
            let ok = fields.count == 1 || (fields.count == 2 && fields[1] == "kB")
            guard ok, let value = Int(fields[0]), value >= 0 else {
                throw .malformed(path: path, line: number, text: String(line),
                                 expected: "\"\(label) <count>\" or \"\(label) <number> kB\"")
            }
            if fields.count == 2 {
                let (bytes, overflow) = value.multipliedReportingOverflow(by: 1024)
                if overflow {
                    throw .malformed(path: path, line: number, text: String(line),
                                     expected: "a kB count that fits in 64 bits")
                }
                return bytes
            }
            return value
        }
        return nil
    }

    /// A CPU or node list such as "0-3,8-11" (sysfs `cpulist`); empty text is
    /// an empty list (a memory-only node).
    static func cpuList(_ text: String, path: String) throws(InventoryError) -> [Int] {
        let line = text.trimmingWhitespace()
        if line.isEmpty { return [] }
        let bad = InventoryError.malformed(path: path, line: 1, text: String(line),
                                           expected: "a CPU list such as \"0-3,8-11\"")
        var cpus: [Int] = []
        for part in line.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 1 || bounds.count == 2,
                  bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCIIDigit) }),
                  let low = Int(bounds[0]), let high = Int(bounds[bounds.count - 1]),
                  low <= high, high < 1 << 20
            else { throw bad }
            cpus.append(contentsOf: low...high)
        }
        return Array(Set(cpus)).sorted()
    }

    /// Whitespace-separated non-negative integers on the first line (sysfs `distance`).
    static func integers(_ text: String, path: String) throws(InventoryError) -> [Int] {
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
    static func bracketedChoice(_ text: String, path: String) throws(InventoryError) -> String {
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
    static func hugepageDirectorySize(_ name: String, path: String) throws(InventoryError) -> PageSize {
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

    /// Undoes the octal escapes of /proc/mounts fields ("\040" is a space).
    static func unescapeMountField(_ field: Substring) -> String {
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
