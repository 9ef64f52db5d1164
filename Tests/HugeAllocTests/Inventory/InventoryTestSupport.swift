import Foundation
import Testing
@testable import HugeAlloc

/// Fixture trees and independent readers of the kernel's files for the inventory tests.
enum InventoryFixtures {
    /// The root of fixture tree `name` under Tests/HugeAllocTests/Fixtures.
    static func root(_ name: String) -> String {
        Bundle.module.resourceURL!.appendingPathComponent("Fixtures/\(name)").path
    }

    /// A writable copy of fixture `name` in a fresh temporary directory, with
    /// `edits` (relative path → new content) applied. Remove it with `remove`.
    static func copy(_ name: String, editing edits: [String: String]) throws -> String {
        let destination = FileManager.default.temporaryDirectory
            .appendingPathComponent("inventory-\(name)-\(UUID().uuidString)").path
        try FileManager.default.copyItem(atPath: root(name), toPath: destination)
        for (relative, content) in edits {
            try Data(content.utf8).write(to: URL(fileURLWithPath: destination + "/" + relative))
        }
        return destination
    }

    static func remove(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Reads the kernel's files with Foundation, independently of the inventory's readers.
enum KernelFiles {
    static func text(_ path: String) throws -> String {
        try String(contentsOfFile: path, encoding: .utf8)
    }

    static func integer(_ path: String) throws -> Int {
        try #require(Int(text(path).trimmingCharacters(in: .whitespacesAndNewlines)), "\(path) is not an integer")
    }

    /// The number after "key:" in /proc/meminfo (kB values stay in kB).
    static func meminfo(_ key: String, file: String = "/proc/meminfo") throws -> Int? {
        for line in try text(file).split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0] == key { return Int(parts[1].split(separator: " ").first ?? "") }
        }
        return nil
    }

    static func directory(_ path: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }

    /// Hugepage sizes in bytes from the names of /sys/kernel/mm/hugepages.
    static func hugepageSizes() -> [Int] {
        directory("/sys/kernel/mm/hugepages").compactMap { name in
            Int(name.dropFirst("hugepages-".count).dropLast(2)).map { $0 * 1024 }
        }.sorted()
    }

    /// The NUMA node ids of /sys/devices/system/node.
    static func nodeIDs() -> [Int] {
        directory("/sys/devices/system/node").compactMap { name in
            name.hasPrefix("node") ? Int(name.dropFirst(4)) : nil
        }.sorted()
    }

    /// Expands "0-3,8" the way the kernel documents cpulist.
    static func expand(_ list: String) -> [Int] {
        list.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").flatMap { part -> [Int] in
            let bounds = part.split(separator: "-").compactMap { Int($0) }
            return bounds.count == 2 ? Array(bounds[0]...bounds[1]) : bounds
        }
    }

    /// The effective capability mask of this process.
    static func capEff() throws -> UInt64 {
        let line = try #require(try text("/proc/self/status").split(separator: "\n").first { $0.hasPrefix("CapEff:") })
        return try #require(UInt64(line.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16))
    }

    static var isRoot: Bool { getuid() == 0 }
}

/// Reads `kernel` before and after `ours` until the kernel's value held
/// still across the read and `ours`, seen through `view`, agrees with it:
/// other tests move global hugepage counters while this one runs. After
/// five rounds it returns the last reading, which the caller's expectation
/// then judges, so a real disagreement still fails.
func stableReading<K: Equatable, O>(
    _ kernel: () throws -> K, _ ours: () throws -> O, _ view: (O) throws -> K
) throws -> (kernel: K, ours: O) {
    var last: (K, O)?
    for _ in 0..<5 {
        let before = try kernel()
        let value = try ours()
        let after = try kernel()
        last = (after, value)
        if before == after, try view(value) == after { break }
    }
    return last!
}
