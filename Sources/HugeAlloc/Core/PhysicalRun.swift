/// A stretch of memory that is contiguous in both address spaces: `pages`
/// pages from byte `offset` of a mapping, starting at `physical`.
public struct PhysicalRun: Hashable, Sendable {
    public var physical: PhysicalAddress
    public var offset: Int
    public var bytes: Int
    public var pages: Int

    public init(physical: PhysicalAddress, offset: Int, bytes: Int, pages: Int) {
        self.physical = physical
        self.offset = offset
        self.bytes = bytes
        self.pages = pages
    }
}

extension PhysicalRun {
    /// The one run detector: splits the items `0..<count` into maximal ranges
    /// in which every item `i` continues item `i - 1` (`continues(i)`, asked
    /// for `i >= 1`). Every layer that looks for physical runs (translation,
    /// contiguous allocation, fragmentation reports, mempool layout) calls it.
    @inlinable
    package static func ranges(count: Int, continues: (Int) -> Bool) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var start = 0
        while start < count {
            var end = start + 1
            while end < count, continues(end) { end += 1 }
            result.append(start..<end)
            start = end
        }
        return result
    }

    /// The runs of pages, in the given (virtual) order, whose physical
    /// addresses follow each other: page `i` continues page `i - 1` when it
    /// starts `pageSize` bytes after it.
    package static func runs(pagePhysical: [UInt64], pageSize: Int) -> [PhysicalRun] {
        ranges(count: pagePhysical.count) { pagePhysical[$0] == pagePhysical[$0 - 1] &+ UInt64(pageSize) }.map {
            PhysicalRun(physical: PhysicalAddress(pagePhysical[$0.lowerBound]), offset: $0.lowerBound * pageSize,
                        bytes: $0.count * pageSize, pages: $0.count)
        }
    }
}
