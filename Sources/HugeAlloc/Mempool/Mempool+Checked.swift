import Synchronization

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
        for i in 0..<n {
            guard let index = unsafe try? objectIndex(of: objects[i]) else {
                fatalError("mempool: the shared backend handed out \(UInt(bitPattern: unsafe objects[i])), which is not an object (memory corruption)")
            }
            objectStates.markHandedOut(index)
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
        for (i, index) in indices.enumerated() {
            if !objectStates.markReturned(index) {
                for earlier in indices[..<i] { objectStates.markHandedOut(earlier) }
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

/// Checked mode's state byte per object — 1 while handed out, 0 while in
/// the pool — as an owner that frees its storage once, in `deinit`.
@safe
struct MempoolObjectStates: ~Copyable {
    private let states: UnsafeMutablePointer<Atomic<UInt8>>
    private let count: Int

    /// `count` objects, all in the pool (0: no checked mode, nothing kept).
    init(count: Int) {
        self.count = count
        unsafe states = UnsafeMutablePointer<Atomic<UInt8>>.allocate(capacity: max(1, count))
        for i in 0..<max(1, count) { unsafe (states + i).initialize(to: Atomic(0)) }
    }

    deinit {
        unsafe states.deinitialize(count: max(1, count))
        unsafe states.deallocate()
    }

    /// Whether object `index` is handed out.
    func isHandedOut(_ index: Int) -> Bool {
        precondition(index >= 0 && index < count, "object index out of range")
        return unsafe states[index].load(ordering: .relaxed) == 1
    }

    /// Marks object `index` handed out.
    func markHandedOut(_ index: Int) {
        precondition(index >= 0 && index < count, "object index out of range")
        unsafe states[index].store(1, ordering: .relaxed)
    }

    /// Marks object `index` back in the pool; false when it already was
    /// (a double free), with nothing changed.
    func markReturned(_ index: Int) -> Bool {
        precondition(index >= 0 && index < count, "object index out of range")
        return unsafe states[index].compareExchange(
            expected: 1, desired: 0, successOrdering: .relaxed, failureOrdering: .relaxed).exchanged
    }
}
