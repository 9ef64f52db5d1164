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

/// The lock word of a stack alone in a 128-byte block, with the journal of
/// the operation its holder is doing (a shared pool's; see
/// ``MempoolJournal``).
@usableFromInline
struct MempoolPaddedIndex: ~Copyable {
    /// 0 free; held: 1 in a private pool, the holder's pid in a shared one.
    @usableFromInline let value: Atomic<UInt32>
    let _word: UInt32
    @usableFromInline let journal: MempoolJournal
    let _padding: MempoolPadding88

    init() {
        value = Atomic(0)
        _word = 0
        journal = MempoolJournal()
        _padding = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
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
    /// A shared ring's lock of this side (0 free, else the holder's pid);
    /// unused by a private ring, whose operations are lock-free.
    @usableFromInline let lock: Atomic<UInt32>
    /// What the holder of `lock` is doing (a shared ring's).
    @usableFromInline let journal: MempoolJournal
    let _padding: MempoolPadding80

    init() {
        head = Atomic(0)
        tail = Atomic(0)
        otherTailSeen = Atomic(0)
        lock = Atomic(0)
        journal = MempoolJournal()
        _padding = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    }
}

/// 80 bytes of padding: after 48 bytes of words, the rest of a 128-byte block.
@usableFromInline
typealias MempoolPadding80 = (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

/// 88 bytes of padding: after 40 bytes of words, the rest of a 128-byte block.
@usableFromInline
typealias MempoolPadding88 = (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

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
