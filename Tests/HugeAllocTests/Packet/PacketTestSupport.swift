import Foundation
import Testing
@testable import HugeAlloc

/// The physical address of the byte at `address`, read straight from
/// /proc/self/pagemap (independently of the library); nil when not present
/// or hidden.
func pagemapPhysicalAddress(_ address: UInt) -> UInt64? {
    let page = UInt(getpagesize())
    guard let handle = FileHandle(forReadingAtPath: "/proc/self/pagemap") else { return nil }
    defer { try? handle.close() }
    guard (try? handle.seek(toOffset: UInt64(address / page) * 8)) != nil,
          let data = try? handle.read(upToCount: 8), data.count == 8
    else { return nil }
    let entry = data.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    let pfn = entry & ((1 << 55) - 1)
    guard entry & (1 << 63) != 0, pfn != 0 else { return nil }
    return pfn * UInt64(page) + UInt64(address % page)
}

/// A small packet pool on 2 MiB pages for tests.
func makePacketPool(
    count: Int = 512, headroom: Int = 128, dataRoom: Int = 2048, cacheSize: Int = 32
) throws -> PacketPool {
    try PacketPool(configuration: PacketPoolConfiguration(
        count: count, headroom: headroom, dataRoom: dataRoom, cacheSize: cacheSize))
}

let canMakePools = isRoot && hasFree2M

/// Bytes the kernel counts as pinned for this process (/proc/self/status VmPin).
func processPinnedBytes() -> Int {
    let text = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") where line.hasPrefix("VmPin:") {
        return (Int(line.split(separator: " ")[1]) ?? 0) * 1024
    }
    return 0
}

/// Runs `body` and checks, from this process's own counters (immune to
/// other engineers' processes), that afterwards it maps no more hugetlb
/// memory and locks and pins no more bytes than before. The kernel releases
/// some pins (closed AF_XDP sockets, io_uring rings) from a work queue, so a
/// mismatch is re-read for up to two seconds; this also keeps one test's
/// deferred release from landing in the next test's counts.
func expectNoProcessLeak(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) rethrows {
    func sample() -> [Int] { [processHugetlbBytes(), processLockedBytes(), processPinnedBytes()] }
    let before = sample()
    try body()
    var after = sample()
    for _ in 0..<100 where after != before {
        usleep(20_000)
        after = sample()
    }
    #expect(after == before, "hugetlb, locked, pinned bytes before \(before), after \(after)", sourceLocation: sourceLocation)
    // Give deferred kernel releases not counted here (AF_XDP UMEM pins) a moment.
    usleep(50_000)
}
