import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Checked mode: the index of every pointer put back is computed (O(1) from
/// the per-page layout table), its guard cookie compared, and its state byte
/// flipped from "handed out" to "in the pool" with a compare-exchange, so a
/// second put of the same object fails.
extension Mempool {
    /// The index (0..<count) of the object starting at `pointer`.
    /// Throws ``MempoolError/foreignPointer(address:)`` or
    /// ``MempoolError/notAnObjectStart(address:nearestObjectStart:)``.
    public func objectIndex(of pointer: UnsafeRawPointer) throws(MempoolError) -> Int {
        let offset = unsafe pointer - UnsafeRawPointer(base)
        let address = UInt(bitPattern: pointer)
        guard offset >= 0, offset < length else { throw .foreignPointer(address: address) }
        let page = offset >> pageShift
        let inPage = offset & (pageBytes - 1)
        let first = layout.pageFirstOffset[page]
        if first >= 0 && inPage >= first {
            let relative = inPage - first
            let k = relative / layout.stride
            if relative % layout.stride == 0 && k < layout.pageObjectCount[page] {
                return layout.pageFirstIndex[page] + k
            }
        }
        throw .notAnObjectStart(address: address, nearestObjectStart: nearestObjectStart(below: offset))
    }

    /// The address of the last object starting at or below `offset` (the pool's base if none).
    func nearestObjectStart(below offset: Int) -> UInt {
        var page = offset >> pageShift
        var position = offset & (pageBytes - 1)
        while page >= 0 {
            let first = layout.pageFirstOffset[page]
            if first >= 0 && position >= first {
                let k = min(layout.pageObjectCount[page] - 1, (position - first) / layout.stride)
                return UInt(bitPattern: unsafe base) + UInt(page * pageBytes + first + k * layout.stride)
            }
            page -= 1
            position = pageBytes - 1
        }
        return UInt(bitPattern: unsafe base)
    }

    /// The object with index `index`, or nil when out of range.
    public func objectAddress(at index: Int) -> UnsafeMutableRawPointer? {
        guard index >= 0, index < count else { return nil }
        // The last page whose first object index is <= index and that has objects.
        var low = 0, high = layout.pageFirstIndex.count - 1
        while low < high {
            let mid = (low + high + 1) / 2
            if layout.pageFirstIndex[mid] <= index { low = mid } else { high = mid - 1 }
        }
        var page = low
        while layout.pageFirstOffset[page] < 0 || layout.pageFirstIndex[page] > index { page -= 1 }
        let k = index - layout.pageFirstIndex[page]
        return unsafe base + (page * pageBytes + layout.pageFirstOffset[page] + k * layout.stride)
    }

    @usableFromInline @inline(never)
    func markHandedOut(_ objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) {
        // A shared pool's checked get marked them before its commit.
        if sharedBackend != nil { return }
        let pid: Int32 = objectStates.isShared ? getpid() : 1
        for i in 0..<n {
            guard let index = unsafe try? objectIndex(of: objects[i]) else {
                fatalError("mempool: the shared backend handed out \(UInt(bitPattern: unsafe objects[i])), which is not an object (memory corruption)")
            }
            objectStates.markHandedOut(index, by: pid)
        }
    }

    /// Puts `n` objects back after checking each: it must be this pool's,
    /// at an object's start, handed out (not already put back), with its guard
    /// cookie intact. On an error nothing is put back.
    /// A count outside `0...count` throws ``MempoolError/bulkCountOutOfRange(requested:maximum:)``.
    public func putChecked(from objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) throws(MempoolError) {
        guard checked, let cookieOffset = layout.cookieOffset else { throw .checksDisabled }
        guard n >= 0, n <= count else { throw .bulkCountOutOfRange(requested: n, maximum: count) }
        var indices = [Int]()
        indices.reserveCapacity(n)
        for i in 0..<n {
            let object = unsafe objects[i]
            let index = try unsafe objectIndex(of: object)
            let cookie = unsafe (object + cookieOffset).load(as: UInt64.self)
            if cookie != Self.guardCookie {
                throw .guardCookieOverwritten(
                    address: UInt(bitPattern: object), objectIndex: index, objectSize: objectSize, found: cookie)
            }
            indices.append(index)
        }
        if sharedBackend != nil {
            try unsafe sharedCheckedPut(objects, indices: indices)
            return
        }
        // Who held each object, to undo a partial put: a shared pool's pids.
        let holders = objectStates.isShared ? indices.map { objectStates.owner($0) } : []
        for (i, index) in indices.enumerated() {
            if !objectStates.markReturned(index) {
                for (k, earlier) in indices[..<i].enumerated() { objectStates.markHandedOut(earlier, by: holders.isEmpty ? 1 : holders[k]) }
                throw .doubleFree(address: UInt(bitPattern: unsafe objects[i]), objectIndex: index)
            }
        }
        _ = unsafe putUnchecked(objects, count: n)
    }

    /// Puts one object back after the checks of ``putChecked(from:count:)``.
    public func putChecked(_ object: UnsafeMutableRawPointer) throws(MempoolError) {
        var object = unsafe object
        try unsafe withUnsafePointer(to: &object) { (p) throws(MempoolError) in
            try unsafe putChecked(from: p, count: 1)
        }
    }

    /// The checked put behind ``put(from:count:)``: false for a count no
    /// put can have, a fatal error for any misuse.
    @usableFromInline @inline(never)
    func putCheckedOrDie(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        do {
            try unsafe putChecked(from: objects, count: n)
            return true
        } catch .bulkCountOutOfRange {
            return false
        } catch {
            fatalError("mempool (checked): \(error)")
        }
    }
}

/// Checked mode's state per object, as an owner that frees its storage
/// once, in `deinit`. A private pool keeps a byte per object, 1 while
/// handed out, 0 while in the pool. A shared pool keeps, in its control
/// memory (which the caller owns), a 32-bit word per object: the pid of the
/// process holding it, 0 while in the pool. State and owner are one word, so
/// a put and a reclaim of a dead owner's objects race on one
/// compare-exchange: one of them returns the object, never both, and a
/// reclaim never takes an object that was put back and handed out again
/// meanwhile.
@safe
struct MempoolObjectStates: ~Copyable {
    private let bytes: UnsafeMutablePointer<Atomic<UInt8>>?
    private let words: UnsafeMutablePointer<Atomic<Int32>>?
    private let count: Int

    /// `count` objects, all in the pool (0: no checked mode, nothing kept).
    init(count: Int) {
        self.count = count
        let bytes = UnsafeMutablePointer<Atomic<UInt8>>.allocate(capacity: max(1, count))
        for i in 0..<max(1, count) { unsafe (bytes + i).initialize(to: Atomic(0)) }
        unsafe self.bytes = bytes
        unsafe words = nil
    }

    /// `count` owner words in a shared pool's control memory (zero-filled
    /// by its creator: every object in the pool).
    init(sharedWords words: UnsafeMutablePointer<Atomic<Int32>>, count: Int) {
        unsafe self.words = words
        unsafe bytes = nil
        self.count = count
    }

    deinit {
        if let bytes = unsafe bytes {
            unsafe bytes.deinitialize(count: max(1, count))
            unsafe bytes.deallocate()
        }
    }

    /// Set in a shared pool's owner word, with the pid of the process
    /// putting the object back, until its put is committed: an object in
    /// that state is still in that process's hands (pids are below 2²²).
    static let returningBit: Int32 = 0x4000_0000

    /// Whether the states live in a shared pool's control memory.
    var isShared: Bool { unsafe words != nil }

    /// Whether object `index` is handed out.
    func isHandedOut(_ index: Int) -> Bool {
        owner(index) != 0
    }

    /// Who holds object `index`: 0 while it is in the pool; while handed
    /// out, the holder's pid in a shared pool, 1 in a private one.
    func owner(_ index: Int) -> Int32 {
        precondition(index >= 0 && index < count, "object index out of range")
        if let words = unsafe words { return unsafe words[index].load(ordering: .acquiring) & ~Self.returningBit }
        return Int32(unsafe bytes.unsafelyUnwrapped[index].load(ordering: .relaxed))
    }

    /// Marks object `index` handed out, to process `owner` in a shared pool
    /// (a private pool stores 1 whatever `owner` says).
    func markHandedOut(_ index: Int, by owner: Int32) {
        precondition(index >= 0 && index < count, "object index out of range")
        if let words = unsafe words {
            unsafe words[index].store(owner, ordering: .releasing)
        } else {
            unsafe bytes.unsafelyUnwrapped[index].store(1, ordering: .relaxed)
        }
    }

    /// Marks object `index` back in the pool; false when it already was
    /// (a double free), with nothing changed.
    func markReturned(_ index: Int) -> Bool {
        precondition(index >= 0 && index < count, "object index out of range")
        guard let words = unsafe words else {
            return unsafe bytes.unsafelyUnwrapped[index].compareExchange(
                expected: 1, desired: 0, successOrdering: .relaxed, failureOrdering: .relaxed).exchanged
        }
        var holder = unsafe words[index].load(ordering: .relaxed)
        while holder != 0 {
            let (done, seen) = unsafe words[index].compareExchange(
                expected: holder, desired: 0, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed)
            if done { return true }
            holder = seen
        }
        return false
    }

    /// Shared pools: marks object `index` back in the pool if process `pid`
    /// holds it, or was putting it back; false, nothing changed, otherwise.
    func reclaim(_ index: Int, from pid: Int32) -> Bool {
        takeOver(index, from: pid, writing: 0)
    }

    /// The owner word of `index` from `dead` (holding or returning it) to
    /// `value`; false, nothing changed, when `dead` neither holds nor
    /// returns the object.
    private func takeOver(_ index: Int, from dead: Int32, writing value: Int32) -> Bool {
        guard let words = unsafe words, dead > 0 else { return false }
        for held in [dead, dead | Self.returningBit] {
            if unsafe words[index].compareExchange(
                expected: held, desired: value, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed).exchanged {
                return true
            }
        }
        return false
    }

    /// Shared pools: the first step of returning an object dead process
    /// `dead` held, or was putting back, on its behalf: the owner word goes
    /// to `putter`'s pid with ``returningBit``, as in a put by `putter`, so
    /// that if `putter` dies too before the put commits, the object is in
    /// its hands and its own reclaim returns it. False, nothing changed,
    /// when `dead` neither holds nor returns the object.
    func takeOverReturn(_ index: Int, from dead: Int32, by putter: Int32) -> Bool {
        takeOver(index, from: dead, writing: putter | Self.returningBit)
    }

    /// Shared pools: the first step of a put by process `putter`: the
    /// owner word goes from a holder's pid to `putter`'s pid with
    /// ``returningBit``. Returns the holder, or nil (nothing changed) when
    /// the object is in the pool or already being put back (a double free).
    func beginReturn(_ index: Int, by putter: Int32) -> Int32? {
        precondition(index >= 0 && index < count, "object index out of range")
        guard let words = unsafe words else { return nil }
        var holder = unsafe words[index].load(ordering: .relaxed)
        while holder > 0 && holder & Self.returningBit == 0 {
            let (done, seen) = unsafe words[index].compareExchange(
                expected: holder, desired: putter | Self.returningBit, successOrdering: .acquiringAndReleasing,
                failureOrdering: .relaxed)
            if done { return holder }
            holder = seen
        }
        return nil
    }

    /// Shared pools: undoes ``beginReturn(_:by:)`` (a double free later in the same bulk).
    func undoReturn(_ index: Int, by putter: Int32, holder: Int32) {
        guard let words = unsafe words else { return }
        _ = unsafe words[index].compareExchange(
            expected: putter | Self.returningBit, desired: holder, successOrdering: .releasing, failureOrdering: .relaxed)
    }

    /// Shared pools: the last step of a put by `putter`, once the object is
    /// in the pool: its owner word goes to 0, unless a process took it
    /// meanwhile and wrote its own pid.
    func finishReturn(_ index: Int, by putter: Int32) {
        guard let words = unsafe words else { return }
        _ = unsafe words[index].compareExchange(
            expected: putter | Self.returningBit, desired: 0, successOrdering: .releasing, failureOrdering: .relaxed)
    }

    /// Shared pools: undoes a mark by `pid` of an object that stayed in
    /// the pool (a get that died before its commit).
    func undoHandOut(_ index: Int, from pid: Int32) {
        guard let words = unsafe words else { return }
        _ = unsafe words[index].compareExchange(
            expected: pid, desired: 0, successOrdering: .releasing, failureOrdering: .relaxed)
    }
}
