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
/// are all-or-nothing. Each side's head and tail share one 128-byte block
/// (``Header``), and the two sides sit in separate blocks, so producers and
/// consumers do not share a cache line (nor an adjacent-line prefetch pair),
/// while the thread that just moved a head publishes its tail from a line it
/// already holds.
///
/// A ring in shared control memory (several processes) is not used this
/// way: a process killed between its head and its tail would stall that
/// side for everyone. It goes through `MempoolSharedBackend`'s locked and
/// journaled operations on the same storage instead.
///
/// The ring owns its storage: it is noncopyable and frees the storage in
/// `deinit`, exactly once. All pointer arithmetic happens in
/// ``_UnsafeHandle``.
@usableFromInline
@safe
struct MempoolRing: ~Copyable, @unchecked Sendable {
    @usableFromInline let handle: _UnsafeHandle
    /// False for a ring placed in a shared pool's control memory, which the
    /// caller owns.
    let ownsStorage: Bool

    /// Allocates a ring for at least `capacity` objects (at most
    /// ``Mempool/maximumCount``).
    init(capacity: Int) {
        handle = _UnsafeHandle.allocate(capacity: capacity)
        ownsStorage = true
    }

    /// A ring in storage someone else owns (a shared pool's control memory):
    /// nothing is freed when it goes.
    init(placed handle: _UnsafeHandle) {
        self.handle = handle
        ownsStorage = false
    }

    deinit {
        if ownsStorage { handle.deallocate() }
    }

    /// Objects in the ring now (exact when no operation is in flight).
    @inlinable var count: Int { handle.count }

    /// Adds `n` objects, all or none. Returns false when they do not fit,
    /// and for a negative `n`.
    @inlinable @inline(__always)
    func enqueue(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        unsafe handle.enqueue(objects, count: n)
    }

    /// Removes `n` objects, all or none. Returns false when fewer are there,
    /// and for a negative `n`.
    @inlinable @inline(__always)
    func dequeue(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        unsafe handle.dequeue(into: objects, count: n)
    }
}

extension MempoolRing {
    /// The start of the ring's storage; the slots follow it.
    @usableFromInline
    struct Header: ~Copyable {
        @usableFromInline let producer = MempoolPaddedHeadTail()
        @usableFromInline let consumer = MempoolPaddedHeadTail()
    }

    /// A view of the ring's storage (header, then a power of two of slots):
    /// the only code that computes addresses in it. It owns nothing; the
    /// ``MempoolRing`` that made it frees the storage. The pool keeps one
    /// beside the owner for its hot paths; the pool registry keeps one to
    /// put a thread's cached objects back when the thread exits, and drops
    /// it (under its lock) before the ring is freed.
    ///
    /// Its surface is checked: a count outside `0...available` is refused
    /// by the same unsigned comparison that checks availability, so a
    /// negative or 64-bit count costs nothing extra and can never be
    /// truncated to 32 bits.
    @usableFromInline
    @safe
    struct _UnsafeHandle: @unchecked Sendable {
        @usableFromInline let header: UnsafeMutablePointer<Header>
        @usableFromInline let mask: UInt32
        /// The most objects the ring holds at once.
        @usableFromInline let capacity: UInt32

        static func allocate(capacity: Int) -> _UnsafeHandle {
            precondition(capacity >= 0 && capacity <= Mempool.maximumCount, "ring capacity \(capacity) out of range")
            let size = slotCount(capacity: capacity)
            let header = unsafe MempoolStorage.allocate(Header(), slots: size, alignment: 128)
            let handle = unsafe _UnsafeHandle(header: header, mask: UInt32(size - 1), capacity: UInt32(capacity))
            handle._checkInvariants()
            return handle
        }

        /// The slots a ring of `capacity` objects has: the power of two above it.
        static func slotCount(capacity: Int) -> Int {
            var size = 1
            while size <= capacity { size <<= 1 }
            return size
        }

        /// Bytes of storage (header and slots) a ring of `capacity` objects takes.
        static func storageBytes(capacity: Int) -> Int {
            unsafe MemoryLayout<Header>.stride + slotCount(capacity: capacity) * MemoryLayout<UnsafeMutableRawPointer>.stride
        }

        /// A ring of `capacity` objects in `storageBytes(capacity:)` bytes at
        /// `storage` (128-byte aligned, not owned): an empty ring written
        /// there when `initializing`, else the one another pool instance
        /// wrote (in the same or another process).
        static func placed(at storage: UnsafeMutableRawPointer, capacity: Int, initializing: Bool) -> _UnsafeHandle {
            precondition(capacity >= 0 && capacity <= Mempool.maximumCount, "ring capacity \(capacity) out of range")
            let size = slotCount(capacity: capacity)
            let header = unsafe MempoolStorage.place(initializing ? Header() : nil, at: storage, slots: size)
            return unsafe _UnsafeHandle(header: header, mask: UInt32(size - 1), capacity: UInt32(capacity))
        }

        @usableFromInline
        init(header: UnsafeMutablePointer<Header>, mask: UInt32, capacity: UInt32) {
            unsafe self.header = header
            self.mask = mask
            self.capacity = capacity
        }

        func deallocate() {
            unsafe MempoolStorage.deallocate(header)
        }

        @inlinable var slots: UnsafeMutablePointer<UnsafeMutableRawPointer> {
            unsafe MempoolStorage.slots(after: header)
        }

        /// Objects in the ring now (exact when no operation is in flight).
        @inlinable var count: Int {
            let tail = unsafe header.pointee.consumer.tail.load(ordering: .acquiring)
            let head = unsafe header.pointee.producer.tail.load(ordering: .acquiring)
            return Int(head &- tail)
        }

        @inlinable @inline(__always)
        func enqueue(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
            var head = unsafe header.pointee.producer.head.load(ordering: .acquiring)
            // The producers' last view of the consumers' tail: a lower bound
            // of the tail, so the free space it shows is there. It acquires:
            // the producer that stored it acquired the consumers' tail, so
            // their slot reads happen before our writes.
            var tail = unsafe header.pointee.producer.otherTailSeen.load(ordering: .acquiring)
            var next: UInt32
            while true {
                // Unsigned and 64 bits wide: a negative n, or one that does
                // not fit in 32 bits, is larger than any free space. A view
                // showing more than `capacity` free is stale (behind our
                // head): read the tail itself.
                let free = capacity &+ tail &- head
                if _slowPath(UInt(bitPattern: n) > UInt(free) || free > capacity) {
                    tail = unsafe header.pointee.consumer.tail.load(ordering: .acquiring)
                    if UInt(bitPattern: n) > UInt(capacity &+ tail &- head) { return false }
                    unsafe header.pointee.producer.otherTailSeen.store(tail, ordering: .releasing)
                }
                next = head &+ UInt32(truncatingIfNeeded: n)
                let (done, seen) = unsafe header.pointee.producer.head.weakCompareExchange(
                    expected: head, desired: next, successOrdering: .relaxed, failureOrdering: .acquiring)
                if done { break }
                head = seen
            }
            let slots = unsafe self.slots
            let start = Int(head & mask)
            if _fastPath(start &+ n <= Int(mask) &+ 1) {
                unsafe MempoolObjects.copy(slots + start, from: objects, count: n)
            } else {
                let first = Int(mask) &+ 1 &- start
                unsafe (slots + start).update(from: objects, count: first)
                unsafe slots.update(from: objects + first, count: n &- first)
            }
            // Publish in reservation order: wait for earlier producers. The load
            // acquires, so each earlier producer's writes happen before this
            // release and consumers that acquire our tail see all of them.
            var spins = 0
            while unsafe header.pointee.producer.tail.load(ordering: .acquiring) != head {
                MempoolRing.spinPause(&spins)
            }
            unsafe header.pointee.producer.tail.store(next, ordering: .releasing)
            return true
        }

        @inlinable @inline(__always)
        func dequeue(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
            var head = unsafe header.pointee.consumer.head.load(ordering: .acquiring)
            // The consumers' last view of the producers' tail: a lower bound
            // of the tail, so the objects it shows are published. It
            // acquires: the consumer that stored it acquired the producers'
            // tail, so their slot writes happen before our reads.
            var tail = unsafe header.pointee.consumer.otherTailSeen.load(ordering: .acquiring)
            var next: UInt32
            while true {
                // A view showing more than `capacity` objects is stale
                // (behind our head): read the tail itself.
                let entries = tail &- head
                if _slowPath(UInt(bitPattern: n) > UInt(entries) || entries > capacity) {
                    tail = unsafe header.pointee.producer.tail.load(ordering: .acquiring)
                    if UInt(bitPattern: n) > UInt(tail &- head) { return false }
                    unsafe header.pointee.consumer.otherTailSeen.store(tail, ordering: .releasing)
                }
                next = head &+ UInt32(truncatingIfNeeded: n)
                let (done, seen) = unsafe header.pointee.consumer.head.weakCompareExchange(
                    expected: head, desired: next, successOrdering: .relaxed, failureOrdering: .acquiring)
                if done { break }
                head = seen
            }
            let slots = unsafe self.slots
            let start = Int(head & mask)
            if _fastPath(start &+ n <= Int(mask) &+ 1) {
                unsafe MempoolObjects.copy(objects, from: slots + start, count: n)
            } else {
                let first = Int(mask) &+ 1 &- start
                unsafe objects.update(from: slots + start, count: first)
                unsafe (objects + first).update(from: slots, count: n &- first)
            }
            // Acquire the earlier consumers' tail too: their slot reads must
            // happen before a producer that acquires our tail reuses the slots.
            var spins = 0
            while unsafe header.pointee.consumer.tail.load(ordering: .acquiring) != head {
                MempoolRing.spinPause(&spins)
            }
            unsafe header.pointee.consumer.tail.store(next, ordering: .releasing)
            return true
        }

        /// Checks the indices (debug builds only; with no operation in flight).
        func _checkInvariants() {
            #if HUGEALLOC_CHECKS
            let producerHead = unsafe header.pointee.producer.head.load(ordering: .relaxed)
            let producerTail = unsafe header.pointee.producer.tail.load(ordering: .relaxed)
            let consumerHead = unsafe header.pointee.consumer.head.load(ordering: .relaxed)
            let consumerTail = unsafe header.pointee.consumer.tail.load(ordering: .relaxed)
            precondition(capacity <= mask, "ring: capacity \(capacity) above its \(mask + 1) slots")
            precondition(producerHead == producerTail && consumerHead == consumerTail, "ring: an operation is half done")
            precondition(producerTail &- consumerTail <= capacity, "ring: holds more objects than its capacity")
            #endif
        }
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
