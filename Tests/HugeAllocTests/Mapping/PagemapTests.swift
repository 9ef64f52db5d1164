import Testing
import Foundation
import HugeAllocTestSupport
@testable import HugeAlloc


@Suite struct PagemapTests {
    @Test func decodesEveryField() {
        let e = PagemapEntry(rawValue: (1 << 63) | (1 << 61) | (1 << 56) | (1 << 55) | 0x1234)
        #expect(e.isPresent && !e.isSwapped && e.isFileOrSharedAnonymous && e.isExclusivelyMapped && e.isSoftDirty)
        #expect(e.pfn == 0x1234)
        let swapped = PagemapEntry(rawValue: (1 << 62) | (77 << 5) | 3)
        #expect(swapped.pfn == nil)
        #expect(swapped.swapLocation?.type == 3 && swapped.swapLocation?.offset == 77)
        #expect(PagemapEntry(rawValue: 1 << 63).pfn == nil, "PFN 0 of a present page is hidden, not trusted")
    }

    @Test(.enabled(if: isRoot, "reading PFNs needs CAP_SYS_ADMIN (run as root)"))
    func seesPhysicalAddressesAsRoot() {
        #expect(PagemapReader.physicalAddressesVisible())
    }

    @Test func untouchedPagesAreNotPresent() throws {
        let reader = try PagemapReader()
        let count = 16
        let region = try Sys.mmap(length: count * Sys.basePageSize, protection: .readWrite, flags: [.private, .anonymous])
        defer { try? Sys.munmap(region, length: count * Sys.basePageSize) }
        region.storeBytes(of: 1, toByteOffset: 3 * Sys.basePageSize, as: UInt8.self)
        let entries = try reader.entries(startingAt: UInt(bitPattern: region), count: count)
        #expect(entries.count == count)
        #expect(entries.enumerated().allSatisfy { $0.element.isPresent == ($0.offset == 3) })
    }

    @Test func missingProcessIsATypedError() {
        #expect(throws: PagemapError.cannotOpen(path: "/proc/999999999/pagemap", errno: .noSuchFileOrDirectory)) {
            _ = try PagemapReader(pid: 999_999_999)
        }
    }
}
