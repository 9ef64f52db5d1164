import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// A small packet pool on 2 MiB pages for tests.
func makePacketPool(
    count: Int = 512, headroom: Int = 128, dataRoom: Int = 2048, cacheSize: Int = 32
) throws -> PacketPool {
    try PacketPool(configuration: PacketPoolConfiguration(
        count: count, headroom: headroom, dataRoom: dataRoom, cacheSize: cacheSize))
}

let canMakePools = isRoot && hasFree2M
