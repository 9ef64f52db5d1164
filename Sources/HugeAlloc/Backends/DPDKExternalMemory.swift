/// The arguments DPDK's `rte_extmem_register(va_addr, len, iova_addrs,
/// n_pages, page_sz)` takes to adopt memory it did not allocate: the
/// virtual range, the page size, and one IOVA per page. After registering,
/// `rte_dev_dma_map()` maps it for a device, and `rte_mempool` /
/// `rte_pktmbuf` pools can be populated from it.
///
/// DPDK's rules (lib/eal/common/rte_memory.c, `extmem_register` checks):
/// `va_addr` aligned to `page_sz`, `len` a multiple of `page_sz`,
/// `page_sz` a power of two, and `n_pages == len / page_sz` when IOVAs are
/// given. ``validate()`` checks them (`page_sz` is a ``PageSize``, a power of
/// two by construction).
public struct DPDKExternalMemory: Sendable, Equatable {
    /// Which addresses a device uses, as DPDK's `--iova-mode`.
    public enum IOVAMode: Sendable, Equatable {
        /// Physical addresses (no IOMMU, or IOMMU in pass-through): from `/proc/self/pagemap`.
        case physical
        /// Virtual addresses (an IOMMU maps IOVA = VA, DPDK's `--iova-mode=va`).
        case virtual
    }

    /// DPDK's `RTE_BAD_IOVA`: the page's IOVA is unknown.
    public static let badIOVA = PhysicalAddress(rawValue: UInt64.max)

    /// `va_addr`.
    public var virtualAddress: UInt
    /// `len`, in bytes.
    public var length: Int
    /// `page_sz`.
    public var pageSize: PageSize
    /// `iova_addrs`: one per page, in address order; ``badIOVA`` where unknown.
    public var pageIOVAs: [PhysicalAddress]
    /// `n_pages`.
    public var pageCount: Int { pageIOVAs.count }

    public init(virtualAddress: UInt, length: Int, pageSize: PageSize, pageIOVAs: [PhysicalAddress]) {
        self.virtualAddress = virtualAddress
        self.length = length
        self.pageSize = pageSize
        self.pageIOVAs = pageIOVAs
    }

    /// The description of a mempool's whole memory, IOVAs from its per-page
    /// physical address table (read once from `/proc/self/pagemap` when the
    /// pool was created) or, in ``IOVAMode/virtual``, the virtual addresses.
    public init(mempool: Mempool, iovaMode: IOVAMode = .physical) {
        let base = UInt(bitPattern: unsafe mempool.base)
        let pageSize = mempool.pageSize.bytes
        let pages = mempool.length / pageSize
        self.init(
            virtualAddress: base, length: mempool.length, pageSize: mempool.pageSize,
            pageIOVAs: (0..<pages).map { page in
                switch iovaMode {
                case .virtual:
                    return PhysicalAddress(UInt64(base) + UInt64(page * pageSize))
                case .physical:
                    return unsafe mempool.physicalAddress(of: mempool.base + page * pageSize) ?? Self.badIOVA
                }
            })
    }

    /// The description of a packet pool's memory.
    public init(pool: PacketPool, iovaMode: IOVAMode = .physical) {
        self.init(mempool: pool.mempool, iovaMode: iovaMode)
    }

    /// The description of a mapping, IOVAs from its translation.
    public init(mapping: borrowing MemoryMapping, iovaMode: IOVAMode = .physical) {
        let base = UInt(bitPattern: unsafe mapping.base)
        let pageSize = mapping.pageSize.bytes
        var iovas: [PhysicalAddress] = []
        for page in 0..<mapping.pageCount {
            switch iovaMode {
            case .virtual: iovas.append(PhysicalAddress(UInt64(base) + UInt64(page * pageSize)))
            case .physical: iovas.append(mapping.physicalAddress(ofPage: page) ?? Self.badIOVA)
            }
        }
        self.init(virtualAddress: base, length: mapping.length, pageSize: mapping.pageSize, pageIOVAs: iovas)
    }

    /// Whether every page has a known IOVA (otherwise a device cannot DMA to it).
    public var hasAllIOVAs: Bool { !pageIOVAs.contains(Self.badIOVA) }

    /// The IOVA of the byte at `address`, or nil outside the range or when unknown.
    public func iova(of address: UInt) -> PhysicalAddress? {
        guard address >= virtualAddress, address - virtualAddress < UInt(length) else { return nil }
        let offset = Int(address - virtualAddress)
        let page = pageIOVAs[offset / pageSize.bytes]
        return page == Self.badIOVA ? nil : page + offset % pageSize.bytes
    }

    /// Checks `rte_extmem_register`'s argument rules; returns the broken one, or nil.
    public func validate() -> String? {
        let pageBytes = pageSize.bytes
        if virtualAddress % UInt(pageBytes) != 0 { return "va_addr 0x\(String(virtualAddress, radix: 16)) is not aligned to page_sz \(pageBytes)" }
        if length <= 0 || length % pageBytes != 0 { return "len \(length) is not a positive multiple of page_sz \(pageBytes)" }
        if pageCount != length / pageBytes { return "n_pages \(pageCount) is not len / page_sz = \(length / pageBytes)" }
        return nil
    }
}
