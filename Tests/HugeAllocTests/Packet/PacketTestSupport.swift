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
