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
        /// The heap's range and page metadata.
        let space: HeapSpace
        /// Pages mapped now, ascending.
        var mapped: [Int] = []
        /// Mapped pages with every granule free.
        var emptyPages = 0
        var peakMappedPages = 0
        /// Page slots whose reservation the kernel refused to put back (never used again).
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
        /// Free runs of granules, by length (1...512): the first run's id
        /// (page × 512 + granule), `noRun` when none; and a bit per length
        /// with a non-empty list, so the smallest run that fits is a bit scan.
        var runHeads = [UInt32](repeating: HeapNode.noRun, count: HeapSizeClasses.granulesPerPage + 1)
        var runMask = [UInt64](repeating: 0, count: HeapSizeClasses.granulesPerPage / 64 + 1)
    }

    static let noRun = UInt32.max

    let state: Mutex<State>

    init(index: Int, node: Int, firstPage: Int, classCount: Int, space: HeapSpace) {
        self.index = index
        self.node = node
        self.firstPage = firstPage
        self.state = Mutex(State(space: space, abandoned: Array(repeating: [], count: classCount)))
    }
}

/// Per node and class, free one-object spans threads gave back, moved to
/// and from thread stashes in batches. Each list is 128 bytes of raw memory
/// under its own spin lock (held for a few loads and stores), so threads
/// refilling different classes never meet and the hot path touches no
/// reference-counted object.
@safe
struct HeapCentralLists: @unchecked Sendable {
    struct Entry: ~Copyable {
        // The count first: `body(&entry.pointee.count, …)` is an access at
        // the entry's address, which must not be the lock's (ThreadSanitizer
        // takes it for a race with the lock's exchange).
        var count = 0
        let lock = Atomic<Bool>(false)
    }

    static let entryBytes = 128
    static let capacity = (entryBytes - MemoryLayout<Entry>.stride) / MemoryLayout<UInt>.stride

    let raw: UnsafeMutableRawPointer
    let lists: Int

    init(lists: Int) {
        self.lists = lists
        unsafe raw = .allocate(byteCount: lists * Self.entryBytes, alignment: 64)
        for i in 0..<lists { unsafe (raw + i * Self.entryBytes).assumingMemoryBound(to: Entry.self).initialize(to: Entry()) }
    }

    func deallocate() {
        for i in 0..<lists { unsafe (raw + i * Self.entryBytes).assumingMemoryBound(to: Entry.self).deinitialize(count: 1) }
        unsafe raw.deallocate()
    }

    /// Runs `body` with list `index`'s count and slots, under its lock.
    @inline(__always)
    func withList<R>(_ index: Int, _ body: (inout Int, UnsafeMutablePointer<UInt>) -> R) -> R {
        let entry = unsafe (raw + index &* Self.entryBytes).assumingMemoryBound(to: Entry.self)
        while true {
            if unsafe !entry.pointee.lock.exchange(true, ordering: .acquiring) { break }
            while unsafe entry.pointee.lock.load(ordering: .relaxed) { Sys.yieldProcessor() }
        }
        defer { unsafe entry.pointee.lock.store(false, ordering: .releasing) }
        let slots = unsafe (raw + index &* Self.entryBytes + MemoryLayout<Entry>.stride).assumingMemoryBound(to: UInt.self)
        return unsafe body(&entry.pointee.count, slots)
    }
}

extension HeapNode.State {
    var mappedBytes: Int { mapped.count * HeapSizeClasses.pageBytes + largeBytes }

    mutating func noteMapped() {
        peakMappedPages = max(peakMappedPages, mapped.count)
        peakBytes = max(peakBytes, mappedBytes)
    }

    /// Takes `count` granules starting at a multiple of `alignment` granules,
    /// growing by a page when no free run has them. Without alignment: the
    /// smallest free run that fits (a bit scan over the per-length lists),
    /// split; with alignment: the first fit in page order.
    mutating func allocateGranules(
        _ count: Int, alignment: Int, node: HeapNode, heap: DMAHeap
    ) throws(DMAHeapError) -> (page: Int, granule: Int) {
        let perPage = HeapSizeClasses.granulesPerPage
        if alignment == 1 {
            if let length = smallestRun(atLeast: count) {
                let id = Int(runHeads[length])
                let page = id / perPage, start = id % perPage
                let meta = heap.space.meta(page)
                removeRun(meta, page: page, start: start, heap: heap)
                if length > count { insertRun(meta, page: page, start: start + count, length: length - count) }
                take(meta, start, count)
                return (page, start)
            }
        } else {
            for page in mapped {
                let meta = heap.space.meta(page)
                if let granule = meta.findRun(count, alignment: alignment) {
                    carve(meta, page: page, granule: granule, count: count, heap: heap)
                    return (page, granule)
                }
            }
        }
        let page = try mapPage(node: node, heap: heap)
        let meta = heap.space.meta(page)
        carve(meta, page: page, granule: 0, count: count, heap: heap)
        return (page, 0)
    }

    /// The smallest length ≥ `count` with a free run.
    func smallestRun(atLeast count: Int) -> Int? {
        var word = count >> 6
        var bits = runMask[word] & (~0 << UInt64(count & 63))
        while true {
            if bits != 0 { return (word << 6) + bits.trailingZeroBitCount }
            word += 1
            guard word < runMask.count else { return nil }
            bits = runMask[word]
        }
    }

    /// Takes granules `granule..<granule + count`, all free, out of the free
    /// run holding them; what is left of the run on either side stays free.
    private mutating func carve(_ meta: HeapPageMeta, page: Int, granule: Int, count: Int, heap: DMAHeap) {
        var start = granule
        while start > 0 && meta.isFree(start - 1) { start -= 1 }
        let length = Int(unsafe meta.runLength[start])
        removeRun(meta, page: page, start: start, heap: heap)
        if granule > start { insertRun(meta, page: page, start: start, length: granule - start) }
        let end = start + length
        if granule + count < end { insertRun(meta, page: page, start: granule + count, length: end - granule - count) }
        take(meta, granule, count)
    }

    private mutating func take(_ meta: HeapPageMeta, _ granule: Int, _ count: Int) {
        if unsafe meta.header.pointee.freeGranules == HeapSizeClasses.granulesPerPage { emptyPages -= 1 }
        meta.mark(granule, count, free: false)
    }

    func metaOf(_ page: Int) -> HeapPageMeta { space.meta(page) }

    mutating func insertRun(_ meta: HeapPageMeta, page: Int, start: Int, length: Int) {
        let id = UInt32(page * HeapSizeClasses.granulesPerPage + start)
        unsafe meta.runLength[start] = UInt16(length)
        unsafe meta.runLength[start + length - 1] = UInt16(length)
        let head = runHeads[length]
        unsafe meta.runNext[start] = head
        unsafe meta.runPrevious[start] = HeapNode.noRun
        if head != HeapNode.noRun {
            let p = Int(head) / HeapSizeClasses.granulesPerPage, g = Int(head) % HeapSizeClasses.granulesPerPage
            unsafe metaOf(p).runPrevious[g] = id
        }
        runHeads[length] = id
        runMask[length >> 6] |= 1 << UInt64(length & 63)
    }

    mutating func removeRun(_ meta: HeapPageMeta, page: Int, start: Int, heap: DMAHeap) {
        let length = Int(unsafe meta.runLength[start])
        let next = unsafe meta.runNext[start], previous = unsafe meta.runPrevious[start]
        if previous != HeapNode.noRun {
            unsafe metaOf(Int(previous) / HeapSizeClasses.granulesPerPage).runNext[Int(previous) % HeapSizeClasses.granulesPerPage] = next
        } else {
            runHeads[length] = next
            if next == HeapNode.noRun { runMask[length >> 6] &= ~(1 << UInt64(length & 63)) }
        }
        if next != HeapNode.noRun {
            unsafe metaOf(Int(next) / HeapSizeClasses.granulesPerPage).runPrevious[Int(next) % HeapSizeClasses.granulesPerPage] = previous
        }
    }

    /// Gives granules back, merged with free neighbours into one run; a page
    /// left empty counts toward the retention, beyond which empty pages go
    /// back to the kernel.
    mutating func releaseGranules(page: Int, granule: Int, count: Int, heap: DMAHeap) {
        let meta = heap.space.meta(page)
        meta.mark(granule, count, free: true)
        var start = granule, length = count
        if granule > 0 && meta.isFree(granule - 1) {
            let left = Int(unsafe meta.runLength[granule - 1])
            start = granule - left
            removeRun(meta, page: page, start: start, heap: heap)
            length += left
        }
        let after = granule + count
        if after < HeapSizeClasses.granulesPerPage && meta.isFree(after) {
            let right = Int(unsafe meta.runLength[after])
            removeRun(meta, page: page, start: after, heap: heap)
            length += right
        }
        insertRun(meta, page: page, start: start, length: length)
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
            let meta = heap.space.meta(page)
            if unsafe meta.header.pointee.freeGranules == HeapSizeClasses.granulesPerPage {
                removeRun(meta, page: page, start: 0, heap: heap)
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
            // A failed mapping puts the reservation back over its range itself.
            throw .growthFailed(node: node.node, neededBytes: HeapSizeClasses.pageBytes, underlying: error)
        }
        let physical = mapping.physicalAddress(ofPage: 0)
        let parts = unsafe mapping.relinquish()
        guard let physical else {
            _ = heap.reserve(address: address, length: HeapSizeClasses.pageBytes)
            if unsafe parts.fd >= 0 { unsafe Sys.close(.init(rawValue: parts.fd)) }
            throw .noPhysicalAddresses
        }
        let region = MemoryRegion(address: address, length: HeapSizeClasses.pageBytes, pageSize: .huge2M,
                                  pieces: [.init(offset: 0, length: HeapSizeClasses.pageBytes, physicalAddress: physical)])
        do { try heap.events.add(region) } catch {
            _ = heap.reserve(address: address, length: HeapSizeClasses.pageBytes)
            if unsafe parts.fd >= 0 { unsafe Sys.close(.init(rawValue: parts.fd)) }
            throw .eventRefused(error)
        }
        let meta = heap.space.meta(slot)
        unsafe meta.initialize(physical: physical.rawValue, node: node.index, fd: parts.fd)
        insertRun(meta, page: slot, start: 0, length: HeapSizeClasses.granulesPerPage)
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
        if !heap.reserve(address: address, length: HeapSizeClasses.pageBytes) { lost.insert(page) }
        if fd >= 0 { Sys.close(.init(rawValue: fd)) }
    }
}
