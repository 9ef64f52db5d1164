import Synchronization

/// The raw storage shape shared by a ring, a stack and a thread's record:
/// a typed header, then object-pointer slots, in one allocation. The
/// header's stride is a multiple of the alignment, so the slots start on a
/// cache line.
@usableFromInline
enum MempoolStorage {
    /// Allocates `header` followed by `slots` uninitialized slots, aligned
    /// to `alignment`.
    static func allocate<Header: ~Copyable>(
        _ header: consuming Header, slots: Int, alignment: Int
    ) -> UnsafeMutablePointer<Header> {
        let bytes = unsafe MemoryLayout<Header>.stride + max(1, slots) * MemoryLayout<UnsafeMutableRawPointer>.stride
        let storage = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: alignment)
        let typed = unsafe storage.bindMemory(to: Header.self, capacity: 1)
        unsafe typed.initialize(to: header)
        unsafe (storage + MemoryLayout<Header>.stride).bindMemory(to: UnsafeMutableRawPointer.self, capacity: max(1, slots))
        return unsafe typed
    }

    /// The same shape in storage someone else owns (a shared pool's control
    /// memory): writes `header` there, or, when nil, takes the header
    /// another pool instance wrote; binds the `slots` slots after it.
    static func place<Header: ~Copyable>(
        _ header: consuming Header?, at storage: UnsafeMutableRawPointer, slots: Int
    ) -> UnsafeMutablePointer<Header> {
        let typed: UnsafeMutablePointer<Header>
        switch consume header {
        case .some(let header):
            unsafe typed = storage.bindMemory(to: Header.self, capacity: 1)
            unsafe typed.initialize(to: header)
        case .none:
            unsafe typed = storage.assumingMemoryBound(to: Header.self)
        }
        unsafe (storage + MemoryLayout<Header>.stride).bindMemory(to: UnsafeMutableRawPointer.self, capacity: max(1, slots))
        return unsafe typed
    }

    /// Frees what ``allocate(_:slots:alignment:)`` made.
    static func deallocate<Header: ~Copyable>(_ header: UnsafeMutablePointer<Header>) {
        unsafe header.deinitialize(count: 1)
        unsafe UnsafeMutableRawPointer(header).deallocate()
    }

    /// The slots after `header`.
    @inlinable @inline(__always)
    static func slots<Header: ~Copyable>(after header: UnsafeMutablePointer<Header>) -> UnsafeMutablePointer<UnsafeMutableRawPointer> {
        unsafe UnsafeMutableRawPointer(header + 1).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    }
}

/// One index of a ring (or the lock word of a stack) alone in a 128-byte
/// block: a cache line and its adjacent-line prefetch partner.
@usableFromInline
struct MempoolPaddedIndex: ~Copyable {
    @usableFromInline let value: Atomic<UInt32>
    let _word: UInt32
    let _padding: MempoolPadding120

    init() {
        value = Atomic(0)
        _word = 0
        _padding = mempoolPadding120
    }
}

/// One side of a ring, its head and its tail, alone in a 128-byte block:
/// the thread that moves the head with a compare-exchange owns the line
/// when it comes to publish, so waiting on the tail and storing it are
/// hits, not a second cache-line transfer per operation.
///
/// `otherTailSeen` is this side's last view of the other side's tail (a
/// consumer's view of the producers' tail, and the reverse): written only
/// by this side's threads, so checking it costs no access to the other
/// side's line, which is read only when the view does not show enough.
@usableFromInline
struct MempoolPaddedHeadTail: ~Copyable {
    @usableFromInline let head: Atomic<UInt32>
    @usableFromInline let tail: Atomic<UInt32>
    @usableFromInline let otherTailSeen: Atomic<UInt32>
    let _word: UInt32
    let _padding: MempoolPadding112

    init() {
        head = Atomic(0)
        tail = Atomic(0)
        otherTailSeen = Atomic(0)
        _word = 0
        _padding = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    }
}

/// 112 bytes of padding: after 16 bytes of words, the rest of a 128-byte block.
@usableFromInline
typealias MempoolPadding112 = (
    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64
)

/// The object count of a stack alone in a 128-byte block.
@usableFromInline
struct MempoolPaddedCount: ~Copyable {
    @usableFromInline let value: Atomic<Int>
    let _padding: MempoolPadding120

    init() {
        value = Atomic(0)
        _padding = mempoolPadding120
    }
}

/// 120 bytes of padding: after an 8-byte word, the rest of a 128-byte block.
@usableFromInline
typealias MempoolPadding120 = (
    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
    UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64
)

let mempoolPadding120: MempoolPadding120 = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
