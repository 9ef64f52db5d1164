/// A request for physically contiguous memory.
public struct ContiguousRequest: Sendable {
    /// Bytes wanted; rounded up to a whole number of pages.
    public var bytes: Int
    /// Page size of the pages the block is built from.
    public var pageSize: PageSize
    /// Alignment of the block's physical start: any power of two (nil: the
    /// page size). Every page starts page-aligned, so an alignment up to the
    /// page size is met by any block; a larger one is searched for.
    public var physicalAlignment: Int?
    /// A power of two the block's physical range must not cross a multiple
    /// of (nil: none), as a device's DMA boundary (DPDK's `bound`). It must
    /// be at least the block's size rounded to pages. Cheaper to find than an
    /// alignment to the same power: any run of adjacent pages whose range
    /// stays between two multiples serves.
    public var physicalBoundary: Int?
    /// Where the pages come from.
    public var numaPolicy: NUMAPolicy
    /// Most bytes mapped at once while looking. Default: for hugepages, every
    /// free page of the size (attempts grow from the block itself to four
    /// times it plus 32 pages to the budget); for base pages, 64 MiB in all.
    public var budgetBytes: Int?
    /// Base pages: most batches tried (each batch is kept mapped while later
    /// ones are tried, so the kernel hands out new frames).
    public var maxAttempts: Int
    /// Base pages: try one transparent hugepage first (default). Off, only
    /// the trial technique runs.
    public var useTransparentHugepage: Bool

    public init(bytes: Int, pageSize: PageSize = .huge2M, physicalAlignment: Int? = nil,
                physicalBoundary: Int? = nil, numaPolicy: NUMAPolicy = .any, budgetBytes: Int? = nil,
                maxAttempts: Int = 64, useTransparentHugepage: Bool = true) {
        self.bytes = bytes
        self.pageSize = pageSize
        self.physicalAlignment = physicalAlignment
        self.physicalBoundary = physicalBoundary
        self.numaPolicy = numaPolicy
        self.budgetBytes = budgetBytes
        self.maxAttempts = maxAttempts
        self.useTransparentHugepage = useTransparentHugepage
    }
}

/// What a contiguous allocation cost.
public struct ContiguousStatistics: Sendable, Equatable {
    public init() {}
    /// Mappings made to look for a run.
    public var attempts = 0
    /// Bytes mapped in all, including the block.
    public var bytesExamined = 0
    /// The largest run seen in any attempt.
    public var largestRunBytes = 0
}

/// Physically contiguous memory beyond one page.
///
/// Linux has no user-space call for it. HugeAlloc gets it the way DPDK's
/// legacy memory mode does, but in every mode: map more pages than needed,
/// read their physical addresses (`/proc/self/pagemap`), sort them, keep a
/// run of physically adjacent pages and remap it into one virtually
/// contiguous range (`mmap(MAP_FIXED)` / `mremap(2)`), giving every other
/// page back to the kernel at once.
public enum ContiguousMemory {
    /// Remaps `mapping` so its pages lie in ascending physical order: every
    /// physical run becomes virtually contiguous too. Works for anonymous,
    /// memfd and hugetlbfs mappings of any page size.
    public static func assemble(_ mapping: consuming MemoryMapping) throws(ContiguousError) -> MemoryMapping {
        guard mapping.translationMode == .physical, let translation = mapping.translation else {
            _ = consume mapping
            throw .noPhysicalAddresses
        }
        do {
            return try mapping.remapped(keeping: translation.pagesInPhysicalOrder.map(\.page))
        } catch { throw .mapping(error) }
    }

    /// Allocates `request.bytes` (rounded up to pages) physically contiguous.
    /// The returned mapping has exactly one physical run, virtually
    /// contiguous, locked when made of base pages. `statistics` receives what
    /// it cost, also on failure.
    public static func allocate(
        _ request: ContiguousRequest, statistics: ((ContiguousStatistics) -> Void)? = nil
    ) throws(ContiguousError) -> MemoryMapping {
        var stats = ContiguousStatistics()
        defer { statistics?(stats) }
        let ps = request.pageSize.bytes
        guard request.bytes > 0 else { throw .invalidRequest("the size must be greater than zero (got \(request.bytes))") }
        let (rounded, overflow) = request.bytes.addingReportingOverflow(ps - 1)
        guard !overflow else { throw .invalidRequest("\(request.bytes) bytes is too large") }
        let pages = rounded / ps
        let requested = request.physicalAlignment ?? ps
        guard requested > 0, requested & (requested - 1) == 0 else {
            throw .invalidRequest("the physical alignment must be a power of two (got \(requested))")
        }
        if let boundary = request.physicalBoundary {
            guard boundary > 0, boundary & (boundary - 1) == 0 else {
                throw .invalidRequest("the physical boundary must be a power of two (got \(boundary))")
            }
            guard boundary >= pages * ps else {
                throw .invalidRequest("\(pages * ps) bytes of \(request.pageSize) pages cannot fit between two "
                    + "\(boundary)-byte boundaries; use a boundary of at least \(pages * ps) rounded up to a power of two")
            }
        }
        // Pages start page-aligned: a smaller alignment is already met.
        let alignment = max(requested, ps)
        let placement = Placement(alignment: alignment, boundary: request.physicalBoundary)
        if request.pageSize.isHuge {
            return try allocateHuge(pages: pages, placement: placement, request: request, stats: &stats)
        }
        return try allocateBase(pages: pages, placement: placement, request: request, stats: &stats)
    }

    /// Where a window may start: an `alignment`-aligned physical address
    /// whose block does not cross a multiple of `boundary`.
    struct Placement {
        var alignment: Int
        var boundary: Int?

        /// The lowest start at or above `address` that this placement allows
        /// for a block of `length` bytes (`length` at most the boundary).
        func start(atOrAbove address: UInt64, length: Int) -> UInt64 {
            let a = UInt64(alignment)
            var start = (address + a - 1) & ~(a - 1)
            if let boundary {
                let b = UInt64(boundary)
                // Crossing: the next multiple of the boundary is aligned too
                // (one power of two divides the other) and holds the block.
                if start / b != (start + UInt64(length) - 1) / b { start = (start | (b - 1)) + 1 }
            }
            return start
        }
    }

    /// The first window of `count` pages, physically adjacent, whose start
    /// `placement` allows; nil if none. Also returns the largest run seen.
    static func findWindow(
        in translation: PhysicalTranslation, count: Int, placement: Placement
    ) -> (pages: [Int]?, largestRunBytes: Int) {
        let ordered = translation.pagesInPhysicalOrder
        let ps = translation.pageSize.bytes
        var largest = 0
        let ranges = PhysicalRun.ranges(count: ordered.count) { ordered[$0].physical == ordered[$0 - 1].physical + ps }
        for range in ranges {
            largest = max(largest, range.count * ps)
            // The first page inside this run the placement allows.
            let first = ordered[range.lowerBound].physical.rawValue
            let aligned = placement.start(atOrAbove: first, length: count * ps)
            let skip = Int((aligned - first) / UInt64(ps))
            if skip + count <= range.count {
                let start = range.lowerBound + skip
                return (ordered[start..<(start + count)].map(\.page), largest)
            }
        }
        return (nil, largest)
    }

    /// Counts one attempt on `mapping` and returns the pages of a window of
    /// `count` adjacent pages in it, if there is one.
    static func window(
        in mapping: borrowing MemoryMapping, count: Int, placement: Placement, stats: inout ContiguousStatistics
    ) throws(ContiguousError) -> [Int]? {
        stats.attempts += 1
        stats.bytesExamined += mapping.length
        guard let translation = mapping.translation else { throw .noPhysicalAddresses }
        let (window, largest) = findWindow(in: translation, count: count, placement: placement)
        stats.largestRunBytes = max(stats.largestRunBytes, largest)
        return window
    }

    /// Keeps `window` of `mapping` and gives the rest back.
    static func keep(_ window: [Int], of mapping: consuming MemoryMapping) throws(ContiguousError) -> MemoryMapping {
        do { return try mapping.remapped(keeping: window) } catch { throw .mapping(error) }
    }

    static func allocateHuge(
        pages: Int, placement: Placement, request: ContiguousRequest, stats: inout ContiguousStatistics
    ) throws(ContiguousError) -> MemoryMapping {
        let ps = request.pageSize.bytes
        let free = (try? HugepagePoolDirectory(request.pageSize).counters().available) ?? 0
        let extra = placement.alignment / ps - 1  // pages an aligned window may need to skip
        let budgetPages = min(max(pages, free), (request.budgetBytes ?? max(pages, free) * ps) / ps)
        guard budgetPages >= pages else {
            throw .invalidRequest("the budget (\(budgetPages) pages) is smaller than the block (\(pages) pages)")
        }
        // The block alone first (a pool reserved from unfragmented memory
        // hands out adjacent pages in order), then a modest over-allocation,
        // then the whole budget.
        var sizes: [Int] = []
        for size in [pages + extra, 4 * pages + 32 + extra, budgetPages] where size <= budgetPages && size > (sizes.last ?? 0) {
            sizes.append(size)
        }
        for size in sizes {
            let options = MappingOptions(pageSize: request.pageSize, backing: .memfd, numaPolicy: request.numaPolicy)
            let mapping: MemoryMapping
            do { mapping = try MemoryMapping(length: size * ps, options: options) } catch {
                // Too few free pages for the over-allocation: try with what the
                // kernel will give, down to the block itself.
                // Too few for a later, larger look: what was examined is the answer.
                if case .insufficientHugepages = error, size > pages {
                    if stats.attempts == 0 { continue }
                    break
                }
                throw .mapping(error)
            }
            if let window = try window(in: mapping, count: pages, placement: placement, stats: &stats) {
                return try keep(window, of: mapping)
            }
        }
        throw .notFound(neededBytes: pages * ps, largestRunBytes: stats.largestRunBytes,
                        bytesExamined: stats.bytesExamined, budgetBytes: budgetPages * ps, attempts: stats.attempts)
    }

    /// Holds a batch of pages mapped while later batches are tried.
    final class Held {
        var mapping: MemoryMapping?
        init(_ mapping: consuming MemoryMapping) { self.mapping = consume mapping }
    }

    /// Base pages: first one transparent hugepage (2 MiB of physically
    /// contiguous base pages in one fault, when the kernel has a free 2 MiB
    /// block and THP is not disabled); the pages kept are moved out with
    /// `mremap(2)` and the rest unmapped (the kernel frees them when it
    /// splits the huge page). Then the trial technique.
    static func allocateBase(
        pages: Int, placement: Placement, request: ContiguousRequest, stats: inout ContiguousStatistics
    ) throws(ContiguousError) -> MemoryMapping {
        let ps = request.pageSize.bytes
        let thp = 2 << 20
        if request.useTransparentHugepage, pages * ps + placement.alignment - ps <= thp {
            let options = MappingOptions(pageSize: request.pageSize, backing: .anonymous, lock: true,
                                         transparentHugepages: true, numaPolicy: request.numaPolicy)
            let mapping: MemoryMapping
            do { mapping = try MemoryMapping(length: thp, options: options) } catch { throw .mapping(error) }
            if let window = try window(in: mapping, count: pages, placement: placement, stats: &stats) {
                return try keep(window, of: mapping)
            }
        }
        return try allocateBaseByTrial(pages: pages, placement: placement, request: request, stats: &stats)
    }

    /// The technique for small runs of base pages: lock base pages, read
    /// their physical addresses, keep allocating until enough of them touch,
    /// release the rest.
    static func allocateBaseByTrial(
        pages: Int, placement: Placement, request: ContiguousRequest, stats: inout ContiguousStatistics
    ) throws(ContiguousError) -> MemoryMapping {
        let ps = request.pageSize.bytes
        let budget = request.budgetBytes ?? 64 << 20
        // Batches of 1 MiB or more: the page allocator hands out the small
        // fragments on its free lists first, and runs appear once a batch
        // reaches the larger blocks it splits.
        let batch = max(pages, min(max(256, 32 * pages), budget / ps / 2))
        guard batch * ps <= budget else {
            throw .invalidRequest("a batch of \(batch) base pages exceeds the budget of \(budget) bytes")
        }
        var held: [Held] = []
        defer { held.removeAll() }
        while stats.attempts < request.maxAttempts, stats.bytesExamined + batch * ps <= budget {
            let options = MappingOptions(pageSize: request.pageSize, backing: .anonymous, lock: true,
                                         numaPolicy: request.numaPolicy)
            let mapping: MemoryMapping
            do { mapping = try MemoryMapping(length: batch * ps, options: options) } catch { throw .mapping(error) }
            if let window = try window(in: mapping, count: pages, placement: placement, stats: &stats) {
                return try keep(window, of: mapping)
            }
            held.append(Held(mapping))
        }
        throw .notFound(neededBytes: pages * ps, largestRunBytes: stats.largestRunBytes,
                        bytesExamined: stats.bytesExamined, budgetBytes: budget, attempts: stats.attempts)
    }
}
