import Foundation
import HugeAlloc
import Synchronization
import Testing

/// This process's bytes of hugetlb memory (Shared_Hugetlb + Private_Hugetlb
/// in /proc/self/smaps_rollup, every hugepage size).
public func processHugetlbBytes() -> Int {
    let text = (try? Kernel.text("/proc/self/smaps_rollup")) ?? ""
    return text.split(separator: "\n").reduce(0) { sum, line in
        guard line.hasPrefix("Shared_Hugetlb:") || line.hasPrefix("Private_Hugetlb:") else { return sum }
        return sum + (Int(line.split(separator: " ")[1]) ?? 0) * 1024
    }
}

/// Bytes locked by this process (/proc/self/status VmLck).
public func processLockedBytes() -> Int { Kernel.statusBytes("VmLck") }

/// Bytes the kernel counts as pinned for this process (/proc/self/status VmPin).
public func processPinnedBytes() -> Int { Kernel.statusBytes("VmPin") }

/// This process's open descriptors that hold memory without a mapping: a
/// memfd (hugetlb or not), or a file on a hugetlbfs mount (an O_TMPFILE
/// shows as "<mount>/#<inode> (deleted)"). Reads /proc/self/fd.
public func processMemoryFileDescriptors() -> [String] {
    let mounts = hugetlbfsMountPoints().map { $0 + "/" }
    return Kernel.directory("/proc/self/fd").compactMap { fd -> String? in
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)"),
              target.hasPrefix("/memfd:") || mounts.contains(where: target.hasPrefix)
        else { return nil }
        return "\(fd) -> \(target)"
    }
}

/// What this process holds that a test could leak, from its own counters:
/// other processes on the machine cannot move them, and within this process
/// only the test holding the hugepage pool's turn does.
public struct ProcessMemory: Equatable, CustomStringConvertible {
    public var hugetlbBytes: Int
    public var lockedBytes: Int
    public var pinnedBytes: Int
    public var memoryFiles: [String]

    public static func sample() -> Self {
        Self(hugetlbBytes: processHugetlbBytes(), lockedBytes: processLockedBytes(), pinnedBytes: processPinnedBytes(),
             memoryFiles: processMemoryFileDescriptors())
    }

    public var description: String {
        "hugetlb \(hugetlbBytes), locked \(lockedBytes), pinned \(pinnedBytes) bytes, memory files \(memoryFiles)"
    }
}

/// Runs `body` and checks from this process's own counters that afterwards
/// it maps no more hugetlb memory, locks and pins no more bytes, holds no
/// more memfds or hugetlbfs files open, and left no file on hugetlbfs that
/// it could have made (``filesThisProcessCouldLeave()``).
///
/// The kernel releases some pins (closed AF_XDP sockets, io_uring rings)
/// from a work queue, so a mismatch is re-read for up to two seconds; a
/// pause after it keeps one test's deferred release out of the next test's
/// counts.
public func expectNoLeak(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) rethrows {
    let before = ProcessMemory.sample()
    let filesBefore = filesThisProcessCouldLeave()
    try body()
    var after = ProcessMemory.sample()
    for _ in 0..<100 where after != before {
        usleep(20_000)
        after = ProcessMemory.sample()
    }
    #expect(after == before, "before: \(before); after: \(after)", sourceLocation: sourceLocation)
    let left = filesThisProcessCouldLeave().subtracting(filesBefore)
    #expect(left.isEmpty, "file left on hugetlbfs: \(left.sorted())", sourceLocation: sourceLocation)
    usleep(50_000)
}

/// Every regular file on every hugetlbfs mount (/proc/mounts), one level deep.
public func filesOnHugetlbfsMounts() -> Set<String> {
    var files = Set<String>()
    for mount in hugetlbfsMountPoints() {
        for name in Kernel.directory(mount) { files.insert("\(mount)/\(name)") }
    }
    return files
}

/// The files on hugetlbfs this process could have left: all files on the
/// mounts it made (``withHugetlbfsMount(pageSize:options:_:)``), and on
/// other mounts the files the library names after this process when a
/// mount refuses O_TMPFILE ("hugealloc.<pid>.*"). Other processes' files on
/// shared mounts such as /dev/hugepages come and go and are not counted.
public func filesThisProcessCouldLeave() -> Set<String> {
    let own = mountsMadeHere.withLock { $0 }
    let prefix = "hugealloc.\(getpid())."
    return filesOnHugetlbfsMounts().filter { path in
        own.contains((path as NSString).deletingLastPathComponent) || (path as NSString).lastPathComponent.hasPrefix(prefix)
    }
}

private func hugetlbfsMountPoints() -> [String] {
    ((try? Kernel.hugetlbfsMounts()) ?? []).map(\.path)
}

private let mountsMadeHere = Mutex<Set<String>>([])

/// A private hugetlbfs mount in a fresh temporary directory for `body`,
/// unmounted and removed at its end. Calls `mount(2)`; needs root.
public func withHugetlbfsMount<T>(pageSize: PageSize, options: String = "", _ body: (String) throws -> T) throws -> T {
    var dir = NSTemporaryDirectory() + "hugealloc-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    dir = URL(fileURLWithPath: dir).resolvingSymlinksInPath().path  // as /proc/mounts names it
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let data = "pagesize=\(pageSize.bytes)" + (options.isEmpty ? "" : ",\(options)")
    guard mount("nodev", dir, "hugetlbfs", 0, data) == 0 else {
        throw SystemCallError(call: "mount", errno: .init(rawValue: errno), detail: "hugetlbfs at \(dir), \(data)")
    }
    mountsMadeHere.withLock { _ = $0.insert(dir) }
    defer {
        umount2(dir, Int32(MNT_DETACH))
        mountsMadeHere.withLock { _ = $0.remove(dir) }
    }
    return try body(dir)
}

/// An executable product (`inspect-memory`, `hugealloc-share-worker`) built
/// beside the running test bundle.
public func builtProductPath(_ name: String) -> String {
    let bundleDirectory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [bundleDirectory, bundleDirectory.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent(name).path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return bundleDirectory.appendingPathComponent(name).path
}
