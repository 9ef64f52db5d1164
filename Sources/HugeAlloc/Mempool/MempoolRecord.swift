import Synchronization

/// One thread's record for one pool: its cache of free objects and its
/// statistics. In memory, a ``Header`` (one 64-byte cache line), then
/// `capacity` object pointers.
///
/// A record is a handle: the only code that computes addresses inside a
/// record. The record is owned by its thread's table (see
/// `MempoolRegistry`), which frees it when the thread exits, when the pool
/// is destroyed by this thread, or when a new pool takes the slot. A shared
/// pool's records live in its control memory instead (see
/// `MempoolSharedControl`): a thread claims one and releases it, nothing
/// is allocated or freed.
///
/// The owning thread reads and writes its record with relaxed loads and
/// stores (plain moves on x86-64); other threads only read counts and
/// statistics, under the registry lock, to report ``Mempool/availableCount``.
@usableFromInline
@safe
struct MempoolRecord {
    @usableFromInline
    struct Header: ~Copyable {
        /// The pool the record belongs to: a stale record (its pool
        /// destroyed, the slot reused) never matches. A shared pool's record
        /// is claimed by one pool instance after another, each writing its id.
        @usableFromInline let poolID: Atomic<UInt64>
        /// Cached objects; written only by the owning thread.
        @usableFromInline let count = Atomic<Int>(0)
        @usableFromInline let gets = Atomic<Int>(0)
        @usableFromInline let puts = Atomic<Int>(0)
        @usableFromInline let getFailures = Atomic<Int>(0)
        @usableFromInline let refills = Atomic<Int>(0)
        @usableFromInline let flushes = Atomic<Int>(0)
        /// Slots after the header.
        @usableFromInline let capacity: Int32
        /// In a shared pool's control memory: the process whose thread holds
        /// the record (0 when free, -1 while a dead owner's record is
        /// reclaimed). Always 0 in a private pool's record.
        @usableFromInline let ownerPID = Atomic<Int32>(0)

        init(poolID: UInt64, capacity: Int) {
            self.poolID = Atomic(poolID)
            self.capacity = Int32(capacity)
        }
    }

    /// A statistics counter of the record.
    @usableFromInline
    enum Counter { case gets, puts, getFailures, refills, flushes }

    @usableFromInline let header: UnsafeMutablePointer<Header>

    @usableFromInline
    init(header: UnsafeMutablePointer<Header>) {
        unsafe self.header = header
    }

    /// Allocates a record with room for `capacity` objects, none cached.
    static func allocate(poolID: UInt64, capacity: Int) -> MempoolRecord {
        let header = unsafe MempoolStorage.allocate(Header(poolID: poolID, capacity: capacity), slots: capacity, alignment: 64)
        return unsafe MempoolRecord(header: header)
    }

    func deallocate() {
        unsafe MempoolStorage.deallocate(header)
    }

    /// The record whose address a thread table holds, nil for 0.
    @inlinable
    init?(bits: UInt) {
        guard let header = unsafe UnsafeMutablePointer<Header>(bitPattern: bits) else { return nil }
        unsafe self.header = header
    }

    /// The record's address, as a thread table holds it.
    @usableFromInline var bits: UInt { UInt(bitPattern: unsafe header) }

    var poolID: UInt64 { unsafe header.pointee.poolID.load(ordering: .relaxed) }

    /// Objects in the cache.
    @inlinable var count: Int {
        @inline(__always) get { unsafe header.pointee.count.load(ordering: .relaxed) }
    }

    /// Sets the cached count (owning thread only).
    @inlinable @inline(__always)
    func setCount(_ n: Int) {
        unsafe header.pointee.count.store(n, ordering: .relaxed)
        _checkInvariants(n)
    }

    /// The cached object pointers, `capacity` slots.
    @inlinable var slots: UnsafeMutablePointer<UnsafeMutableRawPointer> {
        @inline(__always) get { unsafe MempoolStorage.slots(after: header) }
    }

    /// Adds to a counter only this thread writes: a relaxed load and store.
    @inlinable @inline(__always)
    func bump(_ counter: Counter, by n: Int) {
        switch counter {
        case .gets: unsafe Self.add(n, to: header.pointee.gets)
        case .puts: unsafe Self.add(n, to: header.pointee.puts)
        case .getFailures: unsafe Self.add(n, to: header.pointee.getFailures)
        case .refills: unsafe Self.add(n, to: header.pointee.refills)
        case .flushes: unsafe Self.add(n, to: header.pointee.flushes)
        }
    }

    @inlinable @inline(__always)
    static func add(_ n: Int, to counter: borrowing Atomic<Int>) {
        counter.store(counter.load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }

    var statistics: MempoolStatistics {
        unsafe MempoolStatistics(
            gets: header.pointee.gets.load(ordering: .relaxed),
            puts: header.pointee.puts.load(ordering: .relaxed),
            getFailures: header.pointee.getFailures.load(ordering: .relaxed),
            refills: header.pointee.refills.load(ordering: .relaxed),
            flushes: header.pointee.flushes.load(ordering: .relaxed))
    }

    /// Checks a new cached count (debug builds only).
    @inlinable @inline(__always)
    func _checkInvariants(_ count: Int) {
        #if HUGEALLOC_CHECKS
        let capacity = Int(unsafe header.pointee.capacity)
        precondition(count >= 0 && count <= capacity, "mempool cache: count \(count) outside 0...\(capacity)")
        #endif
    }
}

/// Copying object pointers between a caller's array and a cache or ring.
@usableFromInline
enum MempoolObjects {
    /// Copies `n` object pointers, four at a time as one 32-byte vector
    /// (the buffers never overlap, which the compiler cannot prove, so a
    /// plain loop stays scalar); with a constant `n` it unrolls completely,
    /// where a call to `memmove` would cost more than the copy.
    @inlinable @inline(__always)
    static func copy(
        _ destination: UnsafeMutablePointer<UnsafeMutableRawPointer>,
        from source: UnsafePointer<UnsafeMutableRawPointer>, count n: Int
    ) {
        let to = UnsafeMutableRawPointer(destination)
        let from = unsafe UnsafeRawPointer(source)
        var i = 0
        while i &+ 4 <= n {
            let v = unsafe from.loadUnaligned(fromByteOffset: i &* 8, as: SIMD4<UInt64>.self)
            unsafe to.storeBytes(of: v, toByteOffset: i &* 8, as: SIMD4<UInt64>.self)
            i &+= 4
        }
        while i < n {
            unsafe destination[i] = source[i]
            i &+= 1
        }
    }
}
