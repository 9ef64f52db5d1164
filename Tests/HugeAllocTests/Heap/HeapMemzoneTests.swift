import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Synchronization
import Testing

/// Named memzones: reserve, look up and free by name; names unique per heap;
/// zero-filled, aligned and bounded as asked.
@Suite(.usesHugepagePool) struct HeapMemzoneTests {
    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func reserveLookUpAndFreeByName() throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests())
            let node = try #require(heap.statistics.nodes.first?.node)
            let specs: [(name: String, size: Int, alignment: Int, boundary: Int?)] = [
                ("admin-sq", 4096, 4096, 4096),
                ("admin-cq", 1024, 4096, 4096),
                ("prp-lists", 60_000, 4096, 64 << 10),
                ("rx-ring", 300_000, twoMiB, nil),
                ("bounce", 3 << 20, 64, 4 << 30),
            ]
            // Dirty the memory the zones will get, so zero-filling is seen.
            for spec in specs {
                let p = try heap.allocateRetryingPoolRace(spec.size, alignment: spec.alignment)
                memset(p, 0xCC, spec.size)
                heap.free(p)
            }
            var zones: [Memzone] = []
            for spec in specs {
                // A large block can lose a race for the pool (see allocateRetryingPoolRace): once more.
                let reserved = try? heap.reserve(name: spec.name, size: spec.size, alignment: spec.alignment,
                                                 boundary: spec.boundary, node: node)
                let zone = try reserved ?? heap.reserve(name: spec.name, size: spec.size, alignment: spec.alignment,
                                                        boundary: spec.boundary, node: node)
                #expect(zone.name == spec.name && zone.length == spec.size && zone.node == node)
                #expect(zone.alignment == spec.alignment && zone.boundary == spec.boundary)
                #expect(zone.address % UInt(spec.alignment) == 0 && zone.iova % UInt64(spec.alignment) == 0)
                #expect(zone.iova == heap.iova(of: zone.pointer))
                if let boundary = spec.boundary {
                    #expect(zone.iova / UInt64(boundary) == (zone.iova + UInt64(spec.size) - 1) / UInt64(boundary),
                            "\(spec.name) crosses a \(boundary)-byte boundary")
                }
                #expect(contiguityMismatches(zone.address, length: zone.length, expectedIOVA: zone.iova).isEmpty,
                        "\(spec.name) is not IOVA-contiguous per pagemap")
                #expect(allBytes(zone.pointer, zone.length, are: 0), "\(spec.name) is not zero-filled")
                memset(zone.pointer, 0x5A, zone.length)
                zones.append(zone)
            }
            #expect(heap.memzones == zones.sorted { $0.name < $1.name })
            for zone in zones { #expect(heap.memzone(named: zone.name) == zone) }
            #expect(heap.memzone(named: "absent") == nil)

            #expect(heapError { try heap.reserve(name: "admin-sq", size: 64) } == .memzoneExists(name: "admin-sq"))
            #expect(heap.memzone(named: "admin-sq") == zones[0], "the failed reservation left the zone alone")
            #expect(DMAHeapError.memzoneExists(name: "admin-sq").description.contains("memzone(named:)"))

            try heap.free(memzoneNamed: "admin-sq")
            #expect(heap.memzone(named: "admin-sq") == nil)
            #expect(heapError { try heap.free(memzoneNamed: "admin-sq") } == .memzoneNotFound(name: "admin-sq"))
            #expect(heapError { try heap.free(memzoneNamed: "never") } == .memzoneNotFound(name: "never"))
            let again = try heap.reserve(name: "admin-sq", size: 4096, alignment: 4096, boundary: 4096)
            #expect(allBytes(again.pointer, 4096, are: 0), "a zone reserved again over freed memory is zero-filled")
            for zone in zones.dropFirst() {
                #expect(allBytes(zone.pointer, zone.length, are: 0x5A), "\(zone.name) was changed by other zones")
                try heap.free(memzoneNamed: zone.name)
            }
            try heap.free(memzoneNamed: "admin-sq")
            #expect(heap.memzones.isEmpty)
            heap.trim()
            #expect(heap.statistics.liveBytes == 0 && heap.statistics.mappedBytes == 0)
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func namesAreCheckedAndUniqueAcrossThreads() throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests())
            let limit = DMAHeap.maximumMemzoneNameLength
            for name in ["", String(repeating: "n", count: limit + 1), String(repeating: "é", count: limit / 2 + 1)] {
                #expect(heapError { try heap.reserve(name: name, size: 64) } == .invalidMemzoneName(name: name, maximumLength: limit))
            }
            let longest = String(repeating: "n", count: limit)
            _ = try heap.reserve(name: longest, size: 64)
            try heap.free(memzoneNamed: longest)

            // Eight threads race for the same names: one winner each.
            let winners = Mutex<[String: Int]>([:])
            let losers = Atomic<Int>(0)
            runOnThreads(8) { thread in
                for k in 0..<20 {
                    do {
                        _ = try heap.reserve(name: "shared-\(k)", size: 64 << (k % 8))
                        winners.withLock { $0["shared-\(k)", default: 0] += 1 }
                    } catch {
                        if (error as? DMAHeapError) == .memzoneExists(name: "shared-\(k)") { losers.add(1, ordering: .relaxed) }
                    }
                }
            }
            #expect(winners.withLock { $0.count == 20 && $0.values.allSatisfy { $0 == 1 } }, "one winner per name")
            #expect(losers.load(ordering: .relaxed) == 20 * 7)
            #expect(heap.memzones.count == 20)
            for zone in heap.memzones { try heap.free(memzoneNamed: zone.name) }
            heap.trim()
            #expect(heap.statistics.liveBytes == 0)
        }
    }
}
