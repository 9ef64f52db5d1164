import Foundation
import Testing
import HugeAlloc
@testable import HugeAllocDiagnostics

/// `hugepages --clean` against an attacker-minded tester: every file it
/// removes and every file it leaves is reported, with the reason.
@Suite(.serialized) struct CleanHostileTests {
    static let isRoot = getuid() == 0

    /// A fixture tree in which unlinking /mnt/huge/sub/rtemap_2 fails with
    /// EBUSY (a file is bind-mounted over it) while /mnt/huge/held and
    /// /mnt/huge/rtemap_1 can be removed. Unmounts and removes everything.
    private func withOneUnremovableFile(_ body: (FixtureCopy) throws -> Void) throws {
        let copy = try FixtureCopy("two-nodes")
        defer { copy.remove() }
        let source = copy.root + "/bind-source", target = copy.root + "/mnt/huge/sub/rtemap_2"
        try Data(repeating: 0x5a, count: 8192).write(to: URL(fileURLWithPath: source))
        try #require(mount(source, target, nil, UInt(MS_BIND), nil) == 0, "bind mount: \(String(cString: strerror(errno)))")
        defer { umount2(target, Int32(MNT_DETACH)) }
        try body(copy)
    }

    @Test(.enabled(if: isRoot, "needs root to bind-mount over a file so that its unlink fails (EBUSY)"))
    func jsonReportsEveryRemovedAndEveryKeptFileWhenOneUnlinkFails() throws {
        try withOneUnremovableFile { copy in
            let result = try run(["hugepages", "--clean", "--json", "--root", copy.root])
            #expect(result.status == 1, "\(result.err)")
            let object = try #require(try jsonObject(result.out) as? [String: Any], "no JSON: \(result.out) \(result.err)")
            let removed = try #require(object["removed"] as? [[String: Any]])
            #expect(removed.map { $0["path"] as? String } == ["/mnt/huge/held", "/mnt/huge/rtemap_1"])
            let kept = try #require(object["not_removed"] as? [[String: Any]])
            #expect(kept.map { $0["path"] as? String } == ["/mnt/huge/sub/rtemap_2"])
            #expect((kept.first?["reason"] as? String)?.contains("busy") == true, "\(kept)")
            #expect(kept.first?["bytes"] as? Int == 8192)
            for path in ["/mnt/huge/held", "/mnt/huge/rtemap_1"] {
                #expect(!FileManager.default.fileExists(atPath: copy.root + path))
            }
            // One line on stderr names what was not removed.
            #expect(result.err.split(separator: "\n").count == 1)
            #expect(result.err.contains("/mnt/huge/sub/rtemap_2"), "\(result.err)")
        }
    }

    @Test(.enabled(if: isRoot, "needs root to bind-mount over a file so that its unlink fails (EBUSY)"))
    func textReportsEveryRemovedAndEveryKeptFileWhenOneUnlinkFails() throws {
        try withOneUnremovableFile { copy in
            let result = try run(["hugepages", "--clean", "--root", copy.root])
            #expect(result.status == 1, "\(result.err)")
            let lines = result.out.split(separator: "\n").map(String.init)
            let removedAt = try #require(lines.firstIndex(of: "removed stale files:"), "\(result.out)")
            let keptAt = try #require(lines.firstIndex(of: "not removed:"), "\(result.out)")
            #expect(lines[removedAt...].contains { $0.contains("/mnt/huge/rtemap_1") })
            #expect(lines[keptAt...].contains { $0.contains("/mnt/huge/sub/rtemap_2") && $0.contains("busy") }, "\(result.out)")
        }
    }

    /// A file that became busy between find and clean is reported as kept,
    /// in use, and is no failure (exit 0).
    @Test func aFileThatBecameBusyIsReportedAsInUseAndIsNoFailure() throws {
        let copy = try FixtureCopy("two-nodes")
        defer { copy.remove() }
        let stale = StaleHugepageFiles.find(in: copy.fs)
        try FileManager.default.createDirectory(atPath: copy.root + "/proc/77/fd", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: copy.root + "/proc/77/fd/9", withDestinationPath: "/mnt/huge/held")
        let report = StaleHugepageFiles.clean(stale, in: copy.fs)
        #expect(report.removed.map(\.path) == ["/mnt/huge/rtemap_1", "/mnt/huge/sub/rtemap_2"])
        #expect(report.notRemoved.map(\.file.path) == ["/mnt/huge/held"])
        #expect(report.notRemoved.first?.reason.description.contains("PID 77") == true)
        #expect(!report.hasFailures)
    }
}
