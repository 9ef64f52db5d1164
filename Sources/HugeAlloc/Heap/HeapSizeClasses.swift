/// The heap's size classes, computed once.
///
/// - up to 512 bytes: multiples of 64 (8 classes);
/// - up to 8 KiB: four per doubling (640, 768, 896, 1024, 1280, …, 8192);
/// - up to 256 KiB: multiples of 4 KiB, at most 1/8 apart (12 KiB, 16 KiB,
///   20 KiB, …, 64 KiB, 72 KiB, …, 256 KiB).
///
/// Classes up to 8 KiB are carved from multi-object spans (a span: a run of
/// 4 KiB granules inside one hugepage). Larger classes take a span each, of
/// exactly their size, so they waste nothing inside the span and a freed one
/// can serve the next allocation of its class from a per-thread stash.
///
/// Every power of two from 64 bytes to 256 KiB is a class, which is what
/// boundaries rely on (see ``DMAHeap``): an allocation aligned to the power
/// of two at or above its size never crosses a boundary of that power.
struct HeapSizeClasses: Sendable {
    static let granuleShift = 12
    static let granule = 1 << granuleShift
    static let pageShift = 21
    static let pageBytes = 1 << pageShift
    static let granulesPerPage = pageBytes >> granuleShift
    /// The largest size served from a size class.
    static let maximumClassSize = 256 << 10
    /// The largest class carved from multi-object spans.
    static let maximumMultiObjectSize = 8 << 10
    /// Alignments with their own class tables: 64 B (2^6) to 4 KiB (2^12).
    static let alignmentShifts = 6...12

    /// Size of each class.
    let sizes: [Int]
    /// Granules of a span of each class.
    let spanGranules: [Int]
    /// Objects in a span of each class.
    let objectsPerSpan: [Int]
    /// Class of a size up to `maximumMultiObjectSize`, by `(size + 63) >> 6`.
    let smallLookup: [UInt8]
    /// Class of a size above `maximumMultiObjectSize`, by `(size + 4095) >> 12`.
    let largeLookup: [UInt8]
    /// For each alignment shift in `alignmentShifts` and class: the first
    /// class at or above it whose size is a multiple of the alignment
    /// (`count` when none).
    let alignedClass: [[Int]]

    var count: Int { sizes.count }

    init() {
        var sizes: [Int] = []
        for size in stride(from: 64, through: 512, by: 64) { sizes.append(size) }
        var base = 512
        while base < Self.maximumMultiObjectSize {
            for k in 1...4 { sizes.append(base + k * base / 4) }
            base *= 2
        }
        // Per doubling, steps of an eighth of its start, in whole granules,
        // so every power of two stays a class.
        base = Self.maximumMultiObjectSize
        while base < Self.maximumClassSize {
            let step = max(Self.granule, base / 8)
            var size = base + step
            while size <= 2 * base {
                sizes.append(size)
                size += step
            }
            base *= 2
        }
        self.sizes = sizes
        var granules: [Int] = []
        var objects: [Int] = []
        for size in sizes {
            if size > Self.maximumMultiObjectSize {
                granules.append(size / Self.granule)
                objects.append(1)
                continue
            }
            if size <= 1024 {
                granules.append(16)
                objects.append(16 * Self.granule / size)
                continue
            }
            // At least 8 objects, and the span size (up to 32 granules)
            // that wastes the smallest share of itself.
            var best = 0
            var bestWaste = Double.infinity
            for g in max(1, (8 * size + Self.granule - 1) / Self.granule)...32 {
                let bytes = g * Self.granule
                let waste = Double(bytes % size) / Double(bytes)
                if waste < bestWaste - 0.005 { best = g; bestWaste = waste }
            }
            granules.append(best)
            objects.append(best * Self.granule / size)
        }
        self.spanGranules = granules
        self.objectsPerSpan = objects
        var lookup = [UInt8](repeating: 0, count: Self.maximumMultiObjectSize / 64 + 1)
        var c = 0
        for i in 0..<lookup.count {
            let size = max(1, i * 64)
            while sizes[c] < size { c += 1 }
            lookup[i] = UInt8(c)
        }
        self.smallLookup = lookup
        var large = [UInt8](repeating: 0, count: Self.maximumClassSize / Self.granule + 1)
        c = 0
        for i in 0..<large.count {
            let size = max(1, i * Self.granule)
            while sizes[c] < size { c += 1 }
            large[i] = UInt8(c)
        }
        self.largeLookup = large
        var aligned: [[Int]] = []
        for shift in Self.alignmentShifts {
            let alignment = 1 << shift
            var table = [Int](repeating: sizes.count, count: sizes.count)
            var next = sizes.count
            for c in sizes.indices.reversed() {
                if sizes[c] % alignment == 0 { next = c }
                table[c] = next
            }
            aligned.append(table)
        }
        self.alignedClass = aligned
    }

}
