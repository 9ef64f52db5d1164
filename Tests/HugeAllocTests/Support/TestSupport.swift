import Foundation
import Testing
@testable import HugeAlloc

/// Conditions tests are gated on, with the reason shown when they skip.
let isRoot = getuid() == 0

/// Free (unreserved) pages of `size`, read from sysfs independently of the library.
func freeHugepages(_ size: PageSize) -> Int {
    let dir = "/sys/kernel/mm/hugepages/hugepages-\(size.bytes / 1024)kB"
    func read(_ name: String) -> Int {
        Int((try? String(contentsOfFile: "\(dir)/\(name)", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
    }
    return read("free_hugepages") - read("resv_hugepages")
}

let hasFree2M = freeHugepages(.huge2M) >= 32

/// This process's hugetlb bytes (Shared_Hugetlb + Private_Hugetlb in
/// /proc/self/smaps_rollup): immune to other processes on the machine.
func processHugetlbBytes() -> Int {
    let text = (try? String(contentsOfFile: "/proc/self/smaps_rollup", encoding: .utf8)) ?? ""
    return text.split(separator: "\n").reduce(0) { sum, line in
        guard line.hasPrefix("Shared_Hugetlb:") || line.hasPrefix("Private_Hugetlb:") else { return sum }
        return sum + (Int(line.split(separator: " ")[1]) ?? 0) * 1024
    }
}

/// Bytes locked by this process (/proc/self/status VmLck).
func processLockedBytes() -> Int {
    let text = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") where line.hasPrefix("VmLck:") {
        return (Int(line.split(separator: " ")[1]) ?? 0) * 1024
    }
    return 0
}

/// Every regular file on every hugetlbfs mount (/proc/mounts).
func filesOnHugetlbfsMounts() -> [String] {
    let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
    var files: [String] = []
    for line in mounts.split(separator: "\n") {
        let f = line.split(separator: " ")
        guard f.count > 2, f[2] == "hugetlbfs" else { continue }
        let dir = String(f[1])
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            files.append("\(dir)/\(name)")
        }
    }
    return files
}

/// Runs `body` and checks that afterwards this process maps no more hugetlb
/// memory and locks no more bytes than before, that the system-wide free
/// counts of 2 MiB and 1 GiB pages are back (other processes on the machine
/// can move them, so a mismatch is re-read once after a pause), and that no
/// file was left on a hugetlbfs mount.
func expectNoLeak(
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) rethrows {
    let sizes: [PageSize] = [.huge2M, .huge1G]
    let before = (processHugetlbBytes(), processLockedBytes(), sizes.map(freeHugepages), Set(filesOnHugetlbfsMounts()))
    try body()
    #expect(processHugetlbBytes() == before.0, "hugetlb memory still mapped", sourceLocation: sourceLocation)
    #expect(processLockedBytes() == before.1, "locked memory not released", sourceLocation: sourceLocation)
    var free = sizes.map(freeHugepages)
    if free != before.2 { usleep(200_000); free = sizes.map(freeHugepages) }
    #expect(free == before.2, "HugePages free before \(before.2), after \(free)", sourceLocation: sourceLocation)
    #expect(Set(filesOnHugetlbfsMounts()).subtracting(before.3).isEmpty, "file left on hugetlbfs", sourceLocation: sourceLocation)
}

/// A private hugetlbfs mount in a temporary directory, unmounted by `body`'s end.
func withHugetlbfsMount<T>(pageSize: PageSize, options: String = "", _ body: (String) throws -> T) throws -> T {
    let dir = NSTemporaryDirectory() + "hugealloc-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let data = "pagesize=\(pageSize.bytes)" + (options.isEmpty ? "" : ",\(options)")
    guard mount("none", dir, "hugetlbfs", 0, data) == 0 else {
        throw SystemCallError(call: "mount", errno: .init(rawValue: errno), detail: dir)
    }
    defer { umount2(dir, Int32(MNT_DETACH)) }
    return try body(dir)
}

/// Raw flags of `pfn` from /proc/kpageflags.
func kpageflags(_ pfn: UInt64) throws -> UInt64 {
    let handle = try #require(FileHandle(forReadingAtPath: "/proc/kpageflags"))
    defer { try? handle.close() }
    try handle.seek(toOffset: pfn * 8)
    let data = try #require(try handle.read(upToCount: 8))
    return data.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
}
let KPF_HUGE: UInt64 = 1 << 17

/// The error creating a mapping throws, or nil when it succeeds (the mapping
/// is released at once).
func mappingError(length: Int, options: MappingOptions = MappingOptions()) -> MappingError? {
    do {
        let mapping = try MemoryMapping(length: length, options: options)
        _ = consume mapping
        return nil
    } catch {
        return error
    }
}
