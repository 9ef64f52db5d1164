import Foundation
import Testing
import HugeAlloc
@testable import HugeAllocDiagnostics

/// The path of a fixture tree copied into the test bundle.
func fixturePath(_ name: String) throws -> String {
    let base = try #require(Bundle.module.url(forResource: "Fixtures", withExtension: nil))
    return base.appendingPathComponent(name).path
}

/// A private, writable copy of a fixture tree; removed by `remove()`.
struct FixtureCopy {
    let root: String
    var fs: KernelFiles { KernelFiles(root: root) }

    init(_ name: String) throws {
        root = NSTemporaryDirectory() + "inspect-memory-fixture-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.copyItem(atPath: try fixturePath(name), toPath: root)
    }

    func remove() { try? FileManager.default.removeItem(atPath: root) }

    /// Writes `text` at `path` below the root, creating directories.
    func write(_ path: String, _ text: String) throws {
        let full = root + path
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: full, atomically: false, encoding: .utf8)
    }

    /// Writes 64-bit little-endian words at word indexes of a (sparse) file below the root.
    func writeWords(_ path: String, _ words: [(index: UInt64, value: UInt64)]) throws {
        let full = root + path
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

/// Decodes `inspect-memory … --json` output.
func jsonObject(_ text: String) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(text.utf8))
}

/// Free 2 MiB hugepages on the live machine (free minus reserved).
func free2MPages() -> Int { free2M() }
