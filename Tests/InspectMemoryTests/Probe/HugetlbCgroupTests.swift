import Foundation
import HugeAllocTestSupport
import Testing
import HugeAlloc
@testable import HugeAllocDiagnostics

/// A hugetlb cgroup limit is named as such, with the limit to raise; the
/// pool is never "fixed" by a count below its size (hostile-inputs #7).
@Suite(.usesHugepagePool, .serialized) struct HugetlbCgroupTests {
    static let unified = hugetlbUnified

    static var v1Possible: Bool {
        // The v1 controller can be mounted only while cgroup2 does not use it.
        let controllers = (try? String(contentsOfFile: unified + "/cgroup.subtree_control", encoding: .utf8)) ?? ""
        return !controllers.contains("hugetlb")
    }

    static var v2Possible: Bool {
        ((try? String(contentsOfFile: unified + "/cgroup.controllers", encoding: .utf8)) ?? "").contains("hugetlb")
    }

    // cgroup2 first: once the v1 controller has been mounted, the kernel may
    // keep it bound to v1 until reboot, and cgroup2 cannot have it.
    @Test(.enabled(if: isRoot && freeHugepages(.huge2M) >= 8 && v2Possible,
                   "needs root, 8 free 2 MiB hugepages and the hugetlb controller free for cgroup2"))
    func cgroup2LimitsAreNamedWithTheLimitToRaise() throws {
        try limitsAreNamed(version: 2)
    }

    @Test(.enabled(if: isRoot && freeHugepages(.huge2M) >= 8 && v1Possible,
                   "needs root, 8 free 2 MiB hugepages and the hugetlb controller free for a v1 mount"))
    func cgroup1LimitsAreNamedWithTheLimitToRaise() throws {
        try limitsAreNamed(version: 1)
    }

    func limitsAreNamed(version: Int) throws {
        let totalBefore = try String(contentsOfFile: "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        for kind in ["rsvd", "fault"] {
            try withHugetlbCgroup(version: version) { directory, files in
                let file = directory + "/" + files(kind)
                try "4194304".write(toFile: file, atomically: false, encoding: .utf8)
                let (status, err) = try runInCgroup(directory, "probe --page-size 2M --pages 8")
                #expect(status == 1, "exit status for a refused probe: \(err)")
                #expect(err.contains("hugetlb cgroup") && err.contains(file), "names the cgroup limit: \(err)")
                #expect(err.contains("echo 16777216 > \(file)"), "raises the limit to usage + needed: \(err)")
                #expect(!err.contains("nr_hugepages"), "suggests no pool change: \(err)")
                // Within the limit the same probe works.
                let (ok, okErr) = try runInCgroup(directory, "probe --page-size 2M --pages 2")
                #expect(ok == 0, "2 pages fit under a 4 MiB limit: \(okErr)")
            }
        }
        let totalAfter = try String(contentsOfFile: "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(totalBefore == totalAfter)
    }
}

/// The cgroup2 hierarchy of this machine's hybrid layout.
let hugetlbUnified = "/sys/fs/cgroup/unified"

/// The hugetlb cgroup version a test can use here: cgroup2 while the
/// controller is free for it, else a v1 mount; nil when neither is possible.
var usableHugetlbCgroupVersion: Int? {
    if HugetlbCgroupTests.v2Possible { return 2 }
    if HugetlbCgroupTests.v1Possible { return 1 }
    return nil
}

/// A child cgroup under a hugetlb hierarchy of `version` (1: a v1
/// controller mounted for the test; 2: the cgroup2 hierarchy with
/// hugetlb enabled for its children), removed afterwards.
func withHugetlbCgroup(version: Int, _ body: (_ directory: String, _ files: (String) -> String) throws -> Void) throws {
    let fm = FileManager.default
    let name = "hugealloc-test-\(getpid())"
    var cleanups: [() -> Void] = []
    defer { for cleanup in cleanups.reversed() { cleanup() } }
    let parent: String
    if version == 1 {
        parent = fm.temporaryDirectory.appendingPathComponent("hugetlb-v1-\(getpid())").path
        try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
        cleanups.append { try? fm.removeItem(atPath: parent) }
        try #require(shell("mount -t cgroup -o hugetlb none '\(parent)'") == 0, "mount the v1 hugetlb controller")
        cleanups.append { _ = shell("umount '\(parent)'") }
    } else {
        parent = hugetlbUnified
        try #require(shell("echo +hugetlb > \(parent)/cgroup.subtree_control") == 0, "enable hugetlb for cgroup2 children")
        cleanups.append { _ = shell("echo -hugetlb > \(parent)/cgroup.subtree_control") }
    }
    let directory = parent + "/" + name
    try fm.createDirectory(atPath: directory, withIntermediateDirectories: false)
    cleanups.append { _ = rmdir(directory) }
    let files: (String) -> String = { kind in
        switch (version, kind) {
        case (1, "rsvd"): "hugetlb.2MB.rsvd.limit_in_bytes"
        case (1, "usage"): "hugetlb.2MB.usage_in_bytes"
        case (1, "rsvd-usage"): "hugetlb.2MB.rsvd.usage_in_bytes"
        case (1, _): "hugetlb.2MB.limit_in_bytes"
        case (_, "rsvd"): "hugetlb.2MB.rsvd.max"
        case (_, "usage"): "hugetlb.2MB.current"
        case (_, "rsvd-usage"): "hugetlb.2MB.rsvd.current"
        default: "hugetlb.2MB.max"
        }
    }
    try body(directory, files)
}

/// Runs inspect-memory inside the cgroup: a shell moves itself in, then execs.
func runInCgroup(_ directory: String, _ arguments: String) throws -> (status: Int32, err: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", "echo $$ > '\(directory)/cgroup.procs' && exec '\(inspectMemoryPath)' \(arguments)"]
    let err = Pipe()
    process.standardError = err
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    let data = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}


@discardableResult
func shell(_ command: String) -> Int32 {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return -1 }
    process.waitUntilExit()
    return process.terminationStatus
}

/// The cgroup reader and doctor's check on fixture trees of both versions.
@Suite struct HugetlbCgroupFixtureTests {
    func tree(_ files: [String: String]) throws -> String {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("cgroup-\(UUID().uuidString)").path
        for (path, content) in files {
            let full = root + "/" + path
            try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try content.write(toFile: full, atomically: false, encoding: .utf8)
        }
        return root
    }

    @Test func version1And2LimitsAreReadAndDoctorWarns() throws {
        let v1 = try tree([
            "proc/self/cgroup": "12:hugetlb:/jobs/a\n0::/\n",
            "proc/mounts": "cgroup /sys/fs/cgroup/hugetlb cgroup rw,relatime,hugetlb 0 0\n",
            "sys/fs/cgroup/hugetlb/jobs/a/hugetlb.2MB.limit_in_bytes": "9223372036854771712\n",
            "sys/fs/cgroup/hugetlb/jobs/a/hugetlb.2MB.usage_in_bytes": "0\n",
            "sys/fs/cgroup/hugetlb/jobs/a/hugetlb.2MB.rsvd.limit_in_bytes": "4194304\n",
            "sys/fs/cgroup/hugetlb/jobs/a/hugetlb.2MB.rsvd.usage_in_bytes": "2097152\n",
        ])
        defer { try? FileManager.default.removeItem(atPath: v1) }
        let one = try #require(HugetlbCgroup.read(pageSize: .huge2M, files: KernelFiles(root: v1)))
        #expect(one.version == 1 && one.directory == v1 + "/sys/fs/cgroup/hugetlb/jobs/a")
        #expect(one.fault.bytes == nil && one.reservation?.bytes == 4 << 20 && one.reservation?.usage == 2 << 20)
        let shortage = try #require(one.shortage(adding: 4 << 20))
        #expect(shortage.kind == .reservation && shortage.command == "echo 6291456 > \(one.directory)/hugetlb.2MB.rsvd.limit_in_bytes")
        #expect(one.shortage(adding: 2 << 20) == nil)
        let check = Doctor.cgroupCheck(one, poolBytes: 1 << 30)
        #expect(check.status == .warn && check.fix?.contains("rsvd.limit_in_bytes") == true)

        let v2 = try tree([
            "proc/self/cgroup": "0::/svc\n",
            "proc/mounts": "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n",
            "sys/fs/cgroup/svc/hugetlb.2MB.max": "max\n",
            "sys/fs/cgroup/svc/hugetlb.2MB.current": "0\n",
            "sys/fs/cgroup/svc/hugetlb.2MB.rsvd.max": "max\n",
            "sys/fs/cgroup/svc/hugetlb.2MB.rsvd.current": "0\n",
        ])
        defer { try? FileManager.default.removeItem(atPath: v2) }
        let two = try #require(HugetlbCgroup.read(pageSize: .huge2M, files: KernelFiles(root: v2)))
        #expect(two.version == 2 && two.fault.bytes == nil && two.reservation?.bytes == nil)
        #expect(two.shortage(adding: 1 << 40) == nil)
        #expect(Doctor.cgroupCheck(two, poolBytes: 1 << 30).status == .ok)
        // No hugetlb controller anywhere: no limits.
        #expect(HugetlbCgroup.read(pageSize: .huge2M, files: KernelFiles(root: try tree([
            "proc/self/cgroup": "0::/\n", "proc/mounts": "proc /proc proc rw 0 0\n"]))) == nil)
    }
}
