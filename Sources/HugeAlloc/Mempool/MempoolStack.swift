import Synchronization

/// A LIFO stack of object pointers: the ``Mempool`` backend for pipelines
/// where one thread allocates and another frees, so the most recently freed
/// (cache-warm) object is handed out next.
///
/// In shared mode a short spinlock (one `Atomic<UInt32>` exchange) guards the
/// array, as DPDK's `stack` mempool handler does; in single-thread mode the
/// lock is skipped and the stack is a plain array with a count. The count is
/// an atomic read and written with relaxed ordering so statistics may read it
/// from any thread; on x86-64 those are ordinary moves. A stack in shared
/// control memory (several processes) goes through `MempoolSharedBackend`
/// instead: its lock word holds the holder's pid, with a journal, so that a
/// process killed holding it can be repaired.
///
/// The stack owns its storage: it is noncopyable and frees the storage in
/// `deinit`, exactly once. All pointer arithmetic happens in
/// ``_UnsafeHandle``.
@usableFromInline
@safe
struct MempoolStack: ~Copyable, @unchecked Sendable {
    @usableFromInline let handle: _UnsafeHandle
    /// False for a stack placed in a shared pool's control memory, which the
    /// caller owns.
    let ownsStorage: Bool

    /// Allocates a stack for `capacity` objects (at most ``Mempool/maximumCount``).
    init(capacity: Int) {
        handle = _UnsafeHandle.allocate(capacity: capacity)
        ownsStorage = true
    }

    /// A stack in storage someone else owns (a shared pool's control memory):
    /// nothing is freed when it goes.
    init(placed handle: _UnsafeHandle) {
        self.handle = handle
        ownsStorage = false
    }

    deinit {
        if ownsStorage { handle.deallocate() }
    }

    /// Objects on the stack now.
    @inlinable var count: Int { handle.count }

    /// Pushes `n` objects, all or none: false when more than `capacity`
    /// would be on the stack, and for a negative `n`.
    @inlinable @inline(__always)
    func push(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int, locked: Bool) -> Bool {
        unsafe handle.push(objects, count: n, locked: locked)
    }

    /// Pops `n` objects, all or none, the most recently pushed first: false
    /// when fewer are there, and for a negative `n`.
    @inlinable @inline(__always)
    func pop(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int, locked: Bool) -> Bool {
        unsafe handle.pop(into: objects, count: n, locked: locked)
    }
}

extension MempoolStack {
    /// The start of the stack's storage; the slots follow it.
    @usableFromInline
    struct Header: ~Copyable {
        /// 0 free, 1 held.
        @usableFromInline let lock = MempoolPaddedIndex()
        /// Objects on the stack (the index of the first free slot).
        @usableFromInline let count = MempoolPaddedCount()
    }

    /// A view of the stack's storage (header, then `capacity` slots): the
    /// only code that computes addresses in it. It owns nothing; the
    /// ``MempoolStack`` that made it frees the storage. The pool keeps one
    /// beside the owner for its hot paths; the pool registry keeps one to
    /// put a thread's cached objects back when the thread exits, and drops
    /// it (under its lock) before the stack is freed.
    ///
    /// Its surface is checked: a count outside `0...available` is refused
    /// by the same unsigned comparison that checks availability.
    @usableFromInline
    @safe
    struct _UnsafeHandle: @unchecked Sendable {
        @usableFromInline let header: UnsafeMutablePointer<Header>
        @usableFromInline let capacity: Int

        static func allocate(capacity: Int) -> _UnsafeHandle {
            precondition(capacity >= 0 && capacity <= Mempool.maximumCount, "stack capacity \(capacity) out of range")
            let header = unsafe MempoolStorage.allocate(Header(), slots: capacity, alignment: 128)
            return unsafe _UnsafeHandle(header: header, capacity: capacity)
        }

        /// Bytes of storage (header and slots) a stack of `capacity` objects takes.
        static func storageBytes(capacity: Int) -> Int {
            unsafe MemoryLayout<Header>.stride + max(1, capacity) * MemoryLayout<UnsafeMutableRawPointer>.stride
        }

        /// A stack of `capacity` objects in `storageBytes(capacity:)` bytes
        /// at `storage` (128-byte aligned, not owned): an empty stack written
        /// there when `initializing`, else the one another pool instance
        /// wrote (in the same or another process).
        static func placed(at storage: UnsafeMutableRawPointer, capacity: Int, initializing: Bool) -> _UnsafeHandle {
            precondition(capacity >= 0 && capacity <= Mempool.maximumCount, "stack capacity \(capacity) out of range")
            let header = unsafe MempoolStorage.place(initializing ? Header() : nil, at: storage, slots: capacity)
            return unsafe _UnsafeHandle(header: header, capacity: capacity)
        }

        @usableFromInline
        init(header: UnsafeMutablePointer<Header>, capacity: Int) {
            unsafe self.header = header
            self.capacity = capacity
        }

        func deallocate() {
            unsafe MempoolStorage.deallocate(header)
        }

        @inlinable var slots: UnsafeMutablePointer<UnsafeMutableRawPointer> {
            unsafe MempoolStorage.slots(after: header)
        }

        @inlinable var count: Int { unsafe header.pointee.count.value.load(ordering: .relaxed) }

        @inlinable func lock() {
            var spins = 0
            while unsafe header.pointee.lock.value.exchange(1, ordering: .acquiring) != 0 {
                while unsafe header.pointee.lock.value.load(ordering: .relaxed) != 0 { MempoolRing.spinPause(&spins) }
            }
        }

        @inlinable func unlock() {
            unsafe header.pointee.lock.value.store(0, ordering: .releasing)
        }

        @inlinable @inline(__always)
        func push(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int, locked: Bool) -> Bool {
            if locked { lock() }
            let top = unsafe header.pointee.count.value.load(ordering: .relaxed)
            if UInt(bitPattern: n) > UInt(bitPattern: capacity &- top) {
                if locked { unlock() }
                return false
            }
            unsafe (slots + top).update(from: objects, count: n)
            unsafe header.pointee.count.value.store(top &+ n, ordering: .relaxed)
            _checkInvariants(top &+ n)
            if locked { unlock() }
            return true
        }

        @inlinable @inline(__always)
        func pop(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int, locked: Bool) -> Bool {
            if locked { lock() }
            let top = unsafe header.pointee.count.value.load(ordering: .relaxed)
            if UInt(bitPattern: n) > UInt(bitPattern: top) {
                if locked { unlock() }
                return false
            }
            let slots = unsafe self.slots
            var i = 0
            while i < n {
                unsafe objects[i] = slots[top &- 1 &- i]
                i &+= 1
            }
            unsafe header.pointee.count.value.store(top &- n, ordering: .relaxed)
            _checkInvariants(top &- n)
            if locked { unlock() }
            return true
        }

        /// Checks a new count (debug builds only).
        @inlinable @inline(__always)
        func _checkInvariants(_ count: Int) {
            #if HUGEALLOC_CHECKS
            precondition(count >= 0 && count <= capacity, "stack: count \(count) outside 0...\(capacity)")
            #endif
        }
    }
}
