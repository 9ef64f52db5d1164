import Foundation
import HugeAllocTestSupport
import Testing
import HugeAlloc

/// `setup` against an attacker-minded tester: it validates everything before
/// it changes anything, rolls back what it changed when a later step fails,
/// and mounts a hugetlbfs at a path once, however the path is spelled.
@Suite(.usesHugepagePool, .serialized) struct SetupHostileTests {
    static let isRoot = getuid() == 0
    static let poolKnob = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"

    private func read(_ path: String) throws -> String {
        try String(contentsOfFile: path, encoding: .utf8)
    }

    /// Every mount point at or below `base` in /proc/mounts, as often as it is stacked.
    private static func mountPoints(below base: String) -> [String] {
        let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
        return mounts.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: " ")
            guard f.count > 1 else { return nil }
            let point = String(f[1])
            return point == base || point.hasPrefix(base + "/") ? point : nil
        }
    }

    private static func unmountAll(below base: String) {
        for _ in 0..<8 {
            let points = mountPoints(below: base)
            if points.isEmpty { return }
            for point in points.sorted(by: { $0.count > $1.count }) { umount2(point, Int32(MNT_DETACH)) }
        }
    }

    @Test func aMountPathThatIsARegularFileIsRefusedBeforeThePoolChanges() throws {
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer { copy.remove() }
        try copy.write("/mnt/afile", "not a directory\n")
        for (pages, mount) in [("2M:64", "/mnt/afile"), ("2M:64,1G:1", "/mnt/afile"), ("2M:64", "/mnt/afile/sub")] {
            let result = try run(["setup", "--pages", pages, "--mount", mount, "--root", copy.root])
            #expect(result.status == 64, "\(pages) \(mount): \(result.err)")
            #expect(result.err.split(separator: "\n").count == 1)
            #expect(result.err.contains("/mnt/afile") && result.err.contains("not a directory"), "\(result.err)")
            #expect(result.out.isEmpty, "\(result.out)")
        }
        // Nothing changed: the pools and the file are as they were.
        #expect(try read(copy.root + "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages") == "512\n")
        #expect(try read(copy.root + "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages") == "2\n")
        #expect(try read(copy.root + "/mnt/afile") == "not a directory\n")
    }

    /// The fixture offers a 32 MiB page size this kernel does not, so the
    /// pool write (to the fixture) succeeds and mount(2) then fails
    /// (EINVAL): the pool must be restored and the directory removed.
    @Test(.enabled(if: isRoot, "needs root to reach mount(2)"))
    func aFailedMountRollsThePoolBack() throws {
        guard !FileManager.default.fileExists(atPath: "/sys/kernel/mm/hugepages/hugepages-32768kB") else { return }
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer {
            Self.unmountAll(below: copy.root)
            copy.remove()
        }
        for (name, value) in [("nr_hugepages", 0), ("free_hugepages", 0), ("resv_hugepages", 0),
                              ("surplus_hugepages", 0), ("nr_overcommit_hugepages", 0)] {
            try copy.write("/sys/kernel/mm/hugepages/hugepages-32768kB/\(name)", "\(value)\n")
        }
        let result = try run(["setup", "--pages", "32M:4", "--mount", "/mnt/new", "--root", copy.root])
        #expect(result.status == 1, "\(result.err)")
        #expect(result.err.split(separator: "\n").count == 1)
        #expect(result.err.contains("mount") && result.err.contains("rolled back"), "\(result.err)")
        #expect(try read(copy.root + "/sys/kernel/mm/hugepages/hugepages-32768kB/nr_hugepages") == "0\n")
        #expect(!FileManager.default.fileExists(atPath: copy.root + "/mnt/new"), "the directory setup created was left")
    }

    /// The same mount path with a trailing slash, doubled slashes or through
    /// a symbolic link is the same mount: setup mounts once.
    @Test(.enabled(if: isRoot, "needs root to write sysfs and mount"))
    func theSamePathSpelledDifferentlyIsMountedOnce() throws {
        let pool = try #require(Int(try read(Self.poolKnob).trimmingCharacters(in: .whitespacesAndNewlines)))
        let base = NSTemporaryDirectory() + "inspect-memory-setup-twice-\(getpid())"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer {
            Self.unmountAll(below: base)
            try? FileManager.default.removeItem(atPath: base)
        }
        let dir = base + "/huge"
        try FileManager.default.createSymbolicLink(atPath: base + "/link", withDestinationPath: dir)
        var spellings = [dir, dir + "/", dir.replacingOccurrences(of: "/", with: "//"), base + "/link", base + "/./huge"]
        let first = try run(["setup", "--pages", "2M:\(pool)", "--mount", spellings.removeFirst(), "--json"])
        #expect(first.status == 0, "\(first.err)")
        for spelling in spellings {
            let again = try run(["setup", "--pages", "2M:\(pool)", "--mount", spelling, "--json"])
            #expect(again.status == 0, "\(spelling): \(again.err)")
            let mount = try #require(((try jsonObject(again.out) as? [String: Any])?["mounts"] as? [[String: Any]])?.first, "\(again.out)")
            #expect(mount["mounted"] as? Bool == false, "\(spelling): \(again.out)")
        }
        #expect(Self.mountPoints(below: base) == [dir], "stacked mounts: \(Self.mountPoints(below: base))")
    }

    /// A hugetlbfs of another page size already at the path: refused before
    /// anything changes, never a second mount stacked on it.
    @Test(.enabled(if: isRoot && FileManager.default.fileExists(atPath: "/sys/kernel/mm/hugepages/hugepages-1048576kB"),
                   "needs root to mount, and a kernel with 1 GiB pages"))
    func aHugetlbfsOfAnotherSizeAtThePathIsRefused() throws {
        let pool = try #require(Int(try read(Self.poolKnob).trimmingCharacters(in: .whitespacesAndNewlines)))
        let dir = NSTemporaryDirectory() + "inspect-memory-setup-other-size-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer {
            Self.unmountAll(below: dir)
            try? FileManager.default.removeItem(atPath: dir)
        }
        try #require(mount("nodev", dir, "hugetlbfs", 0, "pagesize=1G") == 0)
        let result = try run(["setup", "--pages", "2M:\(pool)", "--mount", dir + "/"])
        #expect(result.status == 64, "\(result.err)")
        #expect(result.err.contains("1G pages is mounted there"), "\(result.err)")
        #expect(Self.mountPoints(below: dir) == [dir])
    }
}
