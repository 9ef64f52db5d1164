import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

@Suite struct PhysicalTranslationTests {
    /// Synthetic frames: runs of varying length at scattered addresses.
    func synthetic(pages: Int, pageSize: Int, seed: UInt64) -> [UInt64] {
        var state = seed
        func next() -> UInt64 { state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 20 }
        var frames: [UInt64] = []
        var used = Set<UInt64>()
        while frames.count < pages {
            var frame = next() % 1_000_000
            let run = Int(next() % 5) + 1
            for _ in 0..<run where frames.count < pages && !used.contains(frame) {
                used.insert(frame); frames.append(frame); frame += 1
            }
        }
        return frames.map { $0 * UInt64(pageSize) }
    }

    @Test(arguments: [1, 2, 7, 512, 4096])
    func everyPageRoundTripsAndAbsentFramesAreNil(pages: Int) {
        let pageSize = 2 << 20
        let physical = synthetic(pages: pages, pageSize: pageSize, seed: UInt64(pages))
        let t = PhysicalTranslation(pagePhysical: physical, pageSize: PageSize(rawValue: pageSize)!)
        let present = Set(physical)
        for (page, address) in physical.enumerated() {
            for within in [0, 1, pageSize - 1] {
                #expect(t.offset(of: PhysicalAddress(address + UInt64(within))) == page * pageSize + within)
                #expect(t.physicalAddress(atOffset: page * pageSize + within) == PhysicalAddress(address + UInt64(within)))
            }
            let neighbour = address + UInt64(pageSize)
            if !present.contains(neighbour) { #expect(t.offset(of: PhysicalAddress(neighbour)) == nil) }
        }
        #expect(t.offset(of: PhysicalAddress(UInt64.max)) == nil)
        #expect(t.runs.reduce(0) { $0 + $1.pages } == pages)
        // Runs join exactly the pages that are adjacent in both spaces.
        let joins = zip(physical, physical.dropFirst()).filter { $1 == $0 + UInt64(pageSize) }.count
        #expect(t.runs.count == pages - joins)
        #expect(t.pagesInPhysicalOrder.map(\.physical.rawValue) == physical.sorted())
    }

    @Test func contiguousLengthStopsAtRunEnds() {
        let p = 4096
        let t = PhysicalTranslation(pagePhysical: [0x10000, 0x11000, 0x12000, 0x50000, 0x51000], pageSize: PageSize(rawValue: p)!)
        #expect(t.contiguousLength(atOffset: 0) == 3 * p)
        #expect(t.contiguousLength(atOffset: p + 10) == 2 * p - 10)
        #expect(t.contiguousLength(atOffset: 3 * p) == 2 * p)
        #expect(t.contiguousLength(atOffset: 5 * p) == 0)
        var length = 10 * p
        #expect(t.translate(offset: 100, length: &length) == PhysicalAddress(0x10000 + 100))
        #expect(length == 3 * p - 100)
        #expect(t.largestRunBytes == 3 * p)
    }
}
