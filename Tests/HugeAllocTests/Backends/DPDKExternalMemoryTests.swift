import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

@Suite(.usesHugepagePool) struct DPDKExternalMemoryTests {
    @Test(.enabled(if: canMakePools, "needs root (physical addresses) and free 2 MiB hugepages"))
    func describesAPoolForRteExtmemRegister() throws {
        let pool = try makePacketPool(count: 3000)
        let memory = DPDKExternalMemory(pool: pool)
        #expect(memory.validate() == nil)
        #expect(memory.virtualAddress == UInt(bitPattern: pool.mempool.base))
        #expect(memory.pageSize == .huge2M)
        #expect(memory.length == pool.mempool.length && memory.pageCount == memory.length / (2 << 20))
        #expect(memory.pageCount >= 4, "3000 buffers of 2240 bytes need at least 4 pages of 2 MiB")
        #expect(memory.hasAllIOVAs)
        // Every page's IOVA is the kernel's physical address of that page.
        for (page, iova) in memory.pageIOVAs.enumerated() {
            let expected = try #require(Kernel.physicalAddress(memory.virtualAddress + UInt(page * memory.pageSize.bytes)))
            #expect(iova.rawValue == expected)
        }
        // And it translates every buffer as the buffer itself says.
        for i in stride(from: 0, to: 3000, by: 97) {
            let b = try #require(pool.buffer(at: i))
            #expect(memory.iova(of: UInt(bitPattern: b.data)) == b.dataPhysicalAddress)
        }
        #expect(memory.iova(of: memory.virtualAddress + UInt(memory.length)) == nil)

        let virtual = DPDKExternalMemory(pool: pool, iovaMode: .virtual)
        #expect(virtual.pageIOVAs.enumerated().allSatisfy { $0.element.rawValue == UInt64(memory.virtualAddress) + UInt64($0.offset << 21) })
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func describesAMapping() throws {
        let mapping = try MemoryMapping(length: 4 << 20, options: MappingOptions(pageSize: .huge2M))
        let memory = DPDKExternalMemory(mapping: mapping)
        #expect(memory.validate() == nil && memory.pageCount == 2)
        #expect(memory.pageIOVAs[1].rawValue == Kernel.physicalAddress(UInt(bitPattern: mapping.base) + (2 << 20)))
    }

    @Test func checksRteExtmemRegisterRules() {
        let ok = DPDKExternalMemory(virtualAddress: 0x4000_0000, length: 4 << 20, pageSize: .huge2M,
                                    pageIOVAs: [PhysicalAddress(1 << 30), PhysicalAddress(3 << 30)])
        #expect(ok.validate() == nil)
        var bad = ok
        bad.virtualAddress += 4096
        #expect(bad.validate()?.contains("va_addr") == true)
        bad = ok
        bad.length += 1
        #expect(bad.validate()?.contains("len") == true)
        bad = ok
        bad.pageIOVAs.append(PhysicalAddress(0))
        #expect(bad.validate()?.contains("n_pages") == true)
        // page_sz must be a power of two: the PageSize type refuses anything else.
        #expect(PageSize(rawValue: 3 << 20) == nil)
        var unknown = ok
        unknown.pageIOVAs[1] = DPDKExternalMemory.badIOVA
        #expect(!unknown.hasAllIOVAs && unknown.iova(of: 0x4000_0000 + (2 << 20) + 5) == nil)
        #expect(ok.iova(of: 0x4000_0000 + (2 << 20) + 5) == PhysicalAddress((3 << 30) + 5))
    }
}
