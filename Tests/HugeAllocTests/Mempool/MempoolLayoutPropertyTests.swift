import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// Sizing and layout are one computation: over random configurations the
/// memory a pool is sized for always holds `count` objects, whatever the
/// pages' contiguity, and is no larger than needed (less than one page of
/// slack). The layout itself is compared with a plain object-by-object
/// placement written independently here.
@Suite struct MempoolLayoutPropertyTests {
    /// A random configuration and page size.
    struct Case: CustomStringConvertible {
        var configuration: MempoolConfiguration
        var pageSize: Int

        var description: String {
            let c = configuration
            return "count \(c.count), object \(c.objectSize), alignment \(c.alignment), checked \(c.checked), "
                + "channels \(c.memoryChannels.map(String.init) ?? "nil"), page \(pageSize)"
        }

        static func random(using g: inout TestRNG) -> Case {
            let pageSize = [4096, 4096, 16384, 65536, 2 << 20, 2 << 20, 2 << 20, 1 << 30][g.below(8)]
            // Object sizes: small, around the classic buffer sizes, up to a page.
            let objectSize: Int
            switch g.below(4) {
            case 0: objectSize = 1 + g.below(256)
            case 1: objectSize = [1500, 2048, 2176, 2240, 4096, 9000][g.below(6)] + g.below(3) - 1
            case 2: objectSize = 1 + g.below(min(pageSize, 65536))
            default: objectSize = pageSize - g.below(min(pageSize, 4096))
            }
            let checked = g.below(3) == 0
            let alignment = 1 << [0, 3, 6, 6, 6, 7, 12, pageSize.trailingZeroBitCount][g.below(8)]
            let channels: Int? = g.below(2) == 0 ? nil : 1 + g.below(8)
            var c = MempoolConfiguration(
                count: 1, objectSize: objectSize, alignment: min(alignment, pageSize), checked: checked,
                memoryChannels: channels)
            let element = MempoolLayout.Element(objectSize: objectSize, alignment: c.alignment, checked: checked, channels: channels)
            // An element larger than a page needs contiguous pages: not a configuration sizing takes.
            if element.span > pageSize { return random(using: &g) }
            // At most about 64 pages or 60000 objects, so the plain placement stays quick.
            let stride = element.stride
            let limit = max(1, min(60_000, 64 * pageSize / stride))
            c.count = 1 + g.below(limit)
            return Case(configuration: c, pageSize: pageSize)
        }
    }

    /// The placement rule object by object, as the first version of the
    /// layout wrote it: each object starts where the previous stride ends
    /// and moves past every page boundary it would cross onto a page that
    /// does not follow physically. Returns each object's start offset.
    static func plainPlacement(
        count: Int, stride: Int, span: Int, pageSize: Int, pages: Int, contiguous: (Int) -> Bool
    ) -> [Int] {
        var starts: [Int] = []
        var offset = 0
        for _ in 0..<count {
            var start = offset
            while true {
                let end = start + span
                if end > pages * pageSize { return starts }
                var gap: Int? = nil
                for p in (start / pageSize)..<((end - 1) / pageSize) where !contiguous(p) {
                    gap = p
                    break
                }
                guard let gap else { break }
                start = (gap + 1) * pageSize
            }
            starts.append(start)
            offset = start + stride
        }
        return starts
    }

    /// Every object's start offset, from a layout's page tables.
    static func starts(of layout: MempoolLayout) -> [Int] {
        var result: [Int] = []
        for page in layout.pageFirstOffset.indices where layout.pageFirstOffset[page] >= 0 {
            for k in 0..<layout.pageObjectCount[page] {
                result.append(page * layout.pageSize + layout.pageFirstOffset[page] + k * layout.stride)
            }
        }
        return result
    }

    @Test func sizedMemoryAlwaysHoldsTheCountAndIsNoLargerThanNeeded() throws {
        var g = TestRNG(seed: 0x6D65_6D70_6F6F_6C)
        let cases = 400
        var slackBytes: [Int] = []
        var slackFractions: [Double] = []
        var pageSizes: [Int] = []
        for _ in 0..<cases {
            let t = Case.random(using: &g)
            let c = t.configuration
            let bytes = try MempoolLayout.memoryNeeded(configuration: c, pageSize: t.pageSize)
            #expect(bytes > 0 && bytes % t.pageSize == 0, "\(t)")
            #expect(try Mempool.memoryNeeded(for: c, pageSize: PageSize(rawValue: t.pageSize)!) == bytes)
            let pages = bytes / t.pageSize

            // Fits with no two pages contiguous (the worst case) ...
            let worst = try MempoolLayout.plan(configuration: c, length: bytes, pageSize: t.pageSize) { _ in false }
            let slack = bytes - worst.usedLength
            #expect(slack >= 0 && slack < t.pageSize, "\(t): \(slack) bytes of slack")
            slackBytes.append(slack)
            slackFractions.append(Double(slack) / Double(t.pageSize))
            pageSizes.append(t.pageSize)
            // ... and one page less does not.
            if pages > 1 {
                #expect(throws: MempoolError.self, "\(t): fits in one page less") {
                    _ = try MempoolLayout.plan(configuration: c, length: bytes - t.pageSize, pageSize: t.pageSize) { _ in false }
                }
            }
            #expect(MempoolLayout.objectsFitting(pages: pages, configuration: c, pageSize: t.pageSize) == c.count)

            // Any contiguity fits in the same memory, at the same or lower addresses.
            let runs = (0..<pages).map { _ in g.below(3) != 0 }
            let contiguous: (Int) -> Bool = { runs[$0] }
            let layout = try MempoolLayout.plan(configuration: c, length: bytes, pageSize: t.pageSize, contiguous: contiguous)
            #expect(layout.usedLength <= worst.usedLength, "\(t)")

            // Both layouts are the plain placement's, object by object.
            let element = layout.element
            for (l, rule) in [(worst, { (_: Int) in false }), (layout, contiguous)] {
                let plain = Self.plainPlacement(
                    count: c.count, stride: element.stride, span: element.span, pageSize: t.pageSize, pages: pages,
                    contiguous: rule)
                #expect(Self.starts(of: l) == plain, "\(t)")
            }
            // Every start is aligned, and no object crosses a boundary that is not contiguous.
            #expect(Self.starts(of: layout).allSatisfy { $0 % c.alignment == 0 }, "\(t)")
        }
        let mean = slackFractions.reduce(0, +) / Double(cases)
        let worstCase = slackFractions.indices.max { slackFractions[$0] < slackFractions[$1] }!
        print("mempool layout: \(cases) configurations, every one fits and none fits in one page less; "
            + "slack (mapped bytes after the last object, no page contiguous): mean \(String(format: "%.1f", mean * 100))% of a page, "
            + "max \(slackBytes[worstCase]) bytes of a \(pageSizes[worstCase])-byte page")
    }

    @Test func shorterCallerMemoryFitsWhatThePlainPlacementFits() throws {
        var g = TestRNG(seed: 42)
        for _ in 0..<200 {
            let t = Case.random(using: &g)
            let needed = try MempoolLayout.memoryNeeded(configuration: t.configuration, pageSize: t.pageSize)
            let pages = 1 + g.below(needed / t.pageSize)
            let runs = (0..<pages).map { _ in g.below(2) == 0 }
            let element = MempoolLayout.Element(
                objectSize: t.configuration.objectSize, alignment: t.configuration.alignment,
                checked: t.configuration.checked, channels: t.configuration.memoryChannels)
            let plain = Self.plainPlacement(
                count: t.configuration.count, stride: element.stride, span: element.span, pageSize: t.pageSize,
                pages: pages, contiguous: { runs[$0] })
            do {
                let layout = try MempoolLayout.plan(
                    configuration: t.configuration, length: pages * t.pageSize, pageSize: t.pageSize) { runs[$0] }
                #expect(plain.count == t.configuration.count && Self.starts(of: layout) == plain, "\(t)")
            } catch {
                guard case .countDoesNotFit(let requested, let fits, _, _) = error else {
                    Issue.record("\(t), \(pages) pages: \(error)")
                    continue
                }
                #expect(requested == t.configuration.count && fits == plain.count, "\(t), \(pages) pages")
            }
        }
    }

    @Test func theBenchmarkCaseThatDidNotFit() throws {
        // 2048-byte objects spread over 4 channels: a stride of 2112 bytes,
        // 992 objects in a page that starts with an object and 993 in a page
        // that does not... the old sizing assumed 993 in every page.
        let c = MempoolConfiguration(count: 32767, objectSize: 2048, memoryChannels: 4)
        let bytes = try Mempool.memoryNeeded(for: c, pageSize: .huge2M)
        let worst = try MempoolLayout.plan(configuration: c, length: bytes, pageSize: 2 << 20) { _ in false }
        #expect(worst.count == 32767 && bytes - worst.usedLength < 2 << 20)
        #expect(bytes == 34 * (2 << 20))
    }

    @Test func hugeElementsAndPageSizesAreTypedErrors() {
        #expect(throws: MempoolError.objectLargerThanPage(elementSize: 3 << 20, pageSize: 2 << 20, contiguousBytesAvailable: 2 << 20)) {
            _ = try Mempool.memoryNeeded(for: MempoolConfiguration(count: 1, objectSize: 3 << 20), pageSize: .huge2M)
        }
        #expect(throws: MempoolError.self) {
            _ = try Mempool.memoryNeeded(for: MempoolConfiguration(count: Int(Int32.max), objectSize: 1 << 29), pageSize: .huge1G)
        }
    }
}

/// Real pools on 2 MiB pages (and base pages): each maps exactly the memory
/// its layout needs and holds its count.
@Suite(.usesHugepagePool, .serialized, .enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
struct MempoolSizingPoolTests {
    @Test func randomPoolsMapExactlyWhatTheirLayoutNeeds() throws {
        var g = TestRNG(seed: 7)
        var slacks: [Int] = []
        for i in 0..<8 {
            var c = MempoolConfiguration(
                count: 1, objectSize: [64, 1500, 2048, 2048, 2176, 3000, 9000, 100_000][i] + g.below(64),
                alignment: [64, 64, 128, 4096][g.below(4)], cacheSize: g.below(2) * 64,
                backend: g.below(2) == 0 ? .ring : .stack, checked: g.below(2) == 0,
                memoryChannels: g.below(2) == 0 ? nil : 4)
            c.count = 1 + g.below(8 * (2 << 20) / c.objectSize)
            if i == 2 { c.count = 32767; c.alignment = 64; c.checked = false; c.memoryChannels = 4 }
            let pool = try Mempool(configuration: c)
            let needed = try Mempool.memoryNeeded(for: c, pageSize: .huge2M)
            #expect(pool.length == needed, "\(c)")
            let worst = try MempoolLayout.plan(configuration: c, length: needed, pageSize: 2 << 20) { _ in false }
            #expect(needed - worst.usedLength < 2 << 20)
            let objects = allObjects(pool)
            #expect(objects.count == c.count && Set(objects).count == c.count)
            #expect(objects.allSatisfy { pool.contains($0) && pool.contains($0 + c.objectSize - 1) })
            #expect(pool.availableCount == c.count)
            slacks.append(pool.length - pool.layout.usedLength)
        }
        print("mempool pools on 2 MiB pages: slack after the last object (real contiguity) \(slacks) bytes")
    }

    @Test func basePagePoolsToo() throws {
        for (count, size, checked) in [(1000, 2048, true), (300, 4000, false), (5000, 100, false)] {
            let c = MempoolConfiguration(count: count, objectSize: size, checked: checked)
            let pool = try Mempool(configuration: c, mapping: MappingOptions(pageSize: .base))
            #expect(pool.length == (try Mempool.memoryNeeded(for: c, pageSize: .base)))
            #expect(allObjects(pool).count == count && pool.availableCount == count)
        }
    }
}

/// A small deterministic generator (SplitMix64), so failures reproduce.
struct TestRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A number in 0..<n (n > 0).
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
