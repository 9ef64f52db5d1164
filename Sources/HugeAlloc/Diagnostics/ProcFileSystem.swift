/// Reads /proc and /sys below a root directory: "/" on a live machine, a
/// fixture tree in tests. Every diagnostics reader takes one.
public struct ProcFileSystem: Sendable {
    /// The directory that stands for "/".
    public var root: String

    public init(root: String = "/") {
        self.root = root
    }

    /// The live machine.
    public static let live = ProcFileSystem()

    /// `absolute` (such as "/proc/meminfo") below the root.
    public func path(_ absolute: String) -> String {
        if root == "/" || root.isEmpty { return absolute }
        let base = root.hasSuffix("/") ? String(root.dropLast()) : root
        return base + (absolute.hasPrefix("/") ? absolute : "/" + absolute)
    }

    /// The text of a file. Reads `path(absolute)` with `open(2)`/`read(2)`.
    public func text(_ absolute: String) throws(DiagnosticsError) -> String {
        do {
            return String(decoding: try Sys.readFile(atPath: path(absolute)), as: UTF8.self)
        } catch {
            throw .unreadable(path: absolute, error)
        }
    }

    /// The text of a file, or nil when it cannot be read.
    public func textIfPresent(_ absolute: String) -> String? {
        try? text(absolute)
    }

    /// The names in a directory; empty when it cannot be read.
    public func list(_ absolute: String) -> [String] {
        (try? Sys.directoryEntries(atPath: path(absolute))) ?? []
    }

    /// Whether the path exists below the root.
    public func exists(_ absolute: String) -> Bool {
        Sys.fileExists(atPath: path(absolute))
    }

    /// Every process ID listed in /proc, ascending.
    public func processIDs() -> [Int32] {
        list("/proc").compactMap { Int32($0) }.filter { $0 > 0 }.sorted()
    }

    /// The command name of a process (/proc/PID/comm), or nil when it has exited.
    public func command(of pid: Int32) -> String? {
        textIfPresent("/proc/\(pid)/comm").map { String($0.trimmingWhitespace()) }
    }
}

/// Splits a "Name:   value kB" line of /proc/meminfo or smaps into the name
/// and the value in bytes (a missing unit means a plain number).
func parseKilobyteField(_ line: Substring) -> (name: Substring, bytes: Int)? {
    guard let colon = line.firstIndex(of: ":") else { return nil }
    let name = line[..<colon]
    let rest = line[line.index(after: colon)...].split(separator: " ", omittingEmptySubsequences: true)
    guard let first = rest.first, let value = Int(first) else { return nil }
    if rest.count > 1, rest[1].lowercased() == "kb" { return (name, value << 10) }
    return (name, value)
}
