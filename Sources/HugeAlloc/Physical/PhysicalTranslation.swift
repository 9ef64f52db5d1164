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
/// - physical → virtual in O(1) expected: an open-addressing hash from
///   physical frame to page (the pages sorted by physical address are kept
///   too, for ordered queries such as ``pagesInPhysicalOrder``);
/// - "how many bytes from here are physically contiguous" in O(1).
///
/// Built from one batched read of `/proc/self/pagemap`.
public struct PhysicalTranslation: Sendable {
    /// The page size the range is mapped with.
    public let pageSize: PageSize
    @usableFromInline let shift: Int
    /// `pageSize.bytes - 1`: the offset-within-page mask.
    @usableFromInline let pageMask: Int
    /// Physical address of page i.
    @usableFromInline let pagePhysical: [UInt64]
    /// Page indexes sorted by physical address, and those addresses.
    @usableFromInline let sortedPhysical: [UInt64]
    @usableFromInline let sortedPage: [Int32]
    /// Open-addressing hash: frame number + 1 (0 = empty) → page index.
    @usableFromInline let hashKeys: [UInt64]
    @usableFromInline let hashPages: [Int32]
    @usableFromInline let hashShift: Int
    /// For page i, the index one past the last page of its run.
    @usableFromInline let runEnd: [Int32]
    /// The runs in virtual order.
    public let runs: [PhysicalRun]

    /// Builds the indexes from the physical address of each page.
    package init(pagePhysical: [UInt64], pageSize size: PageSize) {
        let pageSize = size.bytes
        self.pageSize = size
        self.pageMask = pageSize - 1
        self.shift = pageSize.trailingZeroBitCount
        self.pagePhysical = pagePhysical
        let order = pagePhysical.indices.sorted { pagePhysical[$0] < pagePhysical[$1] }
        self.sortedPhysical = order.map { pagePhysical[$0] }
        self.sortedPage = order.map { Int32($0) }
        let bits = max(4, (pagePhysical.count * 2).bitWidth - (pagePhysical.count * 2).leadingZeroBitCount)
        var keys = [UInt64](repeating: 0, count: 1 << bits)
        var pages = [Int32](repeating: 0, count: 1 << bits)
        for (page, physical) in pagePhysical.enumerated() {
            let key = (physical >> UInt64(pageSize.trailingZeroBitCount)) &+ 1
            var slot = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> UInt64(64 - bits))
            while keys[slot] != 0 && keys[slot] != key { slot = (slot &+ 1) & ((1 << bits) - 1) }
            keys[slot] = key
            pages[slot] = Int32(page)
        }
        self.hashKeys = keys
        self.hashPages = pages
        self.hashShift = 64 - bits
        var runEnd = [Int32](repeating: 0, count: pagePhysical.count)
        let runs = PhysicalRun.runs(pagePhysical: pagePhysical, pageSize: pageSize)
        for run in runs {
            let first = run.offset >> shift
            for page in first..<(first + run.pages) { runEnd[page] = Int32(first + run.pages) }
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
        return PhysicalAddress(pagePhysical[page] | UInt64(offset & pageMask))
    }

    /// The offset of the byte at physical address `physical`, or `nil` when
    /// no page of the range holds it.
    @inlinable public func offset(of physical: PhysicalAddress) -> Int? {
        let key = (physical.rawValue >> UInt64(shift)) &+ 1
        let mask = hashKeys.count &- 1
        var slot = Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> UInt64(hashShift))
        while true {
            let candidate = hashKeys[slot]
            if candidate == key {
                return (Int(hashPages[slot]) << shift) | Int(physical.rawValue & UInt64(pageMask))
            }
            if candidate == 0 { return nil }
            slot = (slot &+ 1) & mask
        }
    }

    /// Page indexes in ascending physical-address order, with their addresses.
    public var pagesInPhysicalOrder: [(page: Int, physical: PhysicalAddress)] {
        zip(sortedPage, sortedPhysical).map { (Int($0), PhysicalAddress($1)) }
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
        return PhysicalTranslation(pagePhysical: physical, pageSize: PageSize(rawValue: pageSize)!)
    }

    /// IOVA = virtual address for every page.
    static func identity(address: UInt, length: Int, pageSize: Int) -> PhysicalTranslation {
        PhysicalTranslation(pagePhysical: (0..<(length / pageSize)).map { UInt64(address) + UInt64($0 * pageSize) },
                            pageSize: PageSize(rawValue: pageSize)!)
    }
}
