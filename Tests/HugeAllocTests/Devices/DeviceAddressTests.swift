import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// While a pool is attached to an IOMMU container, the addresses it hands to
/// devices are the container's IOVAs; detached, its physical addresses again
/// (the switch VFIOContainer.attach/detach make, without VFIO).
@Suite(.usesHugepagePool) struct DeviceAddressTests {
    @Test(.enabled(if: isRoot && hasFree2M, "needs root (PFNs) and free 2 MiB hugepages"))
    func attachedPoolsHandOutIOVAsAndDetachedOnesPhysicalAddresses() throws {
        let pool = try PacketPool(configuration: PacketPoolConfiguration(count: 256, cacheSize: 0))
        let mempool = pool.mempool
        let physical = try #require(pool.buffer(at: 7)?.dataPhysicalAddress)
        #expect(physical.rawValue == Kernel.physicalAddress(UInt(bitPattern: try #require(pool.buffer(at: 7)).data)))

        // IOVA = virtual address, as VFIOContainer.attach(pool) sets it.
        let page = mempool.pageSize.bytes
        let base = UInt64(UInt(bitPattern: mempool.base))
        mempool.useDeviceAddresses(PhysicalTranslation(
            pagePhysical: (0..<(mempool.length / page)).map { base + UInt64($0 * page) }, pageSize: mempool.pageSize))
        pool.refreshDeviceAddresses()
        for index in stride(from: 0, to: 256, by: 17) {
            let b = try #require(pool.buffer(at: index))
            #expect(b.dataPhysicalAddress == PhysicalAddress(UInt64(UInt(bitPattern: b.data))))
            #expect(mempool.physicalAddress(of: b.data) == b.dataPhysicalAddress)
        }
        // Allocated buffers carry the IOVA too (the field survives allocation).
        let allocated = try #require(pool.allocate())
        #expect(allocated.dataPhysicalAddress == PhysicalAddress(UInt64(UInt(bitPattern: allocated.data))))
        pool.free(allocated)

        // Detached: physical addresses again.
        mempool.useDeviceAddresses(nil)
        pool.refreshDeviceAddresses()
        #expect(pool.buffer(at: 7)?.dataPhysicalAddress == physical)
    }
}
