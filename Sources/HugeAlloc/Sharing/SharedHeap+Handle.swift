import Synchronization

/// The points inside a heap operation where a test can stop the process
/// (SIGKILL, holding the lock), to check that the next holder repairs the heap.
package enum SharedHeapStep: Int, Sendable {
    /// Not stopping.
    case none = 0
    /// Just after the lock is taken.
    case locked = 1
    /// A split's new header written, the block not yet shrunk.
    case splitWritten = 2
    /// A block's size shrunk to what was asked, its state still free.
    case splitDone = 3
    /// A block marked allocated, the counters not yet updated.
    case blockMarked = 4
    /// A block marked free, not yet merged with its neighbours.
    case freeMarked = 5
}

/// The only place that does pointer arithmetic on a shared heap: the
/// control area (lock, counters, free-list heads, memzone table) and the
/// block headers in the data area. Every method but the counters' readers
/// runs with the lock held.
///
/// Control area:
/// ```
/// 0     pthread_mutex_t (robust, process-shared; 64 bytes reserved)
/// 64    magic "HAheap01"      72  data bytes       80  checked
/// 88    free bytes (atomic)   96  blocks in use (atomic)
/// 104   lock holder pid (atomic Int32)             112 repairs (atomic)
/// 120   blocks reclaimed from dead processes (atomic)
/// 128   free-list heads, 48 words (block offset + 1; 0: empty)
/// 512   memzone table, 64 entries of 96 bytes:
///       name (64 bytes, NUL-terminated), state (UInt32), block offset, bytes, alignment
/// ```
///
/// Block header (64 bytes, at the start of every block; the block's bytes
/// follow it, so a pointer handed out is its header + 64):
/// ```
/// 0  tag: magic ^ offset      8  size of the block, header included
/// 16 state (UInt32)           20 owner pid (checked mode; 0: none)
/// 24 previous block's size    32 next free, 40 previous free (offset + 1)
/// 48 bytes asked for
/// ```
///
/// The headers' tags, sizes and states are the truth: walking from offset 0
/// by size visits every block. Previous sizes, free lists and counters are
/// derived from them and rebuilt by ``repair()``. Every change to the truth
/// is one aligned 8-byte (or 4-byte) store, ordered so that the chain is
/// valid after each one (see docs/multi-process.md, "The shared heap").
@safe
struct SharedHeapHandle: @unchecked Sendable {
    let control: UnsafeMutableRawPointer
    let data: UnsafeMutableRawPointer
    let dataLength: Int

    static let controlMagic: UInt64 = 0x3130_7061_6568_4148  // "HAheap01"
    static let blockMagic: UInt64 = 0x6B63_6F6C_4241_4548
    static let headerBytes = 64
    static let granule = 64
    static let minimumBlock = 128
    static let classCount = 48
    static let memzoneTableOffset = 512
    static let memzoneEntryBytes = 96
    static let memzoneSlots = 64
    static let memzoneNameCapacity = 64
    static let controlBytes = 8192

    enum State: UInt32 {
        case free = 1
        case allocated = 2
        case memzone = 3
    }

    var mutex: UnsafeMutableRawPointer { unsafe control }

    // MARK: control words

    private func word(_ offset: Int) -> UInt64 { unsafe control.load(fromByteOffset: offset, as: UInt64.self) }
    private func setWord(_ offset: Int, _ value: UInt64) { unsafe control.storeBytes(of: value, toByteOffset: offset, as: UInt64.self) }
    private func atomic(_ offset: Int) -> UnsafeMutablePointer<Atomic<Int>> {
        unsafe (control + offset).assumingMemoryBound(to: Atomic<Int>.self)
    }

    var isInitialized: Bool { word(64) == Self.controlMagic }
    var recordedDataLength: Int { Int(word(72)) }
    var checked: Bool { word(80) != 0 }
    var freeBytes: Int { unsafe atomic(88).pointee.load(ordering: .relaxed) }
    var blocksInUse: Int { unsafe atomic(96).pointee.load(ordering: .relaxed) }
    var holder: Int32 { Int32(truncatingIfNeeded: unsafe atomic(104).pointee.load(ordering: .relaxed)) }
    func setHolder(_ pid: Int32) { unsafe atomic(104).pointee.store(Int(pid), ordering: .relaxed) }
    var repairs: Int { unsafe atomic(112).pointee.load(ordering: .relaxed) }
    func noteRepair() { unsafe atomic(112).pointee.add(1, ordering: .relaxed) }
    var reclaimedBlocks: Int { unsafe atomic(120).pointee.load(ordering: .relaxed) }
    private func addFree(_ n: Int) { unsafe atomic(88).pointee.add(n, ordering: .relaxed) }
    private func addBlocks(_ n: Int) { unsafe atomic(96).pointee.add(n, ordering: .relaxed) }

    private func head(_ c: Int) -> Int { Int(word(128 + 8 * c)) }
    private func setHead(_ c: Int, _ link: Int) { setWord(128 + 8 * c, UInt64(link)) }

    /// Lays out a new heap: the lock, the counters, one free block of everything.
    func initialize(checked: Bool) throws(SystemCallError) {
        try unsafe Sys.robustMutexInitialize(mutex)
        setWord(72, UInt64(dataLength))
        setWord(80, checked ? 1 : 0)
        writeHeader(0, size: dataLength, state: .free, previousSize: 0)
        for c in 0..<Self.classCount { setHead(c, 0) }
        insertFree(0)
        unsafe atomic(88).pointee.store(dataLength, ordering: .relaxed)
        setWord(64, Self.controlMagic)
    }

    // MARK: block headers

    private func load<T>(_ offset: Int, _ field: Int, as: T.Type) -> T {
        unsafe data.load(fromByteOffset: offset + field, as: T.self)
    }
    private func store<T>(_ offset: Int, _ field: Int, _ value: T) {
        unsafe data.storeBytes(of: value, toByteOffset: offset + field, as: T.self)
    }

    func tagIsValid(_ o: Int) -> Bool { load(o, 0, as: UInt64.self) == Self.blockMagic ^ UInt64(o) }
    func size(_ o: Int) -> Int { Int(load(o, 8, as: UInt64.self)) }
    private func setSize(_ o: Int, _ s: Int) { store(o, 8, UInt64(s)) }
    func state(_ o: Int) -> State? { State(rawValue: load(o, 16, as: UInt32.self)) }
    private func setState(_ o: Int, _ s: State) { store(o, 16, s.rawValue) }
    func owner(_ o: Int) -> Int32 { load(o, 20, as: Int32.self) }
    private func previousSize(_ o: Int) -> Int { Int(load(o, 24, as: UInt64.self)) }
    private func setPreviousSize(_ o: Int, _ s: Int) { store(o, 24, UInt64(s)) }
    private func nextFree(_ o: Int) -> Int { Int(load(o, 32, as: UInt64.self)) }
    private func setNextFree(_ o: Int, _ link: Int) { store(o, 32, UInt64(link)) }
    private func previousFree(_ o: Int) -> Int { Int(load(o, 40, as: UInt64.self)) }
    private func setPreviousFree(_ o: Int, _ link: Int) { store(o, 40, UInt64(link)) }
    func requested(_ o: Int) -> Int { Int(load(o, 48, as: UInt64.self)) }

    /// A new header; the caller makes it part of the chain afterwards (one size store).
    private func writeHeader(_ o: Int, size: Int, state: State, previousSize: Int) {
        store(o, 0, Self.blockMagic ^ UInt64(o))
        setSize(o, size)
        setState(o, state)
        store(o, 20, Int32(0))
        setPreviousSize(o, previousSize)
        store(o, 48, UInt64(0))
    }

    /// The block after `o`, or nil at the end.
    private func next(_ o: Int) -> Int? {
        let n = o + size(o)
        return n < dataLength ? n : nil
    }

    /// Whether `o` is where a block starts: its tag, a sane size, and the
    /// next block's record of it (a stale header inside another block
    /// rarely has all three).
    func isBlock(_ o: Int) -> Bool {
        guard o >= 0, o % Self.granule == 0, o + Self.minimumBlock <= dataLength, tagIsValid(o) else { return false }
        let s = size(o)
        guard s >= Self.minimumBlock, s % Self.granule == 0, o + s <= dataLength, state(o) != nil else { return false }
        if let n = next(o) { return previousSize(n) == s }
        return true
    }

    // MARK: free lists

    static func sizeClass(_ s: Int) -> Int {
        min(Self.classCount - 1, max(0, (Int.bitWidth - 1 - s.leadingZeroBitCount) - 7))
    }

    private func insertFree(_ o: Int) {
        let c = Self.sizeClass(size(o))
        let first = head(c)
        setNextFree(o, first)
        setPreviousFree(o, 0)
        if first != 0 { setPreviousFree(first - 1, o + 1) }
        setHead(c, o + 1)
    }

    /// Takes `o` off its list; before its size changes (the size picks the list).
    private func removeFree(_ o: Int) {
        let n = nextFree(o)
        let p = previousFree(o)
        if p != 0 { setNextFree(p - 1, n) } else { setHead(Self.sizeClass(size(o)), n) }
        if n != 0 { setPreviousFree(n - 1, p) }
    }

    /// The largest free block's size.
    var largestFree: Int {
        var largest = 0
        for c in stride(from: Self.classCount - 1, through: 0, by: -1) {
            var link = head(c)
            while link != 0 {
                largest = max(largest, size(link - 1))
                link = nextFree(link - 1)
            }
            if largest > 0 { break }
        }
        return largest
    }

    // MARK: allocate and free

    /// Where a block for `bytes` (a multiple of 64) at `alignment` fits in
    /// the free block `o`: the offset of its header, or nil.
    private func fit(_ o: Int, bytes: Int, alignment: Int) -> Int? {
        let s = size(o)
        var user = (o + Self.headerBytes + alignment - 1) & ~(alignment - 1)
        let lead = user - Self.headerBytes - o
        if lead > 0, lead < Self.minimumBlock {
            user = (o + Self.headerBytes + Self.minimumBlock + alignment - 1) & ~(alignment - 1)
        }
        return user + bytes <= o + s ? user - Self.headerBytes : nil
    }

    /// Takes a block of `bytes` (rounded to 64) with its first byte at
    /// `alignment`, first fit from the smallest list that may hold it;
    /// returns the header's offset, or nil when none fits.
    func allocate(bytes: Int, alignment: Int, state: State, owner: Int32, requested: Int) -> Int? {
        var found: (free: Int, block: Int)? = nil
        search: for c in Self.sizeClass(bytes + Self.headerBytes)..<Self.classCount {
            var link = head(c)
            while link != 0 {
                if let b = fit(link - 1, bytes: bytes, alignment: alignment) {
                    found = (link - 1, b)
                    break search
                }
                link = nextFree(link - 1)
            }
        }
        guard let (o, start) = found else { return nil }
        removeFree(o)
        let end = o + size(o)
        var b = o
        if start > o {
            // Split off the front: the new header first, then the front shrinks.
            writeHeader(start, size: end - start, state: .free, previousSize: start - o)
            SharedHeap.stopIfAsked(.splitWritten)
            setSize(o, start - o)
            insertFree(o)
            b = start
        }
        let wanted = Self.headerBytes + bytes
        if end - b - wanted >= Self.minimumBlock {
            // Split off the tail the same way.
            let t = b + wanted
            writeHeader(t, size: end - t, state: .free, previousSize: wanted)
            SharedHeap.stopIfAsked(.splitWritten)
            setSize(b, wanted)
            SharedHeap.stopIfAsked(.splitDone)
            insertFree(t)
            if let n = next(t) { setPreviousSize(n, size(t)) }
        } else if let n = next(b) {
            setPreviousSize(n, size(b))
        }
        store(b, 20, owner)
        store(b, 48, UInt64(requested))
        setState(b, state)
        SharedHeap.stopIfAsked(.blockMarked)
        addFree(-size(b))
        addBlocks(1)
        return b
    }

    /// Frees the block `o` (in use), merging it with free neighbours.
    func free(_ o: Int) {
        let s = size(o)
        setState(o, .free)
        SharedHeap.stopIfAsked(.freeMarked)
        addFree(s)
        addBlocks(-1)
        var b = o
        if let n = next(b), state(n) == .free {
            removeFree(n)
            setSize(b, size(b) + size(n))
        }
        if b > 0 {
            let p = b - previousSize(b)
            if state(p) == .free {
                removeFree(p)
                setSize(p, size(p) + size(b))
                b = p
            }
        }
        if let n = next(b) { setPreviousSize(n, size(b)) }
        insertFree(b)
    }

    /// Every block in address order: offset, size, state, owner.
    func blocks() -> [(offset: Int, size: Int, state: State?, owner: Int32)] {
        var result: [(offset: Int, size: Int, state: State?, owner: Int32)] = []
        var o = 0
        while o < dataLength {
            let s = size(o)
            guard s >= Self.minimumBlock, o + s <= dataLength else { break }
            result.append((o, s, state(o), owner(o)))
            o += s
        }
        return result
    }

    // MARK: repair

    /// Rebuilds everything derived from the block headers — previous
    /// sizes, free lists, counters — merges neighbouring free blocks, frees
    /// memzone blocks no table entry names and clears half-written entries.
    /// Returns nil, or the offset and reason of a header that breaks the chain.
    func repair() -> (offset: Int, reason: String)? {
        var named = Set<Int>()
        for i in 0..<Self.memzoneSlots {
            let e = unsafe memzoneEntry(i)
            if unsafe memzoneState(e) == 1 { named.insert(Int(unsafe e.load(fromByteOffset: 72, as: UInt64.self))) } else { unsafe clearMemzone(e) }
        }
        // Walk the chain, checking every header, merging free runs.
        var o = 0
        var lastFree: Int? = nil
        while o < dataLength {
            guard tagIsValid(o) else { return (o, "no block header where the chain leads") }
            let s = size(o)
            guard s >= Self.minimumBlock, s % Self.granule == 0, o + s <= dataLength else { return (o, "block size \(s)") }
            guard let st = state(o) else { return (o, "block state \(load(o, 16, as: UInt32.self))") }
            if st == .memzone, !named.contains(o) { setState(o, .free) }
            if state(o) == .free {
                if let f = lastFree {
                    setSize(f, size(f) + s)
                    o += s
                    continue
                }
                lastFree = o
            } else {
                lastFree = nil
            }
            o += s
        }
        // Derived state from the chain.
        for c in 0..<Self.classCount { setHead(c, 0) }
        var free = 0
        var inUse = 0
        var previous = 0
        o = 0
        while o < dataLength {
            setPreviousSize(o, previous)
            if state(o) == .free {
                insertFree(o)
                free += size(o)
            } else {
                inUse += 1
            }
            previous = size(o)
            o += previous
        }
        unsafe atomic(88).pointee.store(free, ordering: .relaxed)
        unsafe atomic(96).pointee.store(inUse, ordering: .relaxed)
        return nil
    }

    /// Frees every block `pid` allocated (checked mode records owners);
    /// returns how many blocks and bytes.
    func reclaim(pid: Int32) -> (blocks: Int, bytes: Int) {
        let theirs = blocks().filter { $0.state == .allocated && $0.owner == pid }
        // Highest first: a merge only ever grows a lower free block.
        for b in theirs.reversed() { free(b.offset) }
        unsafe atomic(120).pointee.add(theirs.count, ordering: .relaxed)
        return (theirs.count, theirs.reduce(0) { $0 + $1.size })
    }

    /// The first broken invariant, or nil: the chain covers the data,
    /// every previous size is right, no two free blocks touch, the free
    /// lists hold exactly the free blocks (each in its class, links both
    /// ways), the counters match, and every memzone entry names a memzone
    /// block and every memzone block has an entry.
    func invariantViolation() -> String? {
        var o = 0
        var previous = 0
        var lastWasFree = false
        var free = 0
        var inUse = 0
        var freeBlocks = Set<Int>()
        var memzoneBlocks = Set<Int>()
        while o < dataLength {
            guard tagIsValid(o) else { return "no header at \(o)" }
            let s = size(o)
            guard s >= Self.minimumBlock, s % Self.granule == 0, o + s <= dataLength else { return "size \(s) at \(o)" }
            guard previousSize(o) == previous else { return "previous size \(previousSize(o)) at \(o), not \(previous)" }
            guard let st = state(o) else { return "state at \(o)" }
            if st == .free {
                if lastWasFree { return "free blocks touch at \(o)" }
                free += s
                freeBlocks.insert(o)
            } else {
                inUse += 1
                if st == .memzone { memzoneBlocks.insert(o) }
            }
            lastWasFree = st == .free
            previous = s
            o += s
        }
        var listed = Set<Int>()
        for c in 0..<Self.classCount {
            var link = head(c)
            var back = 0
            while link != 0 {
                let b = link - 1
                guard freeBlocks.contains(b), !listed.contains(b) else { return "list \(c) holds \(b), not a free block (or twice)" }
                guard Self.sizeClass(size(b)) == c else { return "block \(b) of size \(size(b)) in list \(c)" }
                guard previousFree(b) == back else { return "back link of \(b)" }
                listed.insert(b)
                back = link
                link = nextFree(b)
            }
        }
        guard listed == freeBlocks else { return "\(freeBlocks.count - listed.count) free blocks on no list" }
        guard free == freeBytes, inUse == blocksInUse else {
            return "counters: \(freeBytes) free bytes, \(blocksInUse) blocks; the chain has \(free), \(inUse)"
        }
        let named = Set(memzones.map(\.block))
        guard named == memzoneBlocks else { return "memzone entries \(named.sorted()) and blocks \(memzoneBlocks.sorted()) differ" }
        return nil
    }

    // MARK: memzone table

    private func memzoneEntry(_ i: Int) -> UnsafeMutableRawPointer {
        unsafe control + Self.memzoneTableOffset + i * Self.memzoneEntryBytes
    }
    private func memzoneState(_ e: UnsafeMutableRawPointer) -> UInt32 { unsafe e.load(fromByteOffset: 64, as: UInt32.self) }
    private func clearMemzone(_ e: UnsafeMutableRawPointer) { unsafe e.initializeMemory(as: UInt8.self, repeating: 0, count: Self.memzoneEntryBytes) }

    struct MemzoneRecord {
        var slot: Int
        var name: String
        var block: Int
        var bytes: Int
        var alignment: Int
    }

    /// The memzones in the table.
    var memzones: [MemzoneRecord] {
        (0..<Self.memzoneSlots).compactMap { i in
            let e = unsafe memzoneEntry(i)
            guard unsafe memzoneState(e) == 1 else { return nil }
            let nameBytes = (0..<Self.memzoneNameCapacity).map { unsafe e.load(fromByteOffset: $0, as: UInt8.self) }
            return MemzoneRecord(slot: i, name: String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self),
                                 block: Int(unsafe e.load(fromByteOffset: 72, as: UInt64.self)),
                                 bytes: Int(unsafe e.load(fromByteOffset: 80, as: UInt64.self)),
                                 alignment: Int(unsafe e.load(fromByteOffset: 88, as: UInt64.self)))
        }
    }

    /// A free table slot, or nil when all are taken.
    var freeMemzoneSlot: Int? { (0..<Self.memzoneSlots).first { unsafe memzoneState(memzoneEntry($0)) != 1 } }

    /// Fills table slot `i`; its state goes last, so a crash leaves either
    /// no entry (the block is then freed by repair) or a whole one.
    func recordMemzone(slot i: Int, name: String, block: Int, bytes: Int, alignment: Int) {
        let e = unsafe memzoneEntry(i)
        unsafe clearMemzone(e)
        for (k, byte) in name.utf8.prefix(Self.memzoneNameCapacity - 1).enumerated() {
            unsafe e.storeBytes(of: byte, toByteOffset: k, as: UInt8.self)
        }
        unsafe e.storeBytes(of: UInt64(block), toByteOffset: 72, as: UInt64.self)
        unsafe e.storeBytes(of: UInt64(bytes), toByteOffset: 80, as: UInt64.self)
        unsafe e.storeBytes(of: UInt64(alignment), toByteOffset: 88, as: UInt64.self)
        unsafe e.storeBytes(of: UInt32(1), toByteOffset: 64, as: UInt32.self)
    }

    /// Empties table slot `i` (before its block is freed: a crash between
    /// leaves a block no entry names, which repair frees).
    func removeMemzone(slot i: Int) {
        unsafe memzoneEntry(i).storeBytes(of: UInt32(0), toByteOffset: 64, as: UInt32.self)
    }
}
