/// Where a pool's objects lie in its memory: the element stride, and per page
/// the index and offset of the first object that starts in it.
///
/// Objects are placed one after another at `stride` bytes. An object that
/// would cross a page boundary moves to the start of the next page unless the
/// pages under it are physically contiguous, so a device can always DMA a
/// whole object from its one physical start address. Because placement only
/// restarts at page starts, the objects starting in one page are at
/// `firstOffset + k * stride`, which makes pointer → index O(1).
struct MempoolLayout {
    var objectSize: Int
    var alignment: Int
    /// Bytes from one object's start to the next (object, cookie, padding).
    var stride: Int
    /// Bytes of an element that must stay physically contiguous (object and cookie).
    var span: Int
    /// Offset of the guard cookie from an object's start, or nil without checks.
    var cookieOffset: Int?
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

    /// The element stride before channel spreading: the object, then (checked)
    /// an 8-byte cookie at the next 8-byte boundary, rounded up to `alignment`.
    static func elementSizes(objectSize: Int, alignment: Int, checked: Bool, channels: Int?)
        -> (stride: Int, span: Int, cookieOffset: Int?)
    {
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
            while gcd(lines, channels) != 1 { lines += 1 }
            stride = lines * 64
        }
        return (stride, span, cookie)
    }

    static func gcd(_ a: Int, _ b: Int) -> Int {
        var (a, b) = (a, b)
        while b != 0 { (a, b) = (b, a % b) }
        return a
    }

    /// Plans `count` objects in `length` bytes of `pageSize` pages;
    /// `contiguous(p)` tells whether page p+1 follows page p physically.
    static func plan(
        count: Int, objectSize: Int, alignment: Int, checked: Bool, channels: Int?,
        length: Int, pageSize: Int, contiguous: (Int) -> Bool
    ) throws(MempoolError) -> MempoolLayout {
        guard count > 0 else { throw .zeroCount(requested: count) }
        guard objectSize > 0 else { throw .zeroObjectSize(requested: objectSize) }
        guard alignment > 0, alignment & (alignment - 1) == 0 else {
            throw .alignmentNotPowerOfTwo(requested: alignment)
        }
        guard alignment <= pageSize else {
            throw .alignmentLargerThanPage(alignment: alignment, pageSize: pageSize)
        }
        let sizes = elementSizes(objectSize: objectSize, alignment: alignment, checked: checked, channels: channels)
        let pages = length / pageSize
        var layout = MempoolLayout(
            objectSize: objectSize, alignment: alignment, stride: sizes.stride, span: sizes.span,
            cookieOffset: sizes.cookieOffset, count: count, pageSize: pageSize,
            pageFirstIndex: Array(repeating: count, count: pages),
            pageFirstOffset: Array(repeating: -1, count: pages),
            pageObjectCount: Array(repeating: 0, count: pages), usedLength: 0)
        let mask = pageSize - 1
        var offset = 0
        for index in 0..<count {
            var start = offset
            // Move past every non-contiguous page boundary the element would cross.
            while true {
                let end = start + sizes.span
                if end > pages * pageSize { break }
                let first = start / pageSize
                let last = (end - 1) / pageSize
                var gap: Int? = nil
                var p = first
                while p < last {
                    if !contiguous(p) { gap = p; break }
                    p += 1
                }
                guard let gap else { break }
                start = (gap + 1) * pageSize
            }
            if start + sizes.span > pages * pageSize {
                if index == 0 && sizes.span > pageSize {
                    throw .objectLargerThanPage(
                        elementSize: sizes.span, pageSize: pageSize,
                        contiguousBytesAvailable: longestRun(pages: pages, pageSize: pageSize, contiguous: contiguous))
                }
                throw .countDoesNotFit(requested: count, fits: index, elementSize: sizes.stride, memoryLength: length)
            }
            let page = start / pageSize
            if layout.pageFirstOffset[page] < 0 {
                layout.pageFirstOffset[page] = start & mask
                layout.pageFirstIndex[page] = index
            }
            layout.pageObjectCount[page] += 1
            offset = start + sizes.stride
            layout.usedLength = start + sizes.span
        }
        // Pages with no object start point at the next object's index (for iteration).
        var next = count
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

    /// Bytes of `pageSize` pages that hold `count` objects when no two pages
    /// are physically contiguous (the worst case a fresh mapping must plan for).
    static func bytesNeeded(count: Int, stride: Int, span: Int, pageSize: Int) -> Int? {
        guard span <= pageSize else { return nil }
        // Per page: as many whole strides as fit, plus one more when the last span fits.
        let perPage = (pageSize - span) / stride + 1
        let pages = (count + perPage - 1) / perPage
        return pages * pageSize
    }
}
