import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// Checked packet pools: typed errors from a checked free (hostile-inputs #13).
@Suite(.usesHugepagePool) struct PacketCheckedTests {
    func checkedPool(count: Int = 64, cacheSize: Int = 0) throws -> PacketPool {
        try PacketPool(configuration: PacketPoolConfiguration(count: count, cacheSize: cacheSize, checked: true))
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"), arguments: [0, 32])
    func doubleFreeIsATypedErrorAndTheCountStaysExact(cacheSize: Int) throws {
        let pool = try checkedPool(cacheSize: cacheSize)
        let b = try #require(pool.allocate())
        try pool.freeChecked(b)
        #expect(throws: PacketPoolError.doubleFree(address: UInt(bitPattern: b.metadata), index: b.index)) {
            try pool.freeChecked(b)
        }
        #expect(pool.availableCount == 64, "the double free was not put back: 64 of 64, not 65")
        // The next two allocations are two different buffers.
        let x = try #require(pool.allocate()), y = try #require(pool.allocate())
        #expect(x != y)
        try pool.freeChecked(x)
        try pool.freeChecked(y)
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func foreignInteriorAndUnderflowAreRefused() throws {
        let pool = try checkedPool()
        let other = try checkedPool(count: 8)
        let stranger = try #require(other.allocate())
        #expect(throws: PacketPoolError.foreignBuffer(address: UInt(bitPattern: stranger.metadata))) {
            try pool.freeChecked(stranger)
        }
        try other.freeChecked(stranger)

        let b = try #require(pool.allocate())
        let interior = unsafe PacketBuffer(metadata: b.metadata + 8)
        #expect(throws: PacketPoolError.notABuffer(address: UInt(bitPattern: b.metadata) + 8)) {
            try pool.freeChecked(interior)
        }
        // Shared twice: two frees release it, a third is one too many.
        _ = b.retain()
        try pool.freeChecked(b)
        #expect(pool.availableCount == 63 && b.referenceCount == 1)
        try pool.freeChecked(b)
        #expect(pool.availableCount == 64)
        #expect(throws: PacketPoolError.doubleFree(address: UInt(bitPattern: b.metadata), index: b.index)) {
            try pool.freeChecked(b)
        }
        // A count already at zero (corrupted by the holder) is an underflow.
        let c = try #require(pool.allocate())
        unsafe c.referenceCounter.pointee.store(0, ordering: .relaxed)
        #expect(throws: PacketPoolError.referenceCountUnderflow(address: UInt(bitPattern: c.metadata), index: c.index)) {
            try pool.freeChecked(c)
        }
        unsafe c.referenceCounter.pointee.store(1, ordering: .relaxed)
        try pool.freeChecked(c)
        #expect(pool.availableCount == 64)
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func uncheckedPoolsSaySo() throws {
        let pool = try makePacketPool(count: 16)
        let b = try #require(pool.allocate())
        #expect(throws: PacketPoolError.checksDisabled) { try pool.freeChecked(b) }
        pool.free(b)
    }
}
