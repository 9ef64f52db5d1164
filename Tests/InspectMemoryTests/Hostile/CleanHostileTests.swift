import Foundation
import HugeAllocTestSupport
import Testing
import HugeAlloc
@testable import HugeAllocDiagnostics

/// `hugepages --clean` against an attacker-minded tester: every file it
/// removes and every file it leaves is reported, with the reason.
@Suite(.usesHugepagePool, .serialized) struct CleanHostileTests {
    static let isRoot = getuid() == 0
    static let canMount = isRoot && freeHugepages(.huge2M) >= 4

    /// A new directory under the temporary directory, removed (after
    /// `cleanup`, e.g. unmounting) when `body` returns or throws.
    private func withScratch(_ name: String, cleanup: (String) -> Void = { _ in }, _ body: (String) throws -> Void) throws {
        let base = NSTemporaryDirectory() + "inspect-memory-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        defer {
            cleanup(base)
            try? FileManager.default.removeItem(atPath: base)
        }
        try body(base)
    }

    /// Unmounts everything mounted at or below `base` (deepest first, each
    /// as often as it is stacked), lazily.
    private static func unmountAll(below base: String) {
        for _ in 0..<8 {
            let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
            let points = mounts.split(separator: "\n").compactMap { line -> String? in
                let f = line.split(separator: " ")
                guard f.count > 1 else { return nil }
                let point = String(f[1]).replacingOccurrences(of: "\\040", with: " ")
                return point == base || point.hasPrefix(base + "/") ? point : nil
            }
            if points.isEmpty { return }
            for point in points.sorted(by: { $0.count > $1.count }) { umount2(point, Int32(MNT_DETACH)) }
        }
    }

    private func mountHugetlbfs(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try #require(mount("nodev", path, "hugetlbfs", 0, "pagesize=2M") == 0, "mount \(path): \(String(cString: strerror(errno)))")
    }

    /// A file on hugetlbfs holding one 2 MiB page, closed and unmapped (stale).
    private func makeStaleHugepageFile(_ path: String) throws {
        let fd = open(path, O_CREAT | O_RDWR, 0o600)
        try #require(fd >= 0, "open \(path): \(String(cString: strerror(errno)))")
        defer { close(fd) }
        try #require(ftruncate(fd, off_t(2 << 20)) == 0)
        let p = try #require(mmap(nil, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
        try #require(p != MAP_FAILED)
        memset(p, 0x5a, 2 << 20)
        munmap(p, 2 << 20)
    }

    /// A fixture tree in which unlinking /mnt/huge/sub/rtemap_2 fails with
    /// EBUSY (a file is bind-mounted over it) while /mnt/huge/held and
    /// /mnt/huge/rtemap_1 can be removed. Unmounts and removes everything.
    private func withOneUnremovableFile(_ body: (FixtureCopy) throws -> Void) throws {
        let copy = try FixtureCopy("two-node-dpdk-host")
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
        let copy = try FixtureCopy("two-node-dpdk-host")
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

    /// The owner of a directory above a hugetlbfs mount point renames it and
    /// puts a symbolic link in its place between find and clean: the clean
    /// must not follow it to a file of the same name elsewhere.
    @Test(.enabled(if: canMount, "needs root to mount hugetlbfs and free 2 MiB pages"))
    func aSymlinkSwappedInForAParentDirectoryDeletesNothingOutsideTheMount() throws {
        try withScratch("swap", cleanup: Self.unmountAll(below:)) { base in
            let parent = base + "/owned", mountPoint = parent + "/huge"
            let decoy = base + "/decoy/huge/rtemap_0"
            try mountHugetlbfs(mountPoint)
            try makeStaleHugepageFile(mountPoint + "/rtemap_0")
            try FileManager.default.createDirectory(atPath: base + "/decoy/huge", withIntermediateDirectories: true)
            try Data(repeating: 0x42, count: 4096).write(to: URL(fileURLWithPath: decoy))

            let found = StaleHugepageFiles.find(in: .live, mountPoint: mountPoint)
            try #require(found.map(\.path) == [mountPoint + "/rtemap_0"])
            // The swap: the mount moves along with its renamed parent.
            try #require(rename(parent, base + "/owned-moved") == 0)
            try #require(symlink(base + "/decoy", parent) == 0)

            let report = StaleHugepageFiles.clean(found, in: .live)
            #expect(FileManager.default.fileExists(atPath: decoy), "the file outside the mount was deleted")
            #expect(report.removed.isEmpty)
            #expect(report.notRemoved.map(\.file.path) == [mountPoint + "/rtemap_0"])
            #expect(report.notRemoved.first?.reason.isFailure == true, "\(report)")
            #expect(FileManager.default.fileExists(atPath: base + "/owned-moved/huge/rtemap_0"))
        }
    }

    /// A directory of another file system bind-mounted inside a hugetlbfs
    /// mount (and a file bind-mounted over a file there): the walk stays on
    /// the hugetlbfs and removes its stale file only.
    @Test(.enabled(if: canMount, "needs root to mount hugetlbfs and bind mounts, and free 2 MiB pages"))
    func filesBindMountedFromAnotherFileSystemAreNeitherListedNorDeleted() throws {
        try withScratch("bind-ext", cleanup: Self.unmountAll(below:)) { base in
            let mountPoint = base + "/huge", outside = base + "/ext"
            try mountHugetlbfs(mountPoint)
            try makeStaleHugepageFile(mountPoint + "/rtemap_0")
            try FileManager.default.createDirectory(atPath: outside, withIntermediateDirectories: true)
            try Data(repeating: 0x42, count: 4096).write(to: URL(fileURLWithPath: outside + "/precious"))
            try Data(repeating: 0x43, count: 4096).write(to: URL(fileURLWithPath: base + "/precious-file"))
            try FileManager.default.createDirectory(atPath: mountPoint + "/sub", withIntermediateDirectories: false)
            try #require(mount(outside, mountPoint + "/sub", nil, UInt(MS_BIND), nil) == 0)
            try #require(FileManager.default.createFile(atPath: mountPoint + "/over", contents: nil))
            try #require(mount(base + "/precious-file", mountPoint + "/over", nil, UInt(MS_BIND), nil) == 0)

            let result = try run(["hugepages", "--clean", "--json", "--mount", mountPoint])
            #expect(result.status == 0, "\(result.err)")
            let object = try #require(try jsonObject(result.out) as? [String: Any], "\(result.out) \(result.err)")
            #expect((object["removed"] as? [[String: Any]])?.map { $0["path"] as? String } == [mountPoint + "/rtemap_0"], "\(result.out)")
            #expect((object["not_removed"] as? [Any])?.isEmpty == true, "\(result.out)")
            #expect(FileManager.default.fileExists(atPath: outside + "/precious"), "a file on another file system was deleted")
            #expect(FileManager.default.fileExists(atPath: base + "/precious-file"), "a file bind-mounted over a hugetlbfs name was deleted")
        }
    }

    /// A tmpfs mounted over a hugetlbfs mount point hides the hugetlbfs; its
    /// files are not hugetlbfs files and are never removed.
    @Test(.enabled(if: isRoot, "needs root to mount hugetlbfs and tmpfs"))
    func aTmpfsMountedOverTheMountPointIsLeftAlone() throws {
        try withScratch("tmpfs-over", cleanup: Self.unmountAll(below:)) { base in
            let mountPoint = base + "/huge"
            try mountHugetlbfs(mountPoint)
            try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=1M") == 0)
            try Data(repeating: 0x42, count: 4096).write(to: URL(fileURLWithPath: mountPoint + "/precious"))

            let listed = try run(["hugepages", "--json", "--mount", mountPoint])
            let object = try #require(try jsonObject(listed.out) as? [String: Any], "\(listed.out) \(listed.err)")
            #expect((object["stale_files"] as? [Any])?.isEmpty == true, "\(listed.out)")
            let result = try run(["hugepages", "--clean", "--json", "--mount", mountPoint])
            #expect(result.status == 0, "\(result.err)")
            #expect(FileManager.default.fileExists(atPath: mountPoint + "/precious"), "a tmpfs file was deleted")
        }
    }

    // MARK: - locks

    /// A process that holds a lock on a file (as DPDK processes hold
    /// `LOCK_SH` on their hugepage files) is using it, even where /proc does
    /// not show it: the clean takes `LOCK_EX | LOCK_NB` first and leaves a
    /// locked file, reported as in use (no failure).
    @Test func aFileLockedByAnotherOpenFileIsReportedInUseAndKept() throws {
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer { copy.remove() }
        // This process is not in the fixture's /proc: only its lock shows the use.
        let fd = open(copy.root + "/mnt/huge/rtemap_1", O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        try #require(flock(fd, LOCK_SH) == 0)

        let result = try run(["hugepages", "--clean", "--json", "--root", copy.root])
        #expect(FileManager.default.fileExists(atPath: copy.root + "/mnt/huge/rtemap_1"), "a locked file was removed")
        #expect(result.status == 0, "\(result.err)")
        let object = try #require(try jsonObject(result.out) as? [String: Any], "\(result.out) \(result.err)")
        #expect((object["removed"] as? [[String: Any]])?.map { $0["path"] as? String } == ["/mnt/huge/held", "/mnt/huge/sub/rtemap_2"])
        let kept = try #require(object["not_removed"] as? [[String: Any]])
        #expect(kept.map { $0["path"] as? String } == ["/mnt/huge/rtemap_1"])
        #expect((kept.first?["reason"] as? String)?.contains("lock") == true, "\(kept)")
    }

    // MARK: - processes the tool cannot see

    static let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let unshareTool = ["/usr/bin/unshare", "/bin/unshare"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Runs `executable` with `arguments`; returns its status and output.
    private func runProgram(_ executable: String, _ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: outData, as: UTF8.self), String(decoding: errData, as: UTF8.self))
    }

    /// A hugetlbfs mount anyone may write to, holding `rtemap_0`: one 2 MiB
    /// page that this (root) process keeps mapped, with no descriptor open
    /// (readable by anyone, so any user can open and lock it); and
    /// `rtemap_1`, a truly stale file with one page.
    private func withFileMappedByThisProcess(_ name: String, _ body: (_ mountPoint: String, _ file: String) throws -> Void) throws {
        try withScratch(name, cleanup: Self.unmountAll(below:)) { base in
            let mountPoint = base + "/huge", file = mountPoint + "/rtemap_0"
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
            try #require(mount("nodev", mountPoint, "hugetlbfs", 0, "pagesize=2M,mode=0777") == 0)
            let fd = open(file, O_CREAT | O_RDWR, 0o644)
            try #require(fd >= 0)
            try #require(fchmod(fd, 0o644) == 0)
            try #require(ftruncate(fd, off_t(2 << 20)) == 0)
            let p = try #require(mmap(nil, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
            close(fd)
            try #require(p != MAP_FAILED)
            defer { munmap(p, 2 << 20) }
            memset(p, 0x5a, 2 << 20)
            try makeStaleHugepageFile(mountPoint + "/rtemap_1")
            try body(mountPoint, file)
        }
    }

    /// As user nobody the tool cannot read root's /proc/PID/maps, and the
    /// kernel grants no lease on root's files: it cannot prove any file
    /// unused, so it must remove none, say why, and exit 1.
    @Test(.enabled(if: canMount && setpriv != nil, "needs root, setpriv (util-linux), hugetlbfs and free 2 MiB pages"))
    func aNonRootCleanNeverRemovesAFileARootProcessMaps() throws {
        try withFileMappedByThisProcess("nonroot") { mountPoint, file in
            let result = try runProgram(try #require(Self.setpriv), [
                "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                inspectMemoryPath, "hugepages", "--clean", "--json", "--mount", mountPoint])
            #expect(FileManager.default.fileExists(atPath: file), "a file mapped by a root process was deleted by a non-root clean")
            #expect(result.status == 1, "\(result.err)")
            let object = try #require(try jsonObject(result.out) as? [String: Any], "\(result.out) \(result.err)")
            #expect((object["removed"] as? [Any])?.isEmpty == true)
            let kept = try #require(object["not_removed"] as? [[String: Any]], "\(result.out)")
            #expect(kept.map { $0["path"] as? String } == [file, mountPoint + "/rtemap_1"])
            // rtemap_0 (readable): opened and locked, but not proven unused.
            let reason = kept.first?["reason"] as? String ?? ""
            #expect(reason.contains("not proven unused") && reason.contains("could not read") && reason.contains("run as root"), "\(reason)")
            // rtemap_1 (root's, mode 0600): cannot even be opened to be locked.
            #expect((kept.last?["reason"] as? String)?.contains("run as root") == true, "\(kept)")
            #expect((object["unproven_reason"] as? String)?.contains("could not read") == true, "\(result.out)")
            #expect(result.err.contains("not proven unused"), "\(result.err)")
        }
    }

    /// In a new PID namespace with its own /proc the tool sees only the
    /// namespace's processes. The file mapped outside is kept (the kernel
    /// refuses a lease on it) and reported in use with the reason the user
    /// is invisible; the truly stale file is removed (the lease proves it).
    @Test(.enabled(if: canMount && unshareTool != nil, "needs root, unshare (util-linux), hugetlbfs and free 2 MiB pages"))
    func aCleanInsideAPIDNamespaceNeverRemovesAFileMappedOutsideIt() throws {
        try withFileMappedByThisProcess("pidns") { mountPoint, file in
            let listed = try runProgram(try #require(Self.unshareTool), [
                "-pf", "--mount-proc", inspectMemoryPath, "hugepages", "--json", "--mount", mountPoint])
            let listing = try #require(try jsonObject(listed.out) as? [String: Any], "\(listed.out) \(listed.err)")
            #expect((listing["stale_files"] as? [[String: Any]])?.map { $0["path"] as? String } == [mountPoint + "/rtemap_1"], "\(listed.out)")

            let result = try runProgram(try #require(Self.unshareTool), [
                "-pf", "--mount-proc", inspectMemoryPath, "hugepages", "--clean", "--json", "--mount", mountPoint])
            #expect(FileManager.default.fileExists(atPath: file), "a file mapped outside the PID namespace was deleted")
            #expect(result.status == 0, "\(result.err)")
            let object = try #require(try jsonObject(result.out) as? [String: Any], "\(result.out) \(result.err)")
            #expect((object["removed"] as? [[String: Any]])?.map { $0["path"] as? String } == [mountPoint + "/rtemap_1"], "\(result.out)")
            #expect(!FileManager.default.fileExists(atPath: mountPoint + "/rtemap_1"))
            // The mapped file was not even listed as stale inside the namespace.
            #expect((object["not_removed"] as? [Any])?.isEmpty == true, "\(result.out)")
        }
    }
}
