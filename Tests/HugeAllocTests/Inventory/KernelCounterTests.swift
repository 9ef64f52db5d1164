import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// What the kernel really prints in its counters, including the brief
/// negative `resv_hugepages` after a process that registered pool memory
/// with io_uring or AF_XDP exits.
@Suite struct KernelCounterTests {
    static let resv = "sys/kernel/mm/hugepages/hugepages-2048kB/resv_hugepages"

    @Test func negativeReservedCountReadsAsZeroWithAWarning() throws {
        // -8 as the kernel's unsigned long.
        let copy = try FixtureCopy("one-node", editing: [Self.resv: "18446744073709551608\n"])
        defer { copy.remove() }
        let root = copy.root
        let inventory = try SystemInventory.read(root: root)
        let pool = try #require(inventory.pool(.huge2M))
        #expect(pool.reserved == 0)
        #expect(inventory.warnings.contains { $0.contains(root + "/" + Self.resv) && $0.contains("below zero") })
        // The counters' own reader agrees.
        let counters = try HugepagePoolDirectory(.huge2M).counters(in: HugeAlloc.KernelFiles(root: root))
        #expect(counters.reserved == 0 && counters.clamped == [root + "/" + Self.resv])
    }

    @Test func aCounterThatIsNoNumberIsStillMalformed() throws {
        // Negative control: the tolerance is for the kernel's unsigned wrap only.
        for bad in ["-8", "lots", "18446744073709551616"] {
            let copy = try FixtureCopy("one-node", editing: [Self.resv: bad + "\n"])
            defer { copy.remove() }
            let root = copy.root
            let error = try #require(throws: InventoryError.self) { try SystemInventory.read(root: root) }
            guard case .malformed(let file) = error else { Issue.record("\(error)"); continue }
            #expect(file.path == root + "/" + Self.resv && file.text == bad)
        }
    }
}
