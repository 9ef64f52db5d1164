import CHugeAllocShims
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A lock-free multi-producer multi-consumer ring of object pointers: the
/// shared backend of a ``Mempool``.
///
/// The design is the classic two-index ring (as in DPDK's `rte_ring`):
/// producers reserve slots by moving `producerHead` with a compare-exchange,
/// write their pointers, then publish by moving `producerTail` in reservation
/// order; consumers do the same with the consumer indices. Bulk operations
/// are all-or-nothing. The four indices sit on separate 128-byte blocks so
/// producers and consumers do not share a cache line (nor an adjacent-line
/// prefetch pair).
///
/// All pointer arithmetic for the ring lives in this type.
@usableFromInline
@safe
struct MempoolRing: @unchecked Sendable {
    @inlinable static var indexSpacing: Int { 128 }
    @inlinable static var slotsOffset: Int { 4 * indexSpacing }

    @usableFromInline let storage: UnsafeMutableRawPointer
    @usableFromInline let mask: UInt32
    /// The most objects the ring holds at once.
    @usableFromInline let capacity: UInt32

    /// Allocates a ring for at least `capacity` objects.
    init(capacity: Int) {
        var size = 1
        while size <= capacity { size <<= 1 }
        let bytes = unsafe Self.slotsOffset + size * MemoryLayout<UnsafeMutableRawPointer>.stride
        unsafe storage = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 128)
        mask = UInt32(size - 1)
        self.capacity = UInt32(capacity)
        for i in 0..<4 {
            unsafe (storage + i * Self.indexSpacing)
                .bindMemory(to: Atomic<UInt32>.self, capacity: 1)
                .initialize(to: Atomic(0))
        }
        unsafe (storage + Self.slotsOffset).bindMemory(to: UnsafeMutableRawPointer.self, capacity: size)
    }

    func deallocate() {
        unsafe storage.deallocate()
    }

    @inlinable var producerHead: UnsafeMutablePointer<Atomic<UInt32>> {
        unsafe storage.assumingMemoryBound(to: Atomic<UInt32>.self)
    }
    @inlinable var producerTail: UnsafeMutablePointer<Atomic<UInt32>> {
        unsafe (storage + Self.indexSpacing).assumingMemoryBound(to: Atomic<UInt32>.self)
    }
    @inlinable var consumerHead: UnsafeMutablePointer<Atomic<UInt32>> {
        unsafe (storage + 2 * Self.indexSpacing).assumingMemoryBound(to: Atomic<UInt32>.self)
    }
    @inlinable var consumerTail: UnsafeMutablePointer<Atomic<UInt32>> {
        unsafe (storage + 3 * Self.indexSpacing).assumingMemoryBound(to: Atomic<UInt32>.self)
    }
    @inlinable var slots: UnsafeMutablePointer<UnsafeMutableRawPointer> {
        unsafe (storage + Self.slotsOffset).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    }

    /// Objects in the ring now (exact when no operation is in flight).
    @inlinable var count: Int {
        let tail = unsafe consumerTail.pointee.load(ordering: .acquiring)
        let head = unsafe producerTail.pointee.load(ordering: .acquiring)
        return Int(head &- tail)
    }

    /// Adds `n` objects, all or none. Returns false when they do not fit.
    @inlinable @inline(__always)
    func enqueue(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        let n32 = UInt32(truncatingIfNeeded: n)
        var head = unsafe producerHead.pointee.load(ordering: .acquiring)
        var next: UInt32
        while true {
            let tail = unsafe consumerTail.pointee.load(ordering: .acquiring)
            if n32 > capacity &+ tail &- head { return false }
            next = head &+ n32
            let (done, seen) = unsafe producerHead.pointee.weakCompareExchange(
                expected: head, desired: next, successOrdering: .relaxed, failureOrdering: .acquiring)
            if done { break }
            head = seen
        }
        let start = Int(head & mask)
        if _fastPath(start &+ n <= Int(mask) &+ 1) {
            unsafe MempoolRecord.copy(slots + start, from: objects, count: n)
        } else {
            let first = Int(mask) &+ 1 &- start
            unsafe (slots + start).update(from: objects, count: first)
            unsafe slots.update(from: objects + first, count: n &- first)
        }
        // Publish in reservation order: wait for earlier producers. The load
        // acquires, so each earlier producer's writes happen before this
        // release and consumers that acquire our tail see all of them.
        var spins = 0
        while unsafe producerTail.pointee.load(ordering: .acquiring) != head { Self.spinPause(&spins) }
        unsafe producerTail.pointee.store(next, ordering: .releasing)
        return true
    }

    /// Removes `n` objects, all or none. Returns false when fewer are there.
    @inlinable @inline(__always)
    func dequeue(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        let n32 = UInt32(truncatingIfNeeded: n)
        var head = unsafe consumerHead.pointee.load(ordering: .acquiring)
        var next: UInt32
        while true {
            let tail = unsafe producerTail.pointee.load(ordering: .acquiring)
            if n32 > tail &- head { return false }
            next = head &+ n32
            let (done, seen) = unsafe consumerHead.pointee.weakCompareExchange(
                expected: head, desired: next, successOrdering: .relaxed, failureOrdering: .acquiring)
            if done { break }
            head = seen
        }
        let start = Int(head & mask)
        if _fastPath(start &+ n <= Int(mask) &+ 1) {
            unsafe MempoolRecord.copy(objects, from: slots + start, count: n)
        } else {
            let first = Int(mask) &+ 1 &- start
            unsafe objects.update(from: slots + start, count: first)
            unsafe (objects + first).update(from: slots, count: n &- first)
        }
        // Acquire the earlier consumers' tail too: their slot reads must
        // happen before a producer that acquires our tail reuses the slots.
        var spins = 0
        while unsafe consumerTail.pointee.load(ordering: .acquiring) != head { Self.spinPause(&spins) }
        unsafe consumerTail.pointee.store(next, ordering: .releasing)
        return true
    }

    /// Waits a moment for another thread to finish its publication: a CPU
    /// pause hint, and after many spins `sched_yield(2)`, because on a machine
    /// with fewer cores than runnable threads the thread we wait for may have
    /// been preempted.
    @inlinable @inline(__always)
    static func spinPause(_ spins: inout Int) {
        spins &+= 1
        if _fastPath(spins & 1023 != 0) {
            ha_cpu_relax()
        } else {
            yield()
        }
    }

    @usableFromInline @inline(never)
    static func yield() {
        _ = sched_yield()
    }
}
