import Foundation

/// The fixture tree `hugepage-map` with its binary files written: the
/// kernel's frame tables (/proc/kpageflags, /proc/kpagecount) and the
/// pagemap of its two processes. The text files (memory blocks, pool
/// counters, smaps) are committed in Fixtures/hugepage-map.
///
/// The machine: 128 MiB memory blocks; node 0 has blocks 0-1 (0-256 MiB),
/// node 1 blocks 8-15 and 25 (1-2 GiB, a hole of 1 GiB + 128 MiB, then
/// 3200-3328 MiB).
///
/// | node | 2 MiB frame (physical / 2 MiB) | state |
/// | ---- | ------------------------------ | ----- |
/// | 0 | 8-15 | free (a run of 8) |
/// | 0 | 16, 17 | held by 4242 l2fwd |
/// | 0 | 18 | free |
/// | 0 | 19 | mapped (count 1) by no process read: in use |
/// | 0 | 20-23 | free |
/// | 0 | 24 | held by 4343 spdk_tgt |
/// | 0 | 25 | held by 4242 and 4343 (count 2) |
/// | 0 | 60-69 | free, across the block 0/1 boundary: the largest run (20 MiB at 0x7800000) |
/// | 1 | 1600-1603, 1607 | free (block 25); the node counts 4 free, so one holds file data |
///
/// and a 1 GiB page at 1 GiB on node 1 held by 4242. Frame 30 is a buddy
/// page and frame 40 a transparent hugepage: neither is a hugetlb frame.
public struct HugepageMapFixture {
    public let copy: FixtureCopy
    public var root: String { copy.root }

    public static let frames2M: [(index: UInt64, mapCount: UInt64)] = {
        let mapCounts: [UInt64: UInt64] = [16: 1, 17: 1, 19: 1, 24: 1, 25: 2]
        let indexes: [UInt64] = Array(8...25) + Array(60...69) + Array(1600...1603) + [1607]
        return indexes.map { (index: $0, mapCount: mapCounts[$0] ?? 0) }
    }()
    public static let gigabytePage: UInt64 = 1  // physical / 1 GiB

    public init(editing edits: [String: String] = [:]) throws {
        copy = try FixtureCopy("hugepage-map", editing: edits)
        let huge: UInt64 = 1 << 17, head: UInt64 = 1 << 15, tail: UInt64 = 1 << 16
        let mapped: UInt64 = 1 << 11 | 1 << 3  // MMAP, UPTODATE
        let pfnPer2M: UInt64 = 512, pfnPer1G: UInt64 = 262_144
        var flags: [(index: UInt64, value: UInt64)] = []
        var counts: [(index: UInt64, value: UInt64)] = []
        for (index, count) in Self.frames2M {
            let pfn = index * pfnPer2M
            flags.append((pfn, huge | head | (count > 0 ? mapped : 0)))
            flags.append((pfn + 1, huge | tail))
            counts.append((pfn, count))
        }
        flags.append((30 * pfnPer2M, 1 << 10))  // BUDDY
        flags.append((40 * pfnPer2M, head | 1 << 22 | 1 << 12))  // THP, ANON
        let giant = Self.gigabytePage * pfnPer1G
        flags.append((giant, huge | head | mapped))
        counts.append((giant, 1))
        for k in stride(from: pfnPer2M, to: pfnPer1G, by: Int(pfnPer2M)) { flags.append((giant + k, huge | tail)) }
        // The tables end with the last memory block (block 25: PFNs up to 26 × 32768).
        flags.append((26 * 32_768 - 1, 0))
        counts.append((26 * 32_768 - 1, 0))
        try copy.writeWords("/proc/kpageflags", flags)
        try copy.writeWords("/proc/kpagecount", counts)
        // pagemap: present bit and PFN at index virtual / 4096.
        func entry(_ pfn: UInt64) -> UInt64 { 1 << 63 | pfn }
        try copy.writeWords("/proc/4242/pagemap", [
            (0x7f40_0000_0000 >> 12, entry(16 * pfnPer2M)),
            (0x7f40_0020_0000 >> 12, entry(17 * pfnPer2M)),
            (0x7f40_0040_0000 >> 12, entry(25 * pfnPer2M)),
            (0x7f40_4000_0000 >> 12, entry(giant)),
        ])
        try copy.writeWords("/proc/4343/pagemap", [
            (0x7f50_0000_0000 >> 12, entry(24 * pfnPer2M)),
            (0x7f50_0020_0000 >> 12, entry(25 * pfnPer2M)),
        ])
    }

    public func remove() { copy.remove() }
}
