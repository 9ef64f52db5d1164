import Synchronization

/// The size-class tables in raw memory, built once per process and never
/// freed, so the hot path reads them with plain loads (no lazy-global check,
/// no array bounds or ownership traffic).
@safe @usableFromInline
struct HeapClassTable: @unchecked Sendable {
    let sizes: UnsafeMutablePointer<Int>
    let spanGranules: UnsafeMutablePointer<Int>
    let objectsPerSpan: UnsafeMutablePointer<Int>
    let smallLookup: UnsafeMutablePointer<UInt8>
    let largeLookup: UnsafeMutablePointer<UInt8>
    /// `alignedClass[(shift - 6) * count + c]`.
    let alignedClass: UnsafeMutablePointer<Int16>
    /// Free one-object spans a thread may keep per class.
    let stashLimit: UnsafeMutablePointer<Int>
    let count: Int
    /// The first class with one object per span.
    let firstSingleClass: Int

    static let shared = HeapClassTable(HeapSizeClasses())
    /// Bytes of free one-object spans a thread keeps per class, at most.
    static let stashBytes = 512 << 10
    /// Bytes of free one-object spans a thread keeps in all its stashes.
    static let threadStashBytes = 1 << 20
    /// Bytes of free one-object spans a node keeps per class for threads to refill from.
    static let centralBytes = 256 << 10

    init(_ classes: HeapSizeClasses) {
        count = classes.count
        unsafe sizes = .allocate(capacity: count)
        unsafe spanGranules = .allocate(capacity: count)
        unsafe objectsPerSpan = .allocate(capacity: count)
        unsafe stashLimit = .allocate(capacity: count)
        for c in 0..<count {
            unsafe stashLimit[c] = max(1, min(HeapThreadCache.stashCapacity, Self.stashBytes / classes.sizes[c]))
            unsafe sizes[c] = classes.sizes[c]
            unsafe spanGranules[c] = classes.spanGranules[c]
            unsafe objectsPerSpan[c] = classes.objectsPerSpan[c]
        }
        unsafe smallLookup = .allocate(capacity: classes.smallLookup.count)
        for (i, v) in classes.smallLookup.enumerated() { unsafe smallLookup[i] = v }
        unsafe largeLookup = .allocate(capacity: classes.largeLookup.count)
        for (i, v) in classes.largeLookup.enumerated() { unsafe largeLookup[i] = v }
        let shifts = HeapSizeClasses.alignmentShifts.count
        unsafe alignedClass = .allocate(capacity: shifts * count)
        for s in 0..<shifts {
            for c in 0..<count { unsafe alignedClass[s * count + c] = Int16(classes.alignedClass[s][c]) }
        }
        firstSingleClass = classes.objectsPerSpan.firstIndex(of: 1) ?? count
    }

    /// The class of `size`, 1 through ``HeapSizeClasses/maximumClassSize``.
    @inline(__always)
    func classIndex(of size: Int) -> Int {
        if size <= HeapSizeClasses.maximumMultiObjectSize {
            return Int(unsafe smallLookup[(size &+ 63) &>> 6])
        }
        return Int(unsafe largeLookup[(size &+ HeapSizeClasses.granule &- 1) &>> HeapSizeClasses.granuleShift])
    }

    /// The first class at or above `c` whose objects all start at multiples
    /// of `1 << shift` (6...12); `count` when there is none.
    @inline(__always)
    func alignedClass(_ c: Int, shift: Int) -> Int {
        Int(unsafe alignedClass[(shift &- 6) &* count &+ c])
    }
}

/// What a span is used for.
enum HeapSpanKind: UInt8 {
    case free = 0
    /// Objects of a class up to 8 KiB, owned by one thread.
    case multi = 1
    /// One object of a class above 8 KiB.
    case single = 2
    /// One allocation of any size up to a page, or with an alignment above 4 KiB.
    case direct = 3
}

/// A span's header: a run of granules inside one hugepage, its objects and
/// who may take them. Lives in the page's metadata, at the index of the
/// span's first granule.
///
/// The owning thread alone touches `freeList`, `bump`, `used` and its list
/// links; other threads push freed objects on `remote`. The other fields are
/// written when the span is set up, before any of its objects is handed out.
@usableFromInline
struct HeapSpan: ~Copyable {
    /// The first object.
    var start: UInt = 0
    /// Freed objects, linked through their first word (owner only).
    var freeList: UInt = 0
    /// The next never-used object, and where they end.
    var bump: UInt = 0
    var end: UInt = 0
    /// Objects freed by other threads, linked through their first word.
    let remote = Atomic<UInt>(0)
    /// The owning thread cache's address; 0 when abandoned.
    let owner = Atomic<UInt>(0)
    /// Objects handed out and not yet freed back to the owner.
    var used: Int32 = 0
    var capacity: Int32 = 0
    /// The span's class (or -1 for a direct allocation).
    var classIndex: Int32 = -1
    var granules: UInt16 = 0
    var kind: HeapSpanKind = .free
    /// The node index of the span's page.
    var node: UInt8 = 0
    /// Links in the owner's list of spans of the class.
    var next: UInt = 0
    var previous: UInt = 0
    /// Checked mode: one word per object (`HeapChecks`).
    var checks: UInt = 0
    /// To 128 bytes: the fields the hot paths touch fill the first cache
    /// line, and no header straddles two lines.
    private var padding: (UInt, UInt, UInt, UInt, UInt) = (0, 0, 0, 0, 0)

    init() {}
}

/// One hugepage's metadata in the heap's side table, by pointer: a header,
/// the free-granule bitmap, for every granule the first granule of its span,
/// and a span header per granule (used at span starts only). The only code
/// that computes addresses inside a page's metadata.
@safe @usableFromInline
struct HeapPageMeta {
    struct Header {
        /// Physical address of the page.
        var physical: UInt64 = 0
        var mapped: Bool = false
        var node: Int = 0
        var freeGranules: Int = 0
        /// The descriptor behind the page (-1 for anonymous memory).
        var fd: Int32 = -1
    }

    static let headerBytes = 64
    static let bitmapOffset = 64
    static let spanOfOffset = 128
    /// Free runs: their length at their first and last granule, and the
    /// links of the node's list of free runs of that length (at the first).
    static let runLengthOffset = spanOfOffset + HeapSizeClasses.granulesPerPage * 2
    static let runNextOffset = runLengthOffset + HeapSizeClasses.granulesPerPage * 2
    static let runPreviousOffset = runNextOffset + HeapSizeClasses.granulesPerPage * 4
    static let spansOffset = runPreviousOffset + HeapSizeClasses.granulesPerPage * 4
    /// Bytes per page of metadata, rounded to 4 KiB.
    static let stride: Int = {
        let bytes = spansOffset + HeapSizeClasses.granulesPerPage * MemoryLayout<HeapSpan>.stride
        return (bytes + 4095) & ~4095
    }()

    let raw: UnsafeMutableRawPointer

    @inline(__always) init(_ raw: UnsafeMutableRawPointer) { unsafe self.raw = raw }

    var header: UnsafeMutablePointer<Header> {
        @inline(__always) get { unsafe raw.assumingMemoryBound(to: Header.self) }
    }
    var bitmap: UnsafeMutablePointer<UInt64> {
        @inline(__always) get { unsafe (raw + Self.bitmapOffset).assumingMemoryBound(to: UInt64.self) }
    }
    @inline(__always)
    func spanOf(_ granule: Int) -> Int {
        Int(unsafe (raw + Self.spanOfOffset).assumingMemoryBound(to: UInt16.self)[granule])
    }
    @inline(__always)
    func setSpanOf(_ granule: Int, _ first: Int) {
        unsafe (raw + Self.spanOfOffset).assumingMemoryBound(to: UInt16.self)[granule] = UInt16(first)
    }
    var runLength: UnsafeMutablePointer<UInt16> {
        unsafe (raw + Self.runLengthOffset).assumingMemoryBound(to: UInt16.self)
    }
    var runNext: UnsafeMutablePointer<UInt32> {
        unsafe (raw + Self.runNextOffset).assumingMemoryBound(to: UInt32.self)
    }
    var runPrevious: UnsafeMutablePointer<UInt32> {
        unsafe (raw + Self.runPreviousOffset).assumingMemoryBound(to: UInt32.self)
    }
    /// Whether granule `g` is free.
    func isFree(_ g: Int) -> Bool { (unsafe bitmap[g >> 6]) & (1 << UInt64(g & 63)) != 0 }

    @inline(__always)
    func span(_ granule: Int) -> UnsafeMutablePointer<HeapSpan> {
        unsafe (raw + Self.spansOffset).assumingMemoryBound(to: HeapSpan.self) + granule
    }

    /// Sets up the metadata of a page that was just mapped: every granule
    /// free, every span header empty.
    func initialize(physical: UInt64, node: Int, fd: Int32) {
        unsafe header.initialize(to: Header(physical: physical, mapped: true, node: node,
                                            freeGranules: HeapSizeClasses.granulesPerPage, fd: fd))
        for w in 0..<(HeapSizeClasses.granulesPerPage / 64) { unsafe bitmap[w] = ~0 }
        let spans = unsafe (raw + Self.spansOffset).assumingMemoryBound(to: HeapSpan.self)
        for g in 0..<HeapSizeClasses.granulesPerPage {
            unsafe (spans + g).initialize(to: HeapSpan())
            setSpanOf(g, g)
        }
    }

    /// Forgets the page (its span headers hold nothing that needs freeing
    /// once their checks are released by the caller).
    func deinitialize() {
        let spans = unsafe (raw + Self.spansOffset).assumingMemoryBound(to: HeapSpan.self)
        unsafe spans.deinitialize(count: HeapSizeClasses.granulesPerPage)
        unsafe header.pointee.mapped = false
    }

    // MARK: free-granule bitmap (1 = free)

    /// Calls `body` with each bitmap word index and the mask of granules
    /// `first..<first + count` in it, in order, until `body` returns false.
    @inline(__always)
    private func forEachWord(_ first: Int, _ count: Int, _ body: (Int, UInt64) -> Bool) {
        var g = first
        let end = first + count
        while g < end {
            let word = g >> 6, bit = g & 63
            let n = min(64 - bit, end - g)
            let mask: UInt64 = n == 64 ? ~0 : ((1 << UInt64(n)) - 1) << UInt64(bit)
            guard body(word, mask) else { return }
            g += n
        }
    }

    /// The first used granule in `first..<first + count`, nil if none.
    func firstUsed(_ first: Int, _ count: Int) -> Int? {
        var found: Int? = nil
        forEachWord(first, count) { word, mask in
            let used = ~(unsafe bitmap[word]) & mask
            if used != 0 { found = (word << 6) + used.trailingZeroBitCount }
            return used == 0
        }
        return found
    }

    /// Marks granules used (`free == false`) or free.
    func mark(_ first: Int, _ count: Int, free: Bool) {
        forEachWord(first, count) { word, mask in
            if free { unsafe bitmap[word] |= mask } else { unsafe bitmap[word] &= ~mask }
            return true
        }
        unsafe header.pointee.freeGranules += free ? count : -count
    }

    /// The first free granule at or after `from`, nil if none.
    func firstFree(from: Int) -> Int? {
        var word = from >> 6
        guard word < HeapSizeClasses.granulesPerPage / 64 else { return nil }
        var bits = unsafe bitmap[word] & (~0 << UInt64(from & 63))
        while true {
            if bits != 0 { return (word << 6) + bits.trailingZeroBitCount }
            word += 1
            guard word < HeapSizeClasses.granulesPerPage / 64 else { return nil }
            bits = unsafe bitmap[word]
        }
    }

    /// The first run of `count` free granules starting at a multiple of
    /// `alignment` granules; nil if none. Jumps from free run to free run
    /// with bit scans.
    func findRun(_ count: Int, alignment: Int) -> Int? {
        guard unsafe header.pointee.freeGranules >= count else { return nil }
        var from = 0
        while let free = firstFree(from: from) {
            let start = (free + alignment - 1) & ~(alignment - 1)
            guard start + count <= HeapSizeClasses.granulesPerPage else { return nil }
            guard let used = firstUsed(start, count) else { return start }
            from = used + 1
        }
        return nil
    }

    /// The longest run of free granules.
    var largestFreeRun: Int {
        var best = 0, run = 0
        for g in 0..<HeapSizeClasses.granulesPerPage {
            if (unsafe bitmap[g >> 6]) & (1 << UInt64(g & 63)) != 0 { run += 1; best = max(best, run) } else { run = 0 }
        }
        return best
    }
}
