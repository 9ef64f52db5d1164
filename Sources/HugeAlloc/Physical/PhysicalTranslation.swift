/// A stretch of a mapping that is contiguous in both address spaces:
/// `pages` pages from byte `offset` of the mapping, starting at `physical`.
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

/// How a mapping's device-visible addresses are obtained.
public enum TranslationMode: Sendable, Hashable {
    /// Physical addresses from `/proc/self/pagemap` (needs `CAP_SYS_ADMIN`).
    case physical
    /// IOVA = virtual address, for devices behind an IOMMU (VFIO maps the
    /// virtual range 1:1). No pagemap read, no capability needed.
    case virtualAsIOVA
    /// No translation is built.
    case none
}

/// The physical address of every page of one virtually contiguous range,
/// with the indexes that make lookups cheap:
/// - virtual → physical in O(1): one array load per lookup;
/// - physical → virtual in O(log n): binary search of the pages sorted by
///   physical address;
/// - "how many bytes from here are physically contiguous" in O(1).
///
/// Built from one batched read of `/proc/self/pagemap`.
public struct PhysicalTranslation: Sendable {
    /// The page size the range is mapped with.
    public let pageSize: Int
    @usableFromInline let shift: Int
    /// Physical address of page i.
    @usableFromInline let pagePhysical: [UInt64]
    /// Page indexes sorted by physical address, and those addresses.
    @usableFromInline let sortedPhysical: [UInt64]
    @usableFromInline let sortedPage: [Int32]
    /// For page i, the index one past the last page of its run.
    @usableFromInline let runEnd: [Int32]
    /// The runs in virtual order.
    public let runs: [PhysicalRun]

    /// Builds the indexes from the physical address of each page.
    public init(pagePhysical: [UInt64], pageSize: Int) {
        precondition(pageSize > 0 && pageSize & (pageSize - 1) == 0, "page size must be a power of two")
        self.pageSize = pageSize
        self.shift = pageSize.trailingZeroBitCount
        self.pagePhysical = pagePhysical
        let order = pagePhysical.indices.sorted { pagePhysical[$0] < pagePhysical[$1] }
        self.sortedPhysical = order.map { pagePhysical[$0] }
        self.sortedPage = order.map { Int32($0) }
        var runEnd = [Int32](repeating: 0, count: pagePhysical.count)
        var runs: [PhysicalRun] = []
        var start = 0
        while start < pagePhysical.count {
            var end = start + 1
            while end < pagePhysical.count, pagePhysical[end] == pagePhysical[end - 1] &+ UInt64(pageSize) { end += 1 }
            for i in start..<end { runEnd[i] = Int32(end) }
            runs.append(PhysicalRun(physical: PhysicalAddress(pagePhysical[start]), offset: start * pageSize,
                                    bytes: (end - start) * pageSize, pages: end - start))
            start = end
        }
        self.runEnd = runEnd
        self.runs = runs
    }

    /// Number of pages covered.
    @inlinable public var pageCount: Int { pagePhysical.count }

    /// Bytes covered.
    @inlinable public var length: Int { pagePhysical.count << shift }

    /// The physical address of byte `offset`, or `nil` outside the range.
    @inlinable public func physicalAddress(atOffset offset: Int) -> PhysicalAddress? {
        let page = offset >> shift
        guard offset >= 0, page < pagePhysical.count else { return nil }
        return PhysicalAddress(pagePhysical[page] | UInt64(offset & (pageSize - 1)))
    }

    /// The offset of the byte at physical address `physical`, or `nil` when
    /// no page of the range holds it.
    @inlinable public func offset(of physical: PhysicalAddress) -> Int? {
        let target = physical.rawValue
        var low = 0
        var high = sortedPhysical.count
        while low < high {
            let mid = (low &+ high) >> 1
            if sortedPhysical[mid] <= target { low = mid &+ 1 } else { high = mid }
        }
        guard low > 0 else { return nil }
        let start = sortedPhysical[low &- 1]
        let within = target &- start
        guard within < UInt64(pageSize) else { return nil }
        return (Int(sortedPage[low &- 1]) << shift) | Int(within)
    }

    /// Bytes from `offset` to the end of its physically contiguous run
    /// (0 outside the range).
    @inlinable public func contiguousLength(atOffset offset: Int) -> Int {
        let page = offset >> shift
        guard offset >= 0, page < pagePhysical.count else { return 0 }
        return (Int(runEnd[page]) << shift) &- offset
    }

    /// SPDK-style translation: the physical address of byte `offset`, with
    /// `length` shrunk to the bytes from there that are physically contiguous.
    @inlinable public func translate(offset: Int, length: inout Int) -> PhysicalAddress? {
        guard let address = physicalAddress(atOffset: offset) else {
            length = 0
            return nil
        }
        length = min(length, contiguousLength(atOffset: offset))
        return address
    }

    /// The largest run, in bytes.
    public var largestRunBytes: Int { runs.map(\.bytes).max() ?? 0 }

    /// Reads the translation of `[address, address + length)` mapped with
    /// `pageSize` pages from one batched read of the pagemap. Every page must
    /// be present; a present page with PFN 0 means the capability is missing.
    /// Reads `/proc/self/pagemap`.
    static func read(
        address: UInt, length: Int, pageSize: Int, reader: borrowing PagemapReader
    ) throws(PagemapError) -> PhysicalTranslation {
        let base = Sys.basePageSize
        let perPage = pageSize / base
        let pages = length / pageSize
        var physical = [UInt64](repeating: 0, count: pages)
        // One entry per page is all that is needed; for hugepages, read the
        // first base-page entry of each hugepage, batched over the range.
        let entries = try reader.entries(startingAt: address, count: length / base)
        for page in 0..<pages {
            let entry = entries[page * perPage]
            guard entry.isPresent else {
                throw .pageNotPresent(virtualAddress: address + UInt(page * pageSize))
            }
            guard let pfn = entry.pfn else { throw .physicalAddressesHidden }
            physical[page] = pfn &* UInt64(base)
        }
        return PhysicalTranslation(pagePhysical: physical, pageSize: pageSize)
    }

    /// IOVA = virtual address for every page.
    static func identity(address: UInt, length: Int, pageSize: Int) -> PhysicalTranslation {
        PhysicalTranslation(pagePhysical: (0..<(length / pageSize)).map { UInt64(address) + UInt64($0 * pageSize) },
                            pageSize: pageSize)
    }
}
