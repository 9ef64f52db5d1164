import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Memory for devices in any size: `allocate(size, alignment, boundary,
/// node)` gives bytes that are IOVA-contiguous, aligned, inside one
/// `boundary`-sized block, on the node asked for, with the IOVA of any byte
/// in O(1) — what `rte_malloc_socket`, `rte_memzone_reserve_bounded` and
/// `spdk_zmalloc` give C programs.
///
/// **Where memory comes from.** At creation the heap reserves one virtual
/// range (`mmap(2)` with `PROT_NONE` and `MAP_NORESERVE`), a slice of
/// ``Options/maximumBytes`` per NUMA node. It grows by mapping 2 MiB
/// hugepages into its node's slice (`MAP_FIXED`, bound with `mbind(2)`,
/// prefaulted under the SIGBUS guard, node verified, physical address read
/// from `/proc/self/pagemap`) and gives empty pages back to the kernel
/// beyond ``Options/retentionBytes``. Each page added or given back is a
/// ``MemoryEvent`` on ``events``, so a VFIO container or an io_uring
/// registration that follows the arena maps and unmaps it.
///
/// **Contiguity by construction.** Allocations up to 2 MiB never straddle a
/// hugepage, and a hugepage is physically contiguous. Larger ones are
/// physically contiguous runs from ``ContiguousMemory`` (mapped on their
/// own), or fail with ``DMAHeapError/noContiguousRun(neededBytes:largestRunBytes:advice:)``.
///
/// **Sizes.** Up to 256 KiB an allocation takes an object of a size class
/// (64-byte steps to 512 bytes, then at most 25 % apart to 8 KiB and 12.5 %
/// above): classes up to 8 KiB are carved from spans (runs of 4 KiB
/// granules) that one thread owns; larger classes take a span each. Above
/// 256 KiB, or with an alignment above 4 KiB, an allocation takes its own
/// granules under the node's lock; above 2 MiB, a contiguous run.
///
/// **Threads.** Each thread has a cache per heap: the span it carves from,
/// per class, and a few free one-object spans. Allocating and freeing take
/// no lock; a thread freeing another thread's object pushes it on that
/// span's lock-free list of remote frees, which the owner collects when it
/// runs out. Spans of an exited thread that still hold objects are adopted
/// by the next thread that needs that class. Only new spans and pages,
/// direct and large allocations take the node's lock.
///
/// **Alignment and boundaries.** Every allocation is aligned to at least 64
/// bytes. Larger alignments up to 4 KiB pick the first class whose size is
/// a multiple of the alignment; above that, granules at that alignment;
/// above 2 MiB (large blocks) the alignment applies to the physical address.
/// A `boundary` below 2 MiB is kept by aligning the allocation to the power
/// of two at or above its size (at most 2× the memory); boundaries of 2 MiB
/// and more hold for every allocation up to a page by construction, and for
/// large blocks through the contiguous search, which keeps only runs whose
/// physical range stays between two multiples of the boundary
/// (``ContiguousRequest/physicalBoundary``).
///
/// **Nodes.** `node: nil` means any node: the calling thread's node first;
/// when that node cannot grow (no free hugepages there), the other nodes
/// the process may use, in order.
public final class DMAHeap: Sendable {
    public struct Options: Sendable {
        /// Bytes of empty pages kept mapped, per node, for the next
        /// allocations; empty pages beyond it go back to the kernel at once.
        public var retentionBytes: Int
        /// Checked mode: ``freeChecked(_:)`` finds double frees, foreign and
        /// interior pointers and writes past the end (16 guard bytes per
        /// allocation); every allocation takes the general path.
        public var checked: Bool
        /// The virtual range reserved per node: the most the heap can hold
        /// on one node. Costs address space only.
        public var maximumBytes: Int
        /// Most bytes of 2 MiB pages mapped at once while looking for a
        /// large block's physically contiguous run (nil: eight times the
        /// block plus 128 MiB, or 256 MiB, whichever is more: a bounded look
        /// that leaves other processes the rest of the free pool). On a
        /// machine whose free pool is fragmented, runs longer than two pages
        /// may lie beyond the default look: give up to every free 2 MiB
        /// page's bytes to search them all.
        public var contiguousSearchBytes: Int?

        public init(retentionBytes: Int = 0, checked: Bool = false, maximumBytes: Int = 64 << 30,
                    contiguousSearchBytes: Int? = nil) {
            self.retentionBytes = retentionBytes
            self.checked = checked
            self.maximumBytes = maximumBytes
            self.contiguousSearchBytes = contiguousSearchBytes
        }
    }

    public let options: Options
    /// Memory joining and leaving the heap: follow it with a VFIO container
    /// (the devices layer's `attach(_:)` of a VFIO container) or any handler.
    public let events: MemoryArena

    let id: UInt64
    let slot: Int
    let space: HeapSpace
    let classes: HeapClassTable
    let nodes: [HeapNode]
    /// Node index by NUMA node id, -1 when the heap does not serve it.
    let nodeIndexOfID: [Int]
    let checked: Bool
    /// The whole reservation, for `deinit`.
    let reservation: (base: UInt, length: Int)
    let metaBytes: Int
    /// While a VFIO container is attached, IOVA = virtual address.
    let deviceIOVAIsVirtual = Atomic<Bool>(false)
    let memzoneTable = Mutex<[String: Memzone]>([:])
    /// Checked mode: where the last 64 large blocks freed were, to tell a
    /// double free from a foreign pointer.
    let freedLargeBlocks = Mutex<[UInt]>([])
    /// One search for a contiguous run at a time: each may map many free
    /// hugepages for a moment, and two at once starve each other.
    let largeSearch = Mutex<Void>(())
    let largeMap: HeapLargeMap
    /// Free one-object spans per node and class.
    let central: HeapCentralLists
    /// Where a thread cache's counters start (computed once, not per call).
    let countersOffset: Int

    /// Creates a heap serving every NUMA node the process may use. Maps
    /// nothing yet: the first allocation on a node maps its first page.
    /// Reserves the address space with `mmap(2)` (`PROT_NONE`, `MAP_NORESERVE`).
    public init(_ options: Options = Options()) throws(DMAHeapError) {
        let pageBytes = HeapSizeClasses.pageBytes
        guard options.maximumBytes > 0, options.maximumBytes <= 1 << 40 else {
            throw .sizeTooLarge(requested: options.maximumBytes, maximum: 1 << 40)
        }
        guard options.retentionBytes >= 0 else { throw .sizeTooLarge(requested: options.retentionBytes, maximum: options.maximumBytes) }
        if let search = options.contiguousSearchBytes, search <= 0 { throw .zeroSize(requested: search) }
        let nodeIDs = ((try? NUMAPlacement.allowedNodes()) ?? [0]).sorted()
        let pagesPerNode = (options.maximumBytes + pageBytes - 1) / pageBytes
        let length = nodeIDs.count * pagesPerNode * pageBytes + pageBytes
        let reserved: UnsafeMutableRawPointer
        do {
            unsafe reserved = try unsafe Sys.mmap(length: length, protection: .none, flags: [.private, .anonymous, .noReserve])
        } catch { throw .systemCall(error) }
        let base = (UInt(bitPattern: reserved) + UInt(pageBytes - 1)) & ~UInt(pageBytes - 1)
        let pages = nodeIDs.count * pagesPerNode
        let metaBytes = pages * HeapPageMeta.stride
        let metas: UnsafeMutableRawPointer
        do {
            unsafe metas = try unsafe Sys.mmap(length: metaBytes, protection: .readWrite, flags: [.private, .anonymous, .noReserve])
        } catch {
            try? unsafe Sys.munmap(reserved, length: length)
            throw .systemCall(error)
        }
        let ticket: (slot: Int, id: UInt64)
        do { ticket = try HeapRegistry.reserveSlot() } catch {
            try? unsafe Sys.munmap(reserved, length: length)
            try? unsafe Sys.munmap(metas, length: metaBytes)
            throw error
        }
        self.options = options
        self.events = MemoryArena()
        self.id = ticket.id
        self.slot = ticket.slot
        let space = unsafe HeapSpace(base: base, bytes: UInt(pages * pageBytes), pagesPerNode: pagesPerNode, metas: metas)
        self.space = space
        self.classes = HeapClassTable.shared
        self.nodes = nodeIDs.enumerated().map {
            HeapNode(index: $0.offset, node: $0.element, firstPage: $0.offset * pagesPerNode,
                     classCount: HeapClassTable.shared.count, space: space)
        }
        var byID = [Int](repeating: -1, count: (nodeIDs.max() ?? 0) + 1)
        for (i, node) in nodeIDs.enumerated() { byID[node] = i }
        self.nodeIndexOfID = byID
        self.checked = options.checked
        self.reservation = (UInt(bitPattern: reserved), length)
        self.metaBytes = metaBytes
        self.largeMap = HeapLargeMap()
        self.central = HeapCentralLists(lists: nodeIDs.count * HeapClassTable.shared.count)
        self.countersOffset = HeapThreadCache.countersOffset(nodes: nodeIDs.count, classes: HeapClassTable.shared.count)
        unsafe HeapRegistry.publish(slot: ticket.slot, id: ticket.id, heap: Unmanaged.passUnretained(self))
    }

    deinit {
        HeapRegistry.retire(slot: slot, id: id, nodes: nodes.count, classes: classes.count)
        for node in nodes {
            node.state.withLock { s in
                for page in s.mapped { s.unmapPage(page, heap: self) }
                s.mapped = []
                for block in s.large.values { releaseLarge(block) }
                s.large = [:]
            }
        }
        largeMap.deallocate()
        central.deallocate()
        try? unsafe Sys.munmap(UnsafeMutableRawPointer(bitPattern: reservation.base)!, length: reservation.length)
        try? unsafe Sys.munmap(space.metas, length: metaBytes)
    }

    // MARK: - allocate and free

    /// Allocates `size` bytes, IOVA-contiguous, aligned to `alignment` (at
    /// least 64), not crossing a multiple of `boundary`, on `node` (nil: the
    /// calling thread's node first, then the others), zero-filled when asked.
    /// Without alignment above 64, boundary or node, up to 256 KiB, it takes
    /// no lock.
    @inline(__always)
    public func allocate(
        _ size: Int, alignment: Int = 64, boundary: Int? = nil, node: Int? = nil, zeroed: Bool = false
    ) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        if _fastPath(UInt(bitPattern: size &- 1) < UInt(HeapSizeClasses.maximumClassSize)
                     && UInt(bitPattern: alignment &- 1) < 64 && alignment & (alignment &- 1) == 0
                     && boundary == nil && node == nil
                     && !checked && !zeroed) {
            let cache = threadCache()
            let c = classes.classIndex(of: size)
            let home = unsafe cache.header.pointee.homeNode
            if let pointer = unsafe popCached(cache, node: home, class: c) { return unsafe pointer }
            return try unsafe refillOrGeneral(cache, node: home, class: c, size: size)
        }
        return try unsafe allocateGeneral(size, alignment: alignment, boundary: boundary, node: node, zeroed: zeroed)
    }

    /// Frees an allocation. Undefined for a pointer that is not the start
    /// of a live allocation of this heap, as `free(3)`; a checked heap
    /// checks it and stops the process with the reason (use
    /// ``freeChecked(_:)`` to get the error instead).
    @inline(__always)
    public func free(_ pointer: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: pointer)
        let offset = address &- space.base
        guard _fastPath(offset < space.bytes && !checked) else { return unsafe freeGeneral(pointer) }
        let meta = space.meta(Int(offset &>> UInt(HeapSizeClasses.pageShift)))
        let granule = Int((offset &>> UInt(HeapSizeClasses.granuleShift)) & UInt(HeapSizeClasses.granulesPerPage - 1))
        let span = unsafe meta.span(meta.spanOf(granule))
        unsafe freeObject(address, span: span)
    }

    /// Whether `address` is memory of this heap (mapped now).
    public func contains(_ address: UnsafeRawPointer) -> Bool {
        let a = UInt(bitPattern: address)
        let offset = a &- space.base
        if offset < space.bytes { return unsafe space.meta(Int(offset >> UInt(HeapSizeClasses.pageShift))).header.pointee.mapped }
        return largeMap.lookup(a) != nil
    }

    /// The IOVA of the byte at `address`: its physical address, or, while a
    /// VFIO container is attached, the container's IOVA (the virtual
    /// address). Nil outside the heap. Two loads, no lock.
    @inline(__always)
    public func iova(of address: UnsafeRawPointer) -> UInt64? {
        let a = UInt(bitPattern: address)
        let offset = a &- space.base
        if _fastPath(offset < space.bytes) {
            let header = unsafe space.meta(Int(offset &>> UInt(HeapSizeClasses.pageShift))).header
            guard _fastPath(unsafe header.pointee.mapped) else { return nil }
            if deviceIOVAIsVirtual.load(ordering: .relaxed) { return UInt64(a) }
            return unsafe header.pointee.physical &+ UInt64(offset & UInt(HeapSizeClasses.pageBytes - 1))
        }
        guard let physical = largeMap.lookup(a) else { return nil }
        return deviceIOVAIsVirtual.load(ordering: .relaxed) ? UInt64(a) : physical
    }

    /// The IOVA of `address`, as ``iova(of:)``, shrinking `length` to the
    /// bytes from `address` that are IOVA-contiguous (across hugepages when
    /// they lie next to each other physically). Nil outside the heap.
    public func translate(_ address: UnsafeRawPointer, length: inout Int) -> UInt64? {
        guard let first = unsafe iova(of: address) else { length = 0; return nil }
        let pageBytes = HeapSizeClasses.pageBytes
        let a = UInt(bitPattern: address)
        var contiguous = pageBytes - Int(a & UInt(pageBytes - 1))
        while contiguous < length {
            let next = unsafe UnsafeRawPointer(bitPattern: a + UInt(contiguous))!
            guard let iova = unsafe iova(of: next), iova == first + UInt64(contiguous) else { break }
            contiguous += pageBytes
        }
        length = min(length, contiguous)
        return first
    }

    /// The bytes usable from the start of an allocation (at least the size
    /// asked for); 0 for anything else.
    public func usableSize(_ pointer: UnsafeRawPointer) -> Int {
        let a = UInt(bitPattern: pointer)
        let offset = a &- space.base
        guard offset < space.bytes else {
            guard let block = largeBlock(containing: a)?.block, block.address == a else { return 0 }
            return block.length
        }
        let meta = space.meta(Int(offset >> UInt(HeapSizeClasses.pageShift)))
        guard unsafe meta.header.pointee.mapped else { return 0 }
        let granule = Int((offset >> UInt(HeapSizeClasses.granuleShift)) & UInt(HeapSizeClasses.granulesPerPage - 1))
        let span = unsafe meta.span(meta.spanOf(granule))
        switch unsafe span.pointee.kind {
        case .multi, .single: return unsafe classes.sizes[Int(span.pointee.classIndex)] - (checked ? HeapChecks.guardBytes : 0)
        case .direct: return unsafe Int(span.pointee.end - a) - (checked ? HeapChecks.guardBytes : 0)
        case .free: return 0
        }
    }

    // MARK: - thread caches

    @inline(__always)
    func threadCache() -> HeapThreadCache {
        if let table = HeapRegistry.ThreadTable.current, let cache = table.cache(slot: slot, id: id) {
            return cache
        }
        return makeThreadCache()
    }

    @inline(never)
    func makeThreadCache() -> HeapThreadCache { HeapRegistry.makeCache(for: self) }

    /// The calling thread's node, as an index into ``nodes``.
    func homeNodeIndex() -> Int {
        guard nodes.count > 1, let node = try? Sys.getcpu().node, node < nodeIndexOfID.count,
              nodeIndexOfID[node] >= 0 else { return 0 }
        return nodeIndexOfID[node]
    }

    /// The NUMA policy pages of `node` are mapped with.
    func placementPolicy(node: Int) -> NUMAPolicy { .bind(node) }

    /// Puts the `PROT_NONE` reservation back over a range of the heap's
    /// own (`mmap(2)` with `MAP_FIXED`, which replaces a page atomically and
    /// returns it to the kernel). False when the kernel refused.
    func reserve(address: UInt, length: Int) -> Bool {
        do {
            let got = try unsafe Sys.mmap(length: length, protection: .none, flags: [.private, .anonymous, .noReserve, .fixed],
                                          at: UnsafeMutableRawPointer(bitPattern: address))
            return UInt(bitPattern: got) == address
        } catch { return false }
    }

    // MARK: - cached classes

    /// An object of class `c` from the thread's cache on node index `n`, or
    /// nil when the cache has none at hand.
    @inline(__always)
    func popCached(_ cache: HeapThreadCache, node n: Int, class c: Int) -> UnsafeMutableRawPointer? {
        let entry = unsafe cache.entry(n &* classes.count &+ c)
        if c < classes.firstSingleClass {
            let spanBits = unsafe entry.pointee.current
            guard spanBits != 0 else { return nil }
            let span = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: spanBits).unsafelyUnwrapped
            let head = unsafe span.pointee.freeList
            if head != 0 {
                let object = unsafe UnsafeMutableRawPointer(bitPattern: head).unsafelyUnwrapped
                unsafe span.pointee.freeList = object.load(as: UInt.self)
                unsafe span.pointee.used &+= 1
                countAllocation(cache, class: c)
                return unsafe object
            }
            let bump = unsafe span.pointee.bump
            guard unsafe bump < span.pointee.end else { return nil }
            unsafe span.pointee.bump = bump &+ UInt(classes.sizes[c])
            unsafe span.pointee.used &+= 1
            countAllocation(cache, class: c)
            return unsafe UnsafeMutableRawPointer(bitPattern: bump).unsafelyUnwrapped
        }
        let n = unsafe entry.pointee.stashCount
        guard n > 0 else { return nil }
        unsafe entry.pointee.stashCount = n &- 1
        unsafe cache.header.pointee.stashedBytes &-= classes.sizes[c]
        let span = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: HeapThreadCache.stashSlot(entry, n &- 1).pointee)
            .unsafelyUnwrapped
        unsafe span.pointee.used = 1
        countAllocation(cache, class: c)
        return unsafe UnsafeMutableRawPointer(bitPattern: span.pointee.start).unsafelyUnwrapped
    }

    @inline(__always)
    func countAllocation(_ cache: HeapThreadCache, class c: Int) {
        unsafe HeapThreadCache.bump(cache.counters(at: countersOffset) + c, by: 1)
    }

    @inline(__always)
    func countFree(_ cache: HeapThreadCache, class c: Int) {
        unsafe HeapThreadCache.bump(cache.counters(at: countersOffset) + (classes.count &+ c), by: 1)
    }

    /// Frees an object of a span of this heap (any kind).
    @inline(__always)
    func freeObject(_ address: UInt, span: UnsafeMutablePointer<HeapSpan>) {
        switch unsafe span.pointee.kind {
        case .multi:
            let cache = threadCache()
            let c = unsafe Int(span.pointee.classIndex)
            countFree(cache, class: c)
            if _fastPath(unsafe span.pointee.owner.load(ordering: .relaxed) == cache.bits) {
                unsafe UnsafeMutableRawPointer(bitPattern: address).unsafelyUnwrapped.storeBytes(of: span.pointee.freeList, as: UInt.self)
                unsafe span.pointee.freeList = address
                unsafe span.pointee.used &-= 1
                if _slowPath(unsafe span.pointee.used == 0) {
                    let entry = unsafe cache.entry(Int(span.pointee.node) &* classes.count &+ c)
                    if unsafe entry.pointee.current != UInt(bitPattern: span) { unsafe releaseOwnedSpan(span, entry: entry) }
                }
            } else {
                unsafe pushRemote(address, span: span)
            }
        case .single:
            let cache = threadCache()
            let c = unsafe Int(span.pointee.classIndex)
            countFree(cache, class: c)
            let entry = unsafe cache.entry(Int(span.pointee.node) &* classes.count &+ c)
            unsafe span.pointee.used = 0
            let n = unsafe entry.pointee.stashCount
            if unsafe _fastPath(n < classes.stashLimit[c]) {
                unsafe HeapThreadCache.stashSlot(entry, n).pointee = UInt(bitPattern: span)
                unsafe entry.pointee.stashCount = n &+ 1
                let stashed = unsafe cache.header.pointee.stashedBytes &+ classes.sizes[c]
                unsafe cache.header.pointee.stashedBytes = stashed
                // All stashes together stay under a bound: this class gives half back.
                if _slowPath(stashed > HeapClassTable.threadStashBytes) { unsafe flushStash(cache, entry, adding: nil, class: c) }
            } else {
                unsafe flushStash(cache, entry, adding: span, class: c)
            }
        case .direct:
            unsafe freeDirect(span)
        case .free:
            break
        }
    }

    /// Pushes an object on its span's list of remote frees (lock-free).
    @inline(__always)
    func pushRemote(_ address: UInt, span: UnsafeMutablePointer<HeapSpan>) {
        let object = unsafe UnsafeMutableRawPointer(bitPattern: address).unsafelyUnwrapped
        var head = unsafe span.pointee.remote.load(ordering: .relaxed)
        while true {
            unsafe object.storeBytes(of: head, as: UInt.self)
            let (exchanged, found) = unsafe span.pointee.remote.weakCompareExchange(
                expected: head, desired: address, successOrdering: .releasing, failureOrdering: .relaxed)
            if exchanged { return }
            head = found
        }
    }

    /// Moves a span's remote frees to its free list (owner only). Returns
    /// how many there were.
    @discardableResult
    func collectRemote(_ span: UnsafeMutablePointer<HeapSpan>) -> Int {
        guard unsafe span.pointee.remote.load(ordering: .relaxed) != 0 else { return 0 }
        let list = unsafe span.pointee.remote.exchange(0, ordering: .acquiring)
        var count = 1
        var tail = list
        while true {
            let next = unsafe UnsafeRawPointer(bitPattern: tail).unsafelyUnwrapped.load(as: UInt.self)
            if next == 0 { break }
            tail = next
            count += 1
        }
        unsafe UnsafeMutableRawPointer(bitPattern: tail).unsafelyUnwrapped.storeBytes(of: span.pointee.freeList, as: UInt.self)
        unsafe span.pointee.freeList = list
        unsafe span.pointee.used -= Int32(count)
        return count
    }

    /// Whether a span owned by the caller has an object at hand.
    @inline(__always)
    func hasRoom(_ span: UnsafeMutablePointer<HeapSpan>) -> Bool {
        unsafe span.pointee.freeList != 0 || span.pointee.bump < span.pointee.end
    }

    // MARK: - slow paths

    /// Validates the request and serves it from a class, from granules or
    /// from a contiguous run.
    @inline(never)
    func allocateGeneral(
        _ size: Int, alignment: Int, boundary: Int?, node: Int?, zeroed: Bool
    ) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        guard size > 0 else { throw .zeroSize(requested: size) }
        guard size <= options.maximumBytes else { throw .sizeTooLarge(requested: size, maximum: options.maximumBytes) }
        guard alignment > 0, alignment & (alignment - 1) == 0 else { throw .alignmentNotPowerOfTwo(requested: alignment) }
        if let boundary {
            guard boundary > 0, boundary & (boundary - 1) == 0 else { throw .boundaryNotPowerOfTwo(requested: boundary) }
            guard boundary >= size else { throw .boundarySmallerThanSize(size: size, boundary: boundary) }
        }
        guard alignment <= options.maximumBytes else { throw .sizeTooLarge(requested: alignment, maximum: options.maximumBytes) }
        // The node asked for; or the home node first, then the others in order.
        let first: Int, tries: Int
        if let node {
            guard node >= 0, node < nodeIndexOfID.count, nodeIndexOfID[node] >= 0 else {
                throw .unknownNode(UnknownNode(node: node, available: nodes.map(\.node)))
            }
            (first, tries) = (nodeIndexOfID[node], 1)
        } else {
            (first, tries) = (unsafe threadCache().header.pointee.homeNode, nodes.count)
        }
        let full = checked ? size + HeapChecks.guardBytes : size
        var align = max(alignment, 64)
        if let boundary, boundary < HeapSizeClasses.pageBytes {
            align = max(align, 1 << (Int.bitWidth - (size - 1).leadingZeroBitCount))
        }
        var lastError: DMAHeapError? = nil
        for k in 0..<tries {
            let n = k == 0 ? first : (k <= first ? k - 1 : k)
            do {
                let pointer = try unsafe allocate(bytes: full, alignment: align, boundary: boundary, nodeIndex: n)
                if checked { unsafe HeapChecks.recordAllocation(pointer, size: size, heap: self) }
                if zeroed { unsafe memset(pointer, 0, size) }
                return unsafe pointer
            } catch {
                // Only a node that cannot grow makes "any node" try the next.
                guard node == nil, case .growthFailed = error else { throw error }
                lastError = error
            }
        }
        throw lastError!
    }

    /// Allocates `bytes` (guard bytes included) at `alignment` (≥ 64) on a node.
    func allocate(bytes: Int, alignment: Int, boundary: Int?, nodeIndex n: Int) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        if bytes <= HeapSizeClasses.maximumClassSize && alignment <= HeapSizeClasses.granule {
            var c = classes.classIndex(of: bytes)
            if alignment > 64 { c = classes.alignedClass(c, shift: alignment.trailingZeroBitCount) }
            if c < classes.count {
                let cache = threadCache()
                if let pointer = unsafe popCached(cache, node: n, class: c) { return unsafe pointer }
                return try unsafe refill(cache, node: n, class: c)
            }
        }
        if bytes <= HeapSizeClasses.pageBytes && alignment <= HeapSizeClasses.pageBytes {
            return try unsafe allocateDirect(bytes, alignment: alignment, nodeIndex: n)
        }
        return try unsafe allocateLarge(bytes, alignment: alignment, boundary: boundary, nodeIndex: n)
    }

    /// The fast path's miss: refill from the home node; when it cannot grow,
    /// the general path tries the other nodes.
    @inline(never)
    func refillOrGeneral(_ cache: HeapThreadCache, node n: Int, class c: Int, size: Int) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        do { return try unsafe refill(cache, node: n, class: c) } catch {
            guard nodes.count > 1, case .growthFailed = error else { throw error }
            return try unsafe allocateGeneral(size, alignment: 64, boundary: nil, node: nil, zeroed: false)
        }
    }

    /// The cache had nothing for class `c`: remote frees, another owned
    /// span, an abandoned span, or a new one.
    func refill(_ cache: HeapThreadCache, node n: Int, class c: Int) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        let entry = unsafe cache.entry(n * classes.count + c)
        if c >= classes.firstSingleClass {
            // A batch from the node's list of free spans of the class, else a new span.
            let want = max(1, unsafe classes.stashLimit[c] / 2)
            let first: UInt = unsafe central.withList(n &* classes.count &+ c) { count, slots in
                let k = min(want, count)
                guard k > 0 else { return 0 }
                count -= k
                for i in 1..<k {
                    let s = unsafe entry.pointee.stashCount
                    unsafe HeapThreadCache.stashSlot(entry, s).pointee = slots[count + i]
                    unsafe entry.pointee.stashCount = s + 1
                }
                unsafe cache.header.pointee.stashedBytes += (k - 1) * classes.sizes[c]
                return unsafe slots[count]
            }
            let span: UnsafeMutablePointer<HeapSpan>
            if first != 0 {
                unsafe span = unsafe UnsafeMutablePointer(bitPattern: first)!
            } else {
                unsafe span = try unsafe newSpan(class: c, nodeIndex: n, owner: 0)
            }
            unsafe span.pointee.used = 1
            countAllocation(cache, class: c)
            return unsafe UnsafeMutableRawPointer(bitPattern: span.pointee.start)!
        }
        if let current = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: entry.pointee.current) {
            unsafe collectRemote(current)
        }
        if unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: entry.pointee.current).map({ unsafe !hasRoom($0) }) ?? true {
            var candidate = unsafe entry.pointee.owned
            var found: UInt = 0
            while candidate != 0 {
                let span = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: candidate)!
                unsafe collectRemote(span)
                if unsafe hasRoom(span) { found = candidate; break }
                candidate = unsafe span.pointee.next
            }
            if found == 0 {
                found = unsafe adoptAbandoned(class: c, nodeIndex: n, cache: cache, entry: entry)
            }
            if found == 0 {
                let span = try unsafe newSpan(class: c, nodeIndex: n, owner: cache.bits)
                unsafe link(span, into: entry)
                found = UInt(bitPattern: span)
            }
            unsafe entry.pointee.current = found
        }
        return unsafe popCached(cache, node: n, class: c)!
    }

    /// Takes a span of class `c` that an exited thread left with objects in it.
    func adoptAbandoned(class c: Int, nodeIndex n: Int, cache: HeapThreadCache,
                        entry: UnsafeMutablePointer<HeapThreadCache.ClassCache>) -> UInt {
        let adopted: UInt? = nodes[n].state.withLock { s in s.abandoned[c].popLast() }
        guard let adopted, let span = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: adopted) else { return 0 }
        unsafe span.pointee.owner.store(cache.bits, ordering: .releasing)
        unsafe link(span, into: entry)
        unsafe collectRemote(span)
        return adopted
    }

    /// A new span of class `c` from the node's granules.
    func newSpan(class c: Int, nodeIndex n: Int, owner: UInt) throws(DMAHeapError) -> UnsafeMutablePointer<HeapSpan> {
        let granules = unsafe classes.spanGranules[c]
        let (page, granule) = try nodes[n].state.withLock { s throws(DMAHeapError) in
            try s.allocateGranules(granules, alignment: 1, node: nodes[n], heap: self)
        }
        let meta = space.meta(page)
        for g in granule..<(granule + granules) { meta.setSpanOf(g, granule) }
        let span = unsafe meta.span(granule)
        let start = space.granuleAddress(page: page, granule: granule)
        let objects = unsafe classes.objectsPerSpan[c]
        unsafe span.pointee.start = start
        unsafe span.pointee.freeList = 0
        unsafe span.pointee.bump = start
        unsafe span.pointee.end = start + UInt(objects * classes.sizes[c])
        unsafe span.pointee.used = 0
        unsafe span.pointee.capacity = Int32(objects)
        unsafe span.pointee.classIndex = Int32(c)
        unsafe span.pointee.granules = UInt16(granules)
        unsafe span.pointee.node = UInt8(n)
        unsafe span.pointee.next = 0
        unsafe span.pointee.previous = 0
        unsafe span.pointee.remote.store(0, ordering: .relaxed)
        unsafe span.pointee.owner.store(owner, ordering: .relaxed)
        if checked { unsafe HeapChecks.attach(to: span, objects: objects) }
        unsafe span.pointee.kind = objects == 1 ? .single : .multi
        return unsafe span
    }

    func link(_ span: UnsafeMutablePointer<HeapSpan>, into entry: UnsafeMutablePointer<HeapThreadCache.ClassCache>) {
        let head = unsafe entry.pointee.owned
        unsafe span.pointee.next = head
        unsafe span.pointee.previous = 0
        if let first = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: head) { unsafe first.pointee.previous = UInt(bitPattern: span) }
        unsafe entry.pointee.owned = UInt(bitPattern: span)
    }

    func unlink(_ span: UnsafeMutablePointer<HeapSpan>, from entry: UnsafeMutablePointer<HeapThreadCache.ClassCache>) {
        let next = unsafe span.pointee.next, previous = unsafe span.pointee.previous
        if let p = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: previous) { unsafe p.pointee.next = next } else { unsafe entry.pointee.owned = next }
        if let n = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: next) { unsafe n.pointee.previous = previous }
        if unsafe entry.pointee.current == UInt(bitPattern: span) { unsafe entry.pointee.current = 0 }
    }

    /// An owned span became empty: back to the node.
    @inline(never)
    func releaseOwnedSpan(_ span: UnsafeMutablePointer<HeapSpan>, entry: UnsafeMutablePointer<HeapThreadCache.ClassCache>) {
        unsafe unlink(span, from: entry)
        unsafe releaseSpan(span)
    }

    /// Gives a span's granules back to its node (the span holds no object).
    func releaseSpan(_ span: UnsafeMutablePointer<HeapSpan>) {
        let start = unsafe span.pointee.start
        let offset = start - space.base
        let page = Int(offset >> UInt(HeapSizeClasses.pageShift))
        let granule = Int((offset >> UInt(HeapSizeClasses.granuleShift)) & UInt(HeapSizeClasses.granulesPerPage - 1))
        let count = unsafe Int(span.pointee.granules)
        unsafe HeapChecks.detach(from: span)
        unsafe span.pointee.kind = .free
        unsafe span.pointee.owner.store(0, ordering: .relaxed)
        let node = nodes[Int(unsafe span.pointee.node)]
        node.state.withLock { s in s.releaseGranules(page: page, granule: granule, count: count, heap: self) }
    }

    /// The stash of a one-object class is full: half of it, and `span`, go
    /// to the node's list of free spans of the class; what that list holds
    /// beyond ``HeapClassTable/centralBytes`` goes back to the node's granules.
    @inline(never)
    func flushStash(_ cache: HeapThreadCache, _ entry: UnsafeMutablePointer<HeapThreadCache.ClassCache>,
                    adding span: UnsafeMutablePointer<HeapSpan>?, class c: Int) {
        let n = unsafe entry.pointee.stashCount
        let keep = n / 2
        guard unsafe n > keep || span != nil else { return }
        let node = unsafe span.map { unsafe Int($0.pointee.node) }
            ?? Int(unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: HeapThreadCache.stashSlot(entry, 0).pointee)!.pointee.node)
        let limit = unsafe min(HeapCentralLists.capacity, max(1, HeapClassTable.centralBytes / classes.sizes[c]))
        // Spans that do not fit in the list go back to the granules.
        var excess: (UInt, UInt, UInt, UInt, UInt, UInt, UInt, UInt) = (0, 0, 0, 0, 0, 0, 0, 0)
        let spilled: Int = unsafe withUnsafeMutableBytes(of: &excess) { raw in
            let out = unsafe raw.baseAddress!.assumingMemoryBound(to: UInt.self)
            return unsafe central.withList(node &* classes.count &+ c) { count, slots in
                var spilled = 0
                func put(_ bits: UInt) {
                    if count < limit { unsafe slots[count] = bits; count += 1 } else { unsafe out[spilled] = bits; spilled += 1 }
                }
                if let span = unsafe span { put(UInt(bitPattern: span)) }
                for i in keep..<n { unsafe put(HeapThreadCache.stashSlot(entry, i).pointee) }
                return spilled
            }
        }
        unsafe entry.pointee.stashCount = keep
        unsafe cache.header.pointee.stashedBytes -= (n - keep) * classes.sizes[c]
        unsafe withUnsafeBytes(of: &excess) { raw in
            for i in 0..<spilled { unsafe releaseSpan(UnsafeMutablePointer(bitPattern: raw.load(fromByteOffset: i * 8, as: UInt.self))!) }
        }
    }

    /// Gives every span on the nodes' lists of free spans back to the granules.
    func drainCentralLists() {
        for list in 0..<central.lists {
            let spans: [UInt] = unsafe central.withList(list) { count, slots in
                defer { count = 0 }
                return (0..<count).map { unsafe slots[$0] }
            }
            for bits in spans { unsafe releaseSpan(UnsafeMutablePointer(bitPattern: bits)!) }
        }
    }

    /// Granules of their own, under the node's lock: sizes above 256 KiB up
    /// to a page, and alignments above 4 KiB.
    func allocateDirect(_ bytes: Int, alignment: Int, nodeIndex n: Int) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        let granules = (bytes + HeapSizeClasses.granule - 1) >> HeapSizeClasses.granuleShift
        let granuleAlignment = max(1, alignment >> HeapSizeClasses.granuleShift)
        let (page, granule) = try nodes[n].state.withLock { s throws(DMAHeapError) in
            try s.allocateGranules(granules, alignment: granuleAlignment, node: nodes[n], heap: self)
        }
        let meta = space.meta(page)
        for g in granule..<(granule + granules) { meta.setSpanOf(g, granule) }
        let span = unsafe meta.span(granule)
        let start = space.granuleAddress(page: page, granule: granule)
        unsafe span.pointee.start = start
        unsafe span.pointee.end = start + UInt(granules << HeapSizeClasses.granuleShift)
        unsafe span.pointee.used = 1
        unsafe span.pointee.capacity = 1
        unsafe span.pointee.classIndex = -1
        unsafe span.pointee.granules = UInt16(granules)
        unsafe span.pointee.node = UInt8(n)
        if checked { unsafe HeapChecks.attach(to: span, objects: 1) }
        unsafe span.pointee.kind = .direct
        nodes[n].state.withLock { s in s.directBytes += granules << HeapSizeClasses.granuleShift }
        return unsafe UnsafeMutableRawPointer(bitPattern: start)!
    }

    func freeDirect(_ span: UnsafeMutablePointer<HeapSpan>) {
        let bytes = unsafe Int(span.pointee.granules) << HeapSizeClasses.granuleShift
        nodes[Int(unsafe span.pointee.node)].state.withLock { s in s.directBytes -= bytes }
        unsafe releaseSpan(span)
    }

    /// Frees what the fast path does not: checked heaps, large blocks.
    @inline(never)
    func freeGeneral(_ pointer: UnsafeMutableRawPointer) {
        if checked {
            do { unsafe try freeChecked(pointer) } catch { fatalError("DMAHeap.free: \(error)") }
            return
        }
        unsafe freeUnchecked(pointer)
    }

    /// Frees without checks: objects in the range, large blocks outside it.
    func freeUnchecked(_ pointer: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: pointer)
        let offset = address &- space.base
        if offset < space.bytes {
            let meta = space.meta(Int(offset >> UInt(HeapSizeClasses.pageShift)))
            guard unsafe meta.header.pointee.mapped else { return }
            let granule = Int((offset >> UInt(HeapSizeClasses.granuleShift)) & UInt(HeapSizeClasses.granulesPerPage - 1))
            unsafe freeObject(address, span: meta.span(meta.spanOf(granule)))
            return
        }
        _ = freeLarge(address)
    }

    // MARK: - trimming

    /// Gives memory back now: the calling thread's free one-object spans
    /// and empty spans, abandoned spans whose objects have all been freed,
    /// and empty pages beyond the retention. Other threads' caches keep
    /// theirs until they exit or trim.
    public func trim() {
        if let table = HeapRegistry.ThreadTable.current, let cache = table.cache(slot: slot, id: id) {
            flush(cache, abandon: false)
        }
        drainCentralLists()
        for node in nodes {
            let candidates: [[UInt]] = node.state.withLock { s in
                let all = s.abandoned
                s.abandoned = Array(repeating: [], count: classes.count)
                return all
            }
            var keep: [[UInt]] = Array(repeating: [], count: classes.count)
            for (c, list) in candidates.enumerated() {
                for bits in list {
                    let span = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: bits)!
                    unsafe collectRemote(span)
                    if unsafe span.pointee.used == 0 { unsafe releaseSpan(span) } else { keep[c].append(bits) }
                }
            }
            node.state.withLock { s in
                for c in keep.indices { s.abandoned[c].append(contentsOf: keep[c]) }
                s.shrink(keeping: options.retentionBytes, heap: self)
            }
        }
    }

    /// Empties a thread's cache: free one-object spans and empty spans go
    /// back; with `abandon` (thread exit), spans still holding objects are
    /// left for other threads to adopt.
    func flush(_ cache: HeapThreadCache, abandon: Bool) {
        for n in nodes.indices {
            for c in 0..<classes.count {
                let entry = unsafe cache.entry(n * classes.count + c)
                let stashed = unsafe entry.pointee.stashCount
                for i in 0..<stashed {
                    unsafe releaseSpan(UnsafeMutablePointer(bitPattern: HeapThreadCache.stashSlot(entry, i).pointee)!)
                }
                unsafe entry.pointee.stashCount = 0
                unsafe cache.header.pointee.stashedBytes -= stashed * classes.sizes[c]
                var bits = unsafe entry.pointee.owned
                while bits != 0 {
                    let span = unsafe UnsafeMutablePointer<HeapSpan>(bitPattern: bits)!
                    bits = unsafe span.pointee.next
                    unsafe collectRemote(span)
                    if unsafe span.pointee.used == 0 {
                        unsafe unlink(span, from: entry)
                        unsafe releaseSpan(span)
                    } else if abandon {
                        unsafe unlink(span, from: entry)
                        unsafe span.pointee.owner.store(0, ordering: .releasing)
                        nodes[n].state.withLock { s in s.abandoned[c].append(UInt(bitPattern: span)) }
                    }
                }
            }
        }
    }
}
