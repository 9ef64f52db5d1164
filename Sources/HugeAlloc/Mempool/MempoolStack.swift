import Synchronization

/// A LIFO stack of object pointers: the ``Mempool`` backend for pipelines
/// where one thread allocates and another frees, so the most recently freed
/// (cache-warm) object is handed out next.
///
/// In shared mode a short spinlock (one `Atomic<UInt32>` exchange) guards the
/// array, as DPDK's `stack` mempool handler does; in single-thread mode the
/// lock is skipped and the stack is a plain array with a count. The count is
/// an atomic read and written with relaxed ordering so statistics may read it
/// from any thread; on x86-64 those are ordinary moves.
@usableFromInline
@safe
struct MempoolStack: @unchecked Sendable {
    @inlinable static var countOffset: Int { 128 }
    @inlinable static var slotsOffset: Int { 256 }

    @usableFromInline let storage: UnsafeMutableRawPointer
    @usableFromInline let capacity: Int

    init(capacity: Int) {
        let bytes = unsafe Self.slotsOffset + capacity * MemoryLayout<UnsafeMutableRawPointer>.stride
        unsafe storage = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 128)
        self.capacity = capacity
        unsafe storage.bindMemory(to: Atomic<UInt32>.self, capacity: 1).initialize(to: Atomic(0))
        unsafe (storage + Self.countOffset).bindMemory(to: Atomic<Int>.self, capacity: 1).initialize(to: Atomic(0))
        unsafe (storage + Self.slotsOffset).bindMemory(to: UnsafeMutableRawPointer.self, capacity: capacity)
    }

    func deallocate() {
        unsafe storage.deallocate()
    }

    @inlinable var lockWord: UnsafeMutablePointer<Atomic<UInt32>> {
        unsafe storage.assumingMemoryBound(to: Atomic<UInt32>.self)
    }
    @inlinable var countWord: UnsafeMutablePointer<Atomic<Int>> {
        unsafe (storage + Self.countOffset).assumingMemoryBound(to: Atomic<Int>.self)
    }
    @inlinable var slots: UnsafeMutablePointer<UnsafeMutableRawPointer> {
        unsafe (storage + Self.slotsOffset).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    }

    @inlinable var count: Int { unsafe countWord.pointee.load(ordering: .relaxed) }

    @inlinable func lock() {
        var spins = 0
        while unsafe lockWord.pointee.exchange(1, ordering: .acquiring) != 0 {
            while unsafe lockWord.pointee.load(ordering: .relaxed) != 0 { MempoolRing.spinPause(&spins) }
        }
    }

    @inlinable func unlock() {
        unsafe lockWord.pointee.store(0, ordering: .releasing)
    }

    /// Pushes `n` objects (they always fit: the stack holds every object).
    @inlinable @inline(__always)
    func push(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int, locked: Bool) -> Bool {
        if locked { lock() }
        let top = unsafe countWord.pointee.load(ordering: .relaxed)
        if top + n > capacity {
            if locked { unlock() }
            return false
        }
        unsafe (slots + top).update(from: objects, count: n)
        unsafe countWord.pointee.store(top &+ n, ordering: .relaxed)
        if locked { unlock() }
        return true
    }

    /// Pops `n` objects, all or none; the most recently pushed come first.
    @inlinable @inline(__always)
    func pop(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int, locked: Bool) -> Bool {
        if locked { lock() }
        let top = unsafe countWord.pointee.load(ordering: .relaxed)
        if n > top {
            if locked { unlock() }
            return false
        }
        let slots = unsafe self.slots
        var i = 0
        while i < n {
            unsafe objects[i] = slots[top &- 1 &- i]
            i &+= 1
        }
        unsafe countWord.pointee.store(top &- n, ordering: .relaxed)
        if locked { unlock() }
        return true
    }
}
