import Foundation
import HugeAlloc

/// The root of fixture tree `name`: a machine's /proc, /sys and /dev laid
/// out like /, one tree per machine, in Fixtures/ of this target.
public func fixtureRoot(_ name: String) -> String {
    Bundle.module.resourceURL!.appendingPathComponent("Fixtures/\(name)").path
}

/// A private, writable copy of a fixture tree in a fresh temporary
/// directory, with `edits` (path below the root → new content) applied.
/// Remove it with `remove()`.
public struct FixtureCopy {
    public let root: String
    package var fs: KernelFiles { KernelFiles(root: root) }

    public init(_ name: String, editing edits: [String: String] = [:]) throws {
        root = NSTemporaryDirectory() + "hugealloc-fixture-\(name)-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.copyItem(atPath: fixtureRoot(name), toPath: root)
        for (path, text) in edits { try write(path, text) }
    }

    public func remove() { try? FileManager.default.removeItem(atPath: root) }

    /// The full path of `path` below the root ("/proc/meminfo" or "proc/meminfo").
    public func path(_ path: String) -> String {
        root + (path.hasPrefix("/") ? path : "/" + path)
    }

    /// Writes `text` at `path` below the root, creating directories.
    public func write(_ path: String, _ text: String) throws {
        let full = self.path(path)
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: full, atomically: false, encoding: .utf8)
    }

    /// Writes 64-bit little-endian words at word indexes of a (sparse) file below the root.
    public func writeWords(_ path: String, _ words: [(index: UInt64, value: UInt64)]) throws {
        let full = self.path(path)
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: full, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: full))
        defer { try? handle.close() }
        for (index, value) in words {
            try handle.seek(toOffset: index * 8)
            try handle.write(contentsOf: withUnsafeBytes(of: value.littleEndian) { Data($0) })
        }
    }
}
