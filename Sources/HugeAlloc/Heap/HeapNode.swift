import Synchronization

/// Where a heap's memory lies: one virtual range reserved at creation
/// (`PROT_NONE`, `MAP_NORESERVE`), a slice per node, and a side table of
/// page metadata indexed by page number. Pointers in the range map to their
/// page, span and physical address with arithmetic alone.
@safe
struct HeapSpace: @unchecked Sendable {
    /// The range's first byte (2 MiB aligned).
    let base: UInt
    /// Bytes of the range (all nodes).
    let bytes: UInt
    /// Pages per node slice.
    let pagesPerNode: Int
    /// The page metadata table (``HeapPageMeta/stride`` bytes per page).
    let metas: UnsafeMutableRawPointer

    @inline(__always)
    func meta(_ page: Int) -> HeapPageMeta {
        unsafe HeapPageMeta(metas + page &* HeapPageMeta.stride)
    }

    @inline(__always)
    func pageAddress(_ page: Int) -> UInt { base &+ UInt(page) &<< UInt(HeapSizeClasses.pageShift) }

    @inline(__always)
    func granuleAddress(page: Int, granule: Int) -> UInt {
        pageAddress(page) &+ UInt(granule) &<< UInt(HeapSizeClasses.granuleShift)
    }
}

/// An allocation above a page: a physically contiguous run from the
/// contiguous layer, mapped outside the heap's range.
struct HeapLargeBlock: Sendable {
    var address: UInt
    var length: Int
    var requested: Int
    var fd: Int32
    /// Physical address of each 2 MiB page.
    var pagePhysical: [UInt64]
    var region: MemoryRegion
}

/// One NUMA node's part of a heap: its pages, the granules free in them,
/// spans abandoned by exited threads, and its large blocks. Every method
/// runs under the node's lock; only slow paths take it.
final class HeapNode: Sendable {
    /// Position in the heap's node list.
    let index: Int
    /// The NUMA node.
    let node: Int
    /// The node's first page in the heap's range.
    let firstPage: Int

    struct State: @unchecked Sendable {
        /// Pages mapped now, ascending.
        var mapped: [Int] = []
        /// Mapped pages with every granule free.
        var emptyPages = 0
        var peakMappedPages = 0
        /// Page slots lost to another mapping while re-reserving (never used again).
        var lost: Set<Int> = []
        /// Spans of exited threads that still hold objects, per class.
        var abandoned: [[UInt]]
        var large: [UInt: HeapLargeBlock] = [:]
        var largeBytes = 0
        /// Bytes of direct allocations (granules of their own).
        var directBytes = 0
        var peakBytes = 0
        var grows = 0
        var shrinks = 0
    }

    let state: Mutex<State>

    init(index: Int, node: Int, firstPage: Int, classCount: Int) {
        self.index = index
        self.node = node
        self.firstPage = firstPage
        self.state = Mutex(State(abandoned: Array(repeating: [], count: classCount)))
    }
}

extension HeapNode.State {
    var mappedBytes: Int { mapped.count * HeapSizeClasses.pageBytes + largeBytes }

    mutating func noteMapped() {
        peakMappedPages = max(peakMappedPages, mapped.count)
        peakBytes = max(peakBytes, mappedBytes)
    }

    /// Takes `count` granules starting at a multiple of `alignment` granules
    /// from the lowest page that has them, growing by a page when none has.
    mutating func allocateGranules(
        _ count: Int, alignment: Int, node: HeapNode, heap: DMAHeap
    ) throws(DMAHeapError) -> (page: Int, granule: Int) {
        for page in mapped {
            let meta = heap.space.meta(page)
            if let granule = meta.findRun(count, alignment: alignment) {
                take(meta, granule, count)
                return (page, granule)
            }
        }
        let page = try mapPage(node: node, heap: heap)
        let meta = heap.space.meta(page)
        take(meta, 0, count)
        return (page, 0)
    }

    private mutating func take(_ meta: HeapPageMeta, _ granule: Int, _ count: Int) {
        if unsafe meta.header.pointee.freeGranules == HeapSizeClasses.granulesPerPage { emptyPages -= 1 }
        meta.mark(granule, count, free: false)
    }

    /// Gives granules back; a page left empty counts toward the retention,
    /// beyond which empty pages go back to the kernel.
    mutating func releaseGranules(page: Int, granule: Int, count: Int, heap: DMAHeap) {
        let meta = heap.space.meta(page)
        meta.mark(granule, count, free: true)
        if unsafe meta.header.pointee.freeGranules == HeapSizeClasses.granulesPerPage {
            emptyPages += 1
            shrink(keeping: heap.options.retentionBytes, heap: heap)
        }
    }

    /// Unmaps empty pages, highest first, until at most `retention` bytes of
    /// them stay mapped.
    mutating func shrink(keeping retention: Int, heap: DMAHeap) {
        var index = mapped.count - 1
        while emptyPages * HeapSizeClasses.pageBytes > retention && index >= 0 {
            let page = mapped[index]
            if unsafe heap.space.meta(page).header.pointee.freeGranules == HeapSizeClasses.granulesPerPage {
                unmapPage(page, heap: heap)
                mapped.remove(at: index)
                emptyPages -= 1
                shrinks += 1
            }
            index -= 1
        }
    }

    /// Maps a hugepage of the node into the lowest free slot of its range:
    /// `MAP_FIXED` over the reservation, bound to the node (`mbind(2)`),
    /// prefaulted under the SIGBUS guard, its node verified and its physical
    /// address read from `/proc/self/pagemap` (``MemoryMapping``); then every
    /// memory event handler hears of it.
    mutating func mapPage(node: HeapNode, heap: DMAHeap) throws(DMAHeapError) -> Int {
        var slot = node.firstPage
        for page in mapped {
            if page != slot { break }
            slot += 1
        }
        while lost.contains(slot) { slot += 1 }
        guard slot < node.firstPage + heap.space.pagesPerNode else {
            throw .rangeExhausted(node: node.node, maximumBytes: heap.options.maximumBytes)
        }
        let address = heap.space.pageAddress(slot)
        var options = MappingOptions(pageSize: .huge2M, populate: true, lock: false, dontFork: true,
                                     prefaultThreads: 1, translation: .physical,
                                     numaPolicy: heap.placementPolicy(node: node.node))
        options.fixedAddress = address
        let mapping: MemoryMapping
        do {
            mapping = try MemoryMapping(length: HeapSizeClasses.pageBytes, options: options)
        } catch {
            // The failed mapping was unmapped: claim the hole again.
            if !heap.reserve(address: address, length: HeapSizeClasses.pageBytes, replacing: false) { lost.insert(slot) }
            throw .growthFailed(node: node.node, neededBytes: HeapSizeClasses.pageBytes, underlying: error)
        }
        let physical = mapping.physicalAddress(ofPage: 0)
        let parts = unsafe mapping.relinquish()
        guard let physical else {
            _ = heap.reserve(address: address, length: HeapSizeClasses.pageBytes, replacing: true)
            if parts.fd >= 0 { Sys.close(.init(rawValue: parts.fd)) }
            throw .noPhysicalAddresses
        }
        let region = MemoryRegion(address: address, length: HeapSizeClasses.pageBytes, pageSize: .huge2M,
                                  pieces: [.init(offset: 0, length: HeapSizeClasses.pageBytes, physicalAddress: physical)])
        do { try heap.events.add(region) } catch {
            _ = heap.reserve(address: address, length: HeapSizeClasses.pageBytes, replacing: true)
            if parts.fd >= 0 { Sys.close(.init(rawValue: parts.fd)) }
            throw .eventRefused(error)
        }
        heap.space.meta(slot).initialize(physical: physical.rawValue, node: node.index, fd: parts.fd)
        let at = mapped.firstIndex(where: { $0 > slot }) ?? mapped.count
        mapped.insert(slot, at: at)
        emptyPages += 1
        grows += 1
        noteMapped()
        return slot
    }

    /// Tells the handlers the page leaves, then puts the reservation back
    /// over it (`mmap(2)` with `MAP_FIXED` and `PROT_NONE`), which returns
    /// the hugepage to the kernel.
    mutating func unmapPage(_ page: Int, heap: DMAHeap) {
        let meta = heap.space.meta(page)
        let address = heap.space.pageAddress(page)
        let physical = unsafe PhysicalAddress(meta.header.pointee.physical)
        heap.events.remove(MemoryRegion(address: address, length: HeapSizeClasses.pageBytes, pageSize: .huge2M,
                                        pieces: [.init(offset: 0, length: HeapSizeClasses.pageBytes, physicalAddress: physical)]))
        heap.releaseChecks(meta)
        let fd = unsafe meta.header.pointee.fd
        meta.deinitialize()
        if !heap.reserve(address: address, length: HeapSizeClasses.pageBytes, replacing: true) { lost.insert(page) }
        if fd >= 0 { Sys.close(.init(rawValue: fd)) }
    }
}
