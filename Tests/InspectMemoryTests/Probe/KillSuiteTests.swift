import Foundation
import HugeAllocTestSupport
import Testing

/// The hugealloc-bench executable built beside this test bundle.
let benchPath: String = (inspectMemoryPath as NSString).deletingLastPathComponent + "/hugealloc-bench"

/// SIGKILL at random points of every creation path leaves nothing behind
/// (hostile-inputs, standing suite). Each path runs in a hugetlb cgroup of its
/// own, whose usage counters count this path's pages alone — whatever other
/// processes on the machine do with hugepages — and must be back at zero once
/// the killed processes are gone; a private hugetlbfs mount must hold no file.
@Suite(.usesHugepagePool, .serialized) struct KillSuiteTests {
    static let kills = 20

    /// (name, command line); `MOUNT` is replaced by the private hugetlbfs mount.
    static let paths: [(String, String)] = [
        ("mapping, anonymous", "'\(inspectMemoryPath)' probe --page-size 2M --pages 48 --hold"),
        ("mapping, memfd", "'\(inspectMemoryPath)' probe --page-size 2M --pages 48 --backing memfd --hold"),
        ("mapping, hugetlbfs", "'\(inspectMemoryPath)' probe --page-size 2M --pages 48 --backing hugetlbfs --mount MOUNT --hold"),
        ("contiguous block", "'\(inspectMemoryPath)' probe --page-size 2M --contiguous 32M --hold"),
        ("mempool", "'\(benchPath)' mempool --count 65535 --cache 512 --bulk 32 --seconds 1"),
        ("packet pool", "'\(benchPath)' create --buffers 262143"),
    ]

    @Test(.enabled(if: isRoot && usableHugetlbCgroupVersion != nil && freeHugepages(.huge2M) >= 128,
                   "needs root, a hugetlb cgroup controller and 128 free 2 MiB hugepages"),
          arguments: paths.map(\.0))
    func sigkillAtRandomPointsLeavesNothingBehind(path name: String) throws {
        let command = try #require(Self.paths.first { $0.0 == name }).1
        let version = try #require(usableHugetlbCgroupVersion)
        let mount = NSTemporaryDirectory() + "hugealloc-kill-\(getpid())"
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        try #require(shell("mount -t hugetlbfs -o pagesize=2M none '\(mount)'") == 0)
        defer { _ = shell("umount '\(mount)'"); try? FileManager.default.removeItem(atPath: mount) }
        try withHugetlbCgroup(version: version) { directory, files in
            var generator = SystemRandomNumberGenerator()
            var killedWhileRunning = 0
            for attempt in 0..<Self.kills {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: "/bin/sh")
                process.arguments = ["-c", "echo $$ > '\(directory)/cgroup.procs' && exec "
                                     + command.replacingOccurrences(of: "MOUNT", with: mount)]
                process.standardInput = Pipe()  // --hold waits on it; never closed before the kill
                process.standardOutput = FileHandle.nullDevice
                process.standardError = FileHandle.nullDevice
                try process.run()
                // Spread over start-up, mapping, prefaulting and use.
                usleep(UInt32(attempt * 6_000 + Int.random(in: 0..<8_000, using: &generator)))
                if process.isRunning { killedWhileRunning += 1 }
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
            #expect(killedWhileRunning >= Self.kills / 2, "most kills hit a running process (\(killedWhileRunning))")
            // The kernel frees a dead process's pages when its last reference goes.
            func usage(_ kind: String) -> Int {
                Int((try? String(contentsOfFile: directory + "/" + files(kind), encoding: .utf8))?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? -1
            }
            var used = usage("usage"), reserved = usage("rsvd-usage")
            for _ in 0..<50 where used != 0 || reserved != 0 {
                usleep(100_000)
                (used, reserved) = (usage("usage"), usage("rsvd-usage"))
            }
            #expect(used == 0, "\(name): hugepage bytes still charged to the cgroup after \(Self.kills) kills: \(used)")
            #expect(reserved == 0, "\(name): hugepage reservations still charged: \(reserved)")
            let left = (try? FileManager.default.contentsOfDirectory(atPath: mount)) ?? []
            #expect(left.isEmpty, "\(name): files left on the hugetlbfs mount: \(left)")
        }
    }
}
