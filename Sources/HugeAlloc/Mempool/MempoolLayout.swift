/// Where a pool's objects lie in its memory: the element stride, and per page
/// the index and offset of the first object that starts in it.
///
/// Objects are placed one after another at `stride` bytes. An object that
/// would cross a page boundary moves to the start of the next page unless the
/// pages under it are physically contiguous, so a device can always DMA a
/// whole object from its one physical start address. Because placement only
/// restarts at page starts, the objects starting in one page are at
/// `firstOffset + k * stride`, which makes pointer → index O(1).
///
/// Sizing and placement are one computation: ``place(count:element:pageSize:pages:from:contiguous:visit:)``.
/// The memory a new mapping needs (``memoryNeeded(configuration:pageSize:)``)
/// is the pages that placement fills when no two pages are physically
/// contiguous; the layout of the mapping actually made
/// (``plan(configuration:length:pageSize:contiguous:)``) runs the same
/// placement with the real contiguity, which can only move objects to lower
/// addresses, so `count` objects always fit in what was mapped.
struct MempoolLayout {
    /// One element: the object, its guard cookie (checked mode) and padding.
    struct Element: Equatable {
        var objectSize: Int
        var alignment: Int
        /// Bytes from one object's start to the next (object, cookie, padding).
        var stride: Int
        /// Bytes of an element that must stay physically contiguous (object and cookie).
        var span: Int
        /// Offset of the guard cookie from an object's start, or nil without checks.
        var cookieOffset: Int?

        /// The element of a configuration: the object, then (checked) an
        /// 8-byte cookie at the next 8-byte boundary, rounded up to
        /// `alignment`, then padded for memory channels. The caller has
        /// checked `objectSize` and `alignment` against ``maximumLength``, so
        /// nothing here overflows.
        init(objectSize: Int, alignment: Int, checked: Bool, channels: Int?) {
            var span = objectSize
            var cookie: Int? = nil
            if checked {
                let at = (objectSize + 7) & ~7
                cookie = at
                span = at + 8
            }
            var stride = (span + alignment - 1) & ~(alignment - 1)
            // Memory-channel spreading (as DPDK's mempool does): make the stride an
            // odd-to-the-channels number of cache lines, so consecutive objects start
            // on different channels/ranks instead of all hitting the same one.
            if let channels, channels > 1, alignment <= 64 {
                var lines = (stride + 63) / 64
                while MempoolLayout.gcd(lines, channels) != 1 { lines += 1 }
                stride = lines * 64
            }
            self.objectSize = objectSize
            self.alignment = alignment
            self.stride = stride
            self.span = span
            self.cookieOffset = cookie
        }
    }

    var element: Element
    var count: Int
    var pageSize: Int
    /// Per page: index of the first object starting in it (or the next object's index).
    var pageFirstIndex: [Int]
    /// Per page: offset in the page of the first object starting in it, -1 if none.
    var pageFirstOffset: [Int]
    /// Per page: how many objects start in it.
    var pageObjectCount: [Int]
    /// Bytes from the start of memory to the end of the last object.
    var usedLength: Int

    var objectSize: Int { element.objectSize }
    var alignment: Int { element.alignment }
    var stride: Int { element.stride }
    var cookieOffset: Int? { element.cookieOffset }

    /// The most memory a pool plans for: 64 PiB, beyond any address space
    /// Linux gives a process. Bounds every size, so none of the arithmetic
    /// here can overflow.
    static let maximumLength = 1 << 56

    static func gcd(_ a: Int, _ b: Int) -> Int {
        var (a, b) = (a, b)
        while b != 0 { (a, b) = (b, a % b) }
        return a
    }

    // MARK: validation

    /// Checks a configuration for `pageSize` pages whose longest physically
    /// contiguous run is `contiguousBytes`, and returns its element.
    static func element(
        for c: MempoolConfiguration, pageSize: Int, contiguousBytes: Int
    ) throws(MempoolError) -> Element {
        guard c.count > 0 else { throw .zeroCount(requested: c.count) }
        guard c.count <= Mempool.maximumCount else { throw .countTooLarge(requested: c.count, maximum: Mempool.maximumCount) }
        guard c.objectSize > 0 else { throw .zeroObjectSize(requested: c.objectSize) }
        guard c.alignment > 0, c.alignment & (c.alignment - 1) == 0 else {
            throw .alignmentNotPowerOfTwo(requested: c.alignment)
        }
        guard c.alignment <= pageSize else { throw .alignmentLargerThanPage(alignment: c.alignment, pageSize: pageSize) }
        guard c.cacheSize >= 0, c.cacheSize <= Mempool.maximumCacheSize else {
            throw .cacheSizeOutOfRange(requested: c.cacheSize, maximum: Mempool.maximumCacheSize)
        }
        // Checked before the element is computed, so that a huge object
        // size cannot overflow it (contiguousBytes <= maximumLength).
        guard c.objectSize <= contiguousBytes else {
            throw .objectLargerThanPage(elementSize: c.objectSize, pageSize: pageSize, contiguousBytesAvailable: contiguousBytes)
        }
        let element = Element(objectSize: c.objectSize, alignment: c.alignment, checked: c.checked, channels: c.memoryChannels)
        guard element.span <= contiguousBytes else {
            throw .objectLargerThanPage(elementSize: element.span, pageSize: pageSize, contiguousBytesAvailable: contiguousBytes)
        }
        return element
    }

    // MARK: the one placement rule

    /// Places up to `count` elements in `pages` pages of `pageSize` bytes,
    /// page by page, the first candidate at byte `start`; `contiguous(p)`
    /// tells whether page p+1 follows page p physically (asked only for
    /// p+1 < pages, in increasing order).
    ///
    /// For each page in which objects start, `visit(page, offset in page,
    /// index of the first, how many)`. Returns how many elements were placed,
    /// the byte just past the last one's span, and where the next element
    /// would have been tried.
    ///
    /// The rule, per element: it starts where the previous one's stride
    /// ends; if its span would run past the end of the physically contiguous
    /// run of pages it starts in (or past the memory), it starts at that
    /// run's end instead. The objects starting in one page are then an
    /// arithmetic sequence, counted in O(1), so this is O(pages).
    static func place(
        count: Int, element e: Element, pageSize: Int, pages: Int, from start: Int = 0,
        contiguous: (Int) -> Bool,
        visit: (_ page: Int, _ firstOffset: Int, _ firstIndex: Int, _ objects: Int) -> Void
    ) -> (placed: Int, usedLength: Int, next: Int) {
        let shift = pageSize.trailingZeroBitCount
        var index = 0
        var candidate = start
        var used = 0
        var runEnd = 0  // one past the last page of the run holding `candidate`
        while index < count {
            let page = candidate >> shift
            if page >= pages { break }
            if page >= runEnd {
                runEnd = page + 1
                while runEnd < pages && contiguous(runEnd - 1) { runEnd += 1 }
            }
            let pageStart = page << shift
            let lastStart = min(pageStart + pageSize - 1, (runEnd << shift) - e.span)
            if candidate > lastStart {
                // The span would cross a boundary to a page that does not
                // follow physically (or the end of memory).
                candidate = runEnd << shift
                continue
            }
            let n = min((lastStart - candidate) / e.stride + 1, count - index)
            visit(page, candidate - pageStart, index, n)
            index += n
            used = candidate + (n - 1) * e.stride + e.span
            candidate += n * e.stride
        }
        return (index, used, candidate)
    }

    // MARK: sizing and layout

    /// Bytes of new `pageSize` pages that hold `count` objects when no two
    /// pages are physically contiguous (the worst case a fresh mapping must
    /// plan for): the pages ``place(count:element:pageSize:pages:from:contiguous:visit:)``
    /// fills, no more. Throws what creation would throw for an invalid
    /// configuration.
    ///
    /// With no two pages contiguous, what happens in a page depends only on
    /// the offset of its first candidate, which is a multiple of the
    /// alignment (or of a cache line) below the stride. So the placement
    /// runs page by page until that offset repeats, and whole periods are
    /// then counted at once: a hostile count costs a few pages of work, not
    /// one step per page.
    static func memoryNeeded(configuration c: MempoolConfiguration, pageSize: Int) throws(MempoolError) -> Int {
        guard pageSize <= maximumLength else {
            throw .objectLargerThanPage(elementSize: c.objectSize, pageSize: pageSize, contiguousBytesAvailable: 0)
        }
        let element = try element(for: c, pageSize: pageSize, contiguousBytes: pageSize)
        let maximumPages = maximumLength / pageSize
        var remaining = c.count
        var pagesUsed = 0
        var first = 0  // offset of the first candidate in the next page
        var seen: [Int: (pages: Int, remaining: Int)] = [:]
        while pagesUsed < maximumPages {
            if let earlier = seen[first] {
                let periodPages = pagesUsed - earlier.pages
                let periodObjects = earlier.remaining - remaining
                // Whole periods, leaving at least one object to place.
                let periods = periodObjects > 0 ? min((remaining - 1) / periodObjects, maximumPages / periodPages) : 0
                remaining -= periods * periodObjects
                pagesUsed += periods * periodPages
                seen = [:]
                if pagesUsed >= maximumPages { break }
            }
            seen[first] = (pagesUsed, remaining)
            let (placed, used, next) = place(
                count: remaining, element: element, pageSize: pageSize, pages: 1, from: first,
                contiguous: { _ in false }, visit: { _, _, _, _ in })
            if placed == remaining {
                return (pagesUsed + (used + pageSize - 1) / pageSize) * pageSize
            }
            remaining -= placed
            pagesUsed += next / pageSize
            first = next % pageSize
        }
        throw .countDoesNotFit(
            requested: c.count, fits: c.count - remaining, elementSize: element.stride, memoryLength: maximumLength)
    }

    /// How many objects of `c` fit in `pages` new pages (none physically contiguous).
    static func objectsFitting(pages: Int, configuration c: MempoolConfiguration, pageSize: Int) -> Int {
        guard let element = try? element(for: c, pageSize: pageSize, contiguousBytes: pageSize) else { return 0 }
        return place(
            count: c.count, element: element, pageSize: pageSize, pages: min(pages, maximumLength / pageSize),
            contiguous: { _ in false }, visit: { _, _, _, _ in }
        ).placed
    }

    /// Lays out `c.count` objects in `length` bytes (whole pages) of
    /// `pageSize` pages; `contiguous(p)` tells whether page p+1 follows page
    /// p physically.
    static func plan(
        configuration c: MempoolConfiguration, length: Int, pageSize: Int, contiguous: (Int) -> Bool
    ) throws(MempoolError) -> MempoolLayout {
        let pages = length / pageSize
        let longest = longestRun(pages: pages, pageSize: pageSize, contiguous: contiguous)
        let element = try element(for: c, pageSize: pageSize, contiguousBytes: max(min(pageSize, length), longest))
        var layout = MempoolLayout(
            element: element, count: c.count, pageSize: pageSize,
            pageFirstIndex: Array(repeating: c.count, count: pages),
            pageFirstOffset: Array(repeating: -1, count: pages),
            pageObjectCount: Array(repeating: 0, count: pages), usedLength: 0)
        let (placed, used, _) = place(
            count: c.count, element: element, pageSize: pageSize, pages: pages, contiguous: contiguous
        ) { page, offset, first, n in
            layout.pageFirstOffset[page] = offset
            layout.pageFirstIndex[page] = first
            layout.pageObjectCount[page] = n
        }
        guard placed == c.count else {
            if placed == 0 && element.span > pageSize {
                throw .objectLargerThanPage(elementSize: element.span, pageSize: pageSize, contiguousBytesAvailable: longest)
            }
            throw .countDoesNotFit(requested: c.count, fits: placed, elementSize: element.stride, memoryLength: length)
        }
        layout.usedLength = used
        // Pages with no object start point at the next object's index (for iteration).
        var next = c.count
        for p in Swift.stride(from: pages - 1, through: 0, by: -1) {
            if layout.pageFirstOffset[p] >= 0 { next = layout.pageFirstIndex[p] } else { layout.pageFirstIndex[p] = next }
        }
        return layout
    }

    static func longestRun(pages: Int, pageSize: Int, contiguous: (Int) -> Bool) -> Int {
        guard pages > 0 else { return 0 }
        var best = 1, run = 1
        for p in 0..<(pages - 1) {
            run = contiguous(p) ? run + 1 : 1
            best = max(best, run)
        }
        return best * pageSize
    }
}
