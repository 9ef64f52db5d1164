import Foundation
import SystemPackage
import Testing
@testable import HugeAlloc

/// Unreadable and malformed files give a typed error naming the file and line.
@Suite struct InventoryErrorTests {
    /// Reads a copy of `fixture` with one file replaced and returns the error.
    func error(in fixture: String = "four-node", replacing relative: String, with content: String) throws -> InventoryError {
        let root = try InventoryFixtures.copy(fixture, editing: [relative: content])
        defer { InventoryFixtures.remove(root) }
        let error = try #require(throws: InventoryError.self) { try SystemInventory.read(root: root) }
        #expect(error.path == root + "/" + relative, "the error names the file")
        return error
    }

    @Test func malformedFixtureNamesMeminfoAndLine() throws {
        let root = InventoryFixtures.root("malformed")
        #expect(throws: InventoryError.malformed(
            path: root + "/proc/meminfo", line: 20, text: "Hugepagesize:       2O48 kB",
            expected: "\"Hugepagesize: <count>\" or \"Hugepagesize: <number> kB\"")) {
            try SystemInventory.read(root: root)
        }
        let error = try #require(throws: InventoryError.self) { try SystemInventory.read(root: root) }
        #expect(error.description.contains("proc/meminfo:20"))
        #expect(error.description.contains("2O48"))
    }

    @Test func malformedCPUListOfOneNode() throws {
        let error = try error(replacing: "sys/devices/system/node/node1/cpulist", with: "4-7,x\n")
        guard case .malformed(_, let line, let text, _) = error else { Issue.record("\(error)"); return }
        #expect(line == 1)
        #expect(text == "4-7,x")
    }

    @Test func malformedHugepageCounter() throws {
        let error = try error(replacing: "sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages", with: "-1\n")
        #expect(error.description.contains("hugepages-1048576kB/free_hugepages:1"))
        let perNode = try self.error(replacing: "sys/devices/system/node/node2/hugepages/hugepages-2048kB/nr_hugepages",
                                     with: "two hundred\n")
        guard case .malformed(_, 1, "two hundred", _) = perNode else { Issue.record("\(perNode)"); return }
    }

    @Test func malformedMountPageSize() throws {
        let mounts = try String(contentsOfFile: InventoryFixtures.root("four-node") + "/proc/mounts", encoding: .utf8)
            + "none /mnt/odd hugetlbfs rw,pagesize=3M 0 0\nshort line\n"
        let error = try error(replacing: "proc/mounts", with: mounts)
        guard case .malformed(_, let line, let text, let expected) = error else { Issue.record("\(error)"); return }
        #expect(line == 6)
        #expect(text == "none /mnt/odd hugetlbfs rw,pagesize=3M 0 0")
        #expect(expected.contains("pagesize="))
        let short = try self.error(replacing: "proc/mounts", with: "proc /proc proc rw 0 0\nshort line\n")
        guard case .malformed(_, 2, "short line", _) = short else { Issue.record("\(short)"); return }
    }

    @Test func malformedMemlockAndCapabilityLines() throws {
        let limits = try String(contentsOfFile: InventoryFixtures.root("four-node") + "/proc/self/limits", encoding: .utf8)
            .replacingOccurrences(of: "Max locked memory         unlimited", with: "Max locked memory         lots     ")
        let memlock = try error(replacing: "proc/self/limits", with: limits)
        guard case .malformed(_, 10, let text, _) = memlock else { Issue.record("\(memlock)"); return }
        #expect(text.hasPrefix("Max locked memory         lots"))

        let status = try error(replacing: "proc/self/status", with: "Name:\tx\nCapEff:\tzz\n")
        guard case .malformed(_, 2, "CapEff:\tzz", _) = status else { Issue.record("\(status)"); return }
        let missing = try error(replacing: "proc/self/status", with: "Name:\tx\n")
        guard case .malformed(_, 0, _, let expected) = missing else { Issue.record("\(missing)"); return }
        #expect(expected.contains("CapEff"))
    }

    @Test func malformedDistanceAndNodeMeminfo() throws {
        let distance = try error(replacing: "sys/devices/system/node/node3/distance", with: "22 16 sixteen 10\n")
        guard case .malformed(_, 1, "22 16 sixteen 10", _) = distance else { Issue.record("\(distance)"); return }
        let meminfo = try error(replacing: "sys/devices/system/node/node0/meminfo",
                                with: "Node 0 MemTotal:  16777216 kB\nNode 0 MemFree:  many kB\n")
        guard case .malformed(_, 2, "Node 0 MemFree:  many kB", _) = meminfo else { Issue.record("\(meminfo)"); return }
    }

    @Test func missingRequiredFileIsUnreadableWithErrno() throws {
        let root = try InventoryFixtures.copy("one-node", editing: [:])
        defer { InventoryFixtures.remove(root) }
        try FileManager.default.removeItem(atPath: root + "/proc/meminfo")
        #expect(throws: InventoryError.unreadable(path: root + "/proc/meminfo", errno: .noSuchFileOrDirectory)) {
            try SystemInventory.read(root: root)
        }
        // A directory where a file must be: EISDIR, not a crash.
        try FileManager.default.createDirectory(atPath: root + "/proc/meminfo", withIntermediateDirectories: false)
        let error = try #require(throws: InventoryError.self) { try SystemInventory.read(root: root) }
        #expect(error == .unreadable(path: root + "/proc/meminfo", errno: .isDirectory))
        #expect(error.description.contains(root + "/proc/meminfo"))
    }
}
