import Foundation
import HugeAllocTestSupport
import SystemPackage
import Testing
@testable import HugeAlloc

/// Unreadable and malformed files give a typed error naming the file and line.
@Suite struct InventoryErrorTests {
    /// Reads a copy of `fixture` with one file replaced and returns the error.
    func error(in fixture: String = "four-node", replacing relative: String, with content: String) throws -> InventoryError {
        let copy = try FixtureCopy(fixture, editing: [relative: content])
        defer { copy.remove() }
        let root = copy.root
        let error = try #require(throws: InventoryError.self) { try SystemInventory.read(root: root) }
        #expect(error.path == root + "/" + relative, "the error names the file")
        return error
    }

    @Test func malformedFixtureNamesMeminfoAndLine() throws {
        let root = fixtureRoot("malformed")
        #expect(throws: InventoryError.malformed(MalformedFile(
            path: root + "/proc/meminfo", line: 20, text: "Hugepagesize:       2O48 kB",
            expected: "\"Hugepagesize: <count>\" or \"Hugepagesize: <number> kB\""))) {
            try SystemInventory.read(root: root)
        }
        let error = try #require(throws: InventoryError.self) { try SystemInventory.read(root: root) }
        #expect(error.description.contains("proc/meminfo:20"))
        #expect(error.description.contains("2O48"))
    }

    @Test func malformedCPUListOfOneNode() throws {
        let error = try error(replacing: "sys/devices/system/node/node1/cpulist", with: "4-7,x\n")
        guard case .malformed(let errorFile) = error, case let line = errorFile.line, case let text = errorFile.text else { Issue.record("\(error)"); return }
        #expect(line == 1)
        #expect(text == "4-7,x")
    }

    @Test func malformedHugepageCounter() throws {
        let error = try error(replacing: "sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages", with: "-1\n")
        #expect(error.description.contains("hugepages-1048576kB/free_hugepages:1"))
        let perNode = try self.error(replacing: "sys/devices/system/node/node2/hugepages/hugepages-2048kB/nr_hugepages",
                                     with: "two hundred\n")
        guard case .malformed(let perNodeFile) = perNode, perNodeFile.line == 1, perNodeFile.text == "two hundred" else { Issue.record("\(perNode)"); return }
    }

    @Test func malformedMountPageSize() throws {
        let mounts = try String(contentsOfFile: fixtureRoot("four-node") + "/proc/mounts", encoding: .utf8)
            + "none /mnt/odd hugetlbfs rw,pagesize=3M 0 0\nshort line\n"
        let error = try error(replacing: "proc/mounts", with: mounts)
        guard case .malformed(let errorFile) = error, case let line = errorFile.line, case let text = errorFile.text, case let expected = errorFile.expected else { Issue.record("\(error)"); return }
        #expect(line == 6)
        #expect(text == "none /mnt/odd hugetlbfs rw,pagesize=3M 0 0")
        #expect(expected.contains("pagesize="))
        let short = try self.error(replacing: "proc/mounts", with: "proc /proc proc rw 0 0\nshort line\n")
        guard case .malformed(let shortFile) = short, shortFile.line == 2, shortFile.text == "short line" else { Issue.record("\(short)"); return }
    }

    @Test func malformedMemlockAndCapabilityLines() throws {
        let limits = try String(contentsOfFile: fixtureRoot("four-node") + "/proc/self/limits", encoding: .utf8)
            .replacingOccurrences(of: "Max locked memory         unlimited", with: "Max locked memory         lots     ")
        let memlock = try error(replacing: "proc/self/limits", with: limits)
        guard case .malformed(let memlockFile) = memlock, memlockFile.line == 10, case let text = memlockFile.text else { Issue.record("\(memlock)"); return }
        #expect(text.hasPrefix("Max locked memory         lots"))

        let status = try error(replacing: "proc/self/status", with: "Name:\tx\nCapEff:\tzz\n")
        guard case .malformed(let statusFile) = status, statusFile.line == 2, statusFile.text == "CapEff:\tzz" else { Issue.record("\(status)"); return }
        let missing = try error(replacing: "proc/self/status", with: "Name:\tx\n")
        guard case .malformed(let missingFile) = missing, missingFile.line == 0, case let expected = missingFile.expected else { Issue.record("\(missing)"); return }
        #expect(expected.contains("CapEff"))
    }

    @Test func malformedDistanceAndNodeMeminfo() throws {
        let distance = try error(replacing: "sys/devices/system/node/node3/distance", with: "22 16 sixteen 10\n")
        guard case .malformed(let distanceFile) = distance, distanceFile.line == 1, distanceFile.text == "22 16 sixteen 10" else { Issue.record("\(distance)"); return }
        let meminfo = try error(replacing: "sys/devices/system/node/node0/meminfo",
                                with: "Node 0 MemTotal:  16777216 kB\nNode 0 MemFree:  many kB\n")
        guard case .malformed(let meminfoFile) = meminfo, meminfoFile.line == 2, meminfoFile.text == "Node 0 MemFree:  many kB" else { Issue.record("\(meminfo)"); return }
    }

    @Test func missingRequiredFileIsUnreadableWithErrno() throws {
        let copy = try FixtureCopy("one-node")
        defer { copy.remove() }
        let root = copy.root
        try FileManager.default.removeItem(atPath: root + "/proc/meminfo")
        #expect(throws: InventoryError.unreadable(UnreadableFile(path: root + "/proc/meminfo", errno: .noSuchFileOrDirectory))) {
            try SystemInventory.read(root: root)
        }
        // A directory where a file must be: EISDIR, not a crash.
        try FileManager.default.createDirectory(atPath: root + "/proc/meminfo", withIntermediateDirectories: false)
        let error = try #require(throws: InventoryError.self) { try SystemInventory.read(root: root) }
        #expect(error == .unreadable(UnreadableFile(path: root + "/proc/meminfo", errno: .isDirectory)))
        #expect(error.description.contains(root + "/proc/meminfo"))
    }
}
