import Synchronization

/// What the holder of a shared backend's lock is doing, written before the
/// step it describes, so that a survivor can finish or undo the operation
/// of a process that died holding the lock.
///
/// It lives beside the lock word it belongs to (a ring has one per side, a
/// stack one), in the shared control memory; only the lock's holder writes
/// it, and a reclaimer reads it once the holder is dead.
@usableFromInline
struct MempoolJournal: ~Copyable {
    /// A ``MempoolSharedBackend/Operation`` raw value; 0 when none is under way.
    @usableFromInline let operation: Atomic<UInt32>
    /// The process the operation marks objects for (checked mode).
    @usableFromInline let owner: Atomic<Int32>
    /// The backend's index before the operation: the side's tail of a
    /// ring, the count of a stack.
    @usableFromInline let start: Atomic<UInt32>
    /// Objects the operation moves.
    @usableFromInline let count: Atomic<UInt32>
    /// A transfer's thread record (its address, the same in every process),
    /// 0 for none.
    @usableFromInline let record: Atomic<UInt>
    /// The record's count once the transfer is done.
    @usableFromInline let recordCount: Atomic<Int>

    init() {
        operation = Atomic(0)
        owner = Atomic(0)
        start = Atomic(0)
        count = Atomic(0)
        record = Atomic(0)
        recordCount = Atomic(0)
    }
}

/// A shared pool's backend (or a ``SharedRing``): the same ring or stack
/// storage as a private pool's, with every operation done under a lock
/// whose word holds the holder's pid, so that a process killed at any
/// instruction of an operation can be repaired by a survivor.
///
/// Each operation is, under the lock: write the journal; copy the object
/// pointers between the slots and the caller's array; (checked gets: mark
/// the objects' owner words); **commit** with one store of the index (a
/// ring side's tail, a stack's count); then (transfers: set the thread
/// record's count; checked puts: clear the owner words); clear the journal;
/// release the lock. A ring has a lock per side (producers, consumers), so
/// with both held it is a single-producer single-consumer ring, which needs
/// nothing more than the two tails; a stack has one.
///
/// **Invariant**: with no lock held by a dead process, every object is in
/// exactly one place: the backend (below the committed index), a thread
/// record's cache (below its count), or the hands of a process (checked
/// mode: its owner word names that process, plain or returning). A dead
/// lock holder breaks it for the objects of its one operation only, and
/// ``repair(deadProcess:settle:)`` restores it from the journal: the index
/// alone tells whether the commit happened, because nobody else moves it
/// while the lock is held.
///
/// Crash windows, with the lock held by the dead process:
/// - before the journal names an operation: nothing moved; release.
/// - before the commit: the backend is unchanged (slots past the index
///   are not part of it); a checked get's marks are undone (owner words
///   back to 0); a transfer's record keeps its count.
/// - after the commit: a transfer's record gets its new count; a checked
///   put's owner words (still "returning") are cleared.
/// In every case the side's head is set to its tail and the lock released,
/// so the backend moves again.
@usableFromInline
@safe
package struct MempoolSharedBackend: @unchecked Sendable {
    /// What a locked operation does besides moving pointers.
    @usableFromInline
    enum Operation: UInt32 {
        /// Moves pointers between the backend and a caller's array.
        case plain = 0
        /// Moves pointers between the backend and a thread record's cache,
        /// whose count is set after the commit.
        case transfer = 1
        /// A checked put: the objects' owner words say "returning" until
        /// after the commit, then 0.
        case checkedPut = 2
        /// A checked get: the objects' owner words are set to the taker
        /// before the commit.
        case checkedGet = 3
    }

    @usableFromInline let ring: MempoolRing._UnsafeHandle?
    @usableFromInline let stack: MempoolStack._UnsafeHandle?

    init(ring: MempoolRing._UnsafeHandle) {
        self.ring = ring
        stack = nil
    }

    init(stack: MempoolStack._UnsafeHandle) {
        self.stack = stack
        ring = nil
    }

    /// Objects in the backend now.
    var count: Int { ring?.count ?? stack!.count }

    /// Adds `n` objects, all or none, as process `pid`; false when they do
    /// not fit. `afterCommit` runs under the lock once they are in.
    @inlinable
    func enqueue(
        _ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int, by pid: UInt32,
        _ operation: Operation = .plain, record: MempoolRecord? = nil, recordCount: Int = 0,
        afterCommit: (UnsafePointer<UnsafeMutableRawPointer>, Int) -> Void = { _, _ in }
    ) -> Bool {
        if let ring {
            return unsafe ring.lockedEnqueue(objects, count: n, by: pid, operation, record: record, recordCount: recordCount,
                                             afterCommit: afterCommit)
        }
        return unsafe stack!.lockedPush(objects, count: n, by: pid, operation, record: record, recordCount: recordCount,
                                        afterCommit: afterCommit)
    }

    /// Takes `n` objects, all or none, as process `pid`; false when fewer
    /// are there. `beforeCommit` runs under the lock once they are copied out.
    @inlinable
    func dequeue(
        into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int, by pid: UInt32,
        _ operation: Operation = .plain, record: MempoolRecord? = nil, recordCount: Int = 0,
        beforeCommit: (UnsafePointer<UnsafeMutableRawPointer>, Int) -> Void = { _, _ in }
    ) -> Bool {
        if let ring {
            return unsafe ring.lockedDequeue(into: objects, count: n, by: pid, operation, record: record,
                                             recordCount: recordCount, beforeCommit: beforeCommit)
        }
        return unsafe stack!.lockedPop(into: objects, count: n, by: pid, operation, record: record,
                                       recordCount: recordCount, beforeCommit: beforeCommit)
    }

    /// Finishes or undoes the operation of every lock process `pid` (dead)
    /// holds, and releases the lock; then does the same for a lock held by
    /// any other process that no longer exists (several died at once: the
    /// reclaim's own puts would otherwise wait on that lock forever).
    /// `settle` gets each checked operation's objects, whether it was
    /// committed, and the pid it was for, to put their owner words right.
    /// The caller (process `me`) has made sure `pid` is dead. Each lock is
    /// first taken over (its word from the dead pid to `me`), so two
    /// reclaimers never repair one lock, and a reclaimer that dies in the
    /// middle leaves a lock that its own reclaimer repairs again from the
    /// same journal (every step is idempotent). Returns how many locks
    /// were repaired.
    @discardableResult
    func repair(
        deadProcess pid: Int32, by me: UInt32,
        settle: (Operation, _ committed: Bool, [UnsafeMutableRawPointer], Int32) -> Void
    ) -> Int {
        guard pid > 0, MempoolSharedBackend.repairEnabled.load(ordering: .relaxed) else { return 0 }
        var repaired = unsafe repairLocks(of: pid, by: me, settle: settle)
        for holder in lockHolders where holder > 0 && holder != pid && !Sys.processExists(holder) {
            repaired += unsafe repairLocks(of: holder, by: me, settle: settle)
        }
        return repaired
    }

    private func repairLocks(
        of pid: Int32, by me: UInt32, settle: (Operation, Bool, [UnsafeMutableRawPointer], Int32) -> Void
    ) -> Int {
        if let ring {
            return unsafe ring.repair(side: 0, deadProcess: pid, by: me, settle: settle)
                + ring.repair(side: 1, deadProcess: pid, by: me, settle: settle)
        }
        return unsafe stack!.repair(deadProcess: pid, by: me, settle: settle)
    }

    /// The pids holding the backend's locks now (0 for a free one).
    var lockHolders: [Int32] {
        if let ring {
            return unsafe [ring.side(0).pointee.lock.load(ordering: .acquiring), ring.side(1).pointee.lock.load(ordering: .acquiring)]
                .map { Int32(bitPattern: $0) }
        }
        return unsafe [Int32(bitPattern: stack!.header.pointee.lock.value.load(ordering: .acquiring))]
    }

    /// Whether process `pid` holds a lock of the backend.
    func isLocked(by pid: Int32) -> Bool {
        lockHolders.contains(pid)
    }

    /// For tests only: false makes ``repair(deadProcess:settle:)`` do
    /// nothing, so a process that dies holding a lock stalls the backend
    /// for everyone, as before the journal existed.
    package static let repairEnabled = Atomic<Bool>(true)

    /// For tests only: a point inside a locked operation (a
    /// ``CrashPoint`` raw value) at which the calling process sends itself
    /// SIGKILL, to prove each crash window; 0 for none.
    @usableFromInline package static let crashPoint = Atomic<Int>(0)

    /// Where ``crashPoint`` may kill the process.
    @usableFromInline package enum CrashPoint: Int {
        /// The lock is held, the journal not yet written.
        case locked = 1
        /// The journal is written, nothing copied.
        case journaled
        /// The pointers are copied (and a checked get's marks made), not committed.
        case copied
        /// Committed; record count or owner words not yet settled.
        case committed
    }

    @inlinable @inline(__always)
    static func crashIfAsked(_ point: CrashPoint) {
        if _slowPath(crashPoint.load(ordering: .relaxed) == point.rawValue) { crash() }
    }

    @usableFromInline @inline(never)
    static func crash() {
        Sys.killSelf()
    }

    /// Takes a lock word for `pid`, spinning (and yielding) while another
    /// holds it.
    @inlinable @inline(__always)
    static func acquire(_ lock: borrowing Atomic<UInt32>, by pid: UInt32) {
        var spins = 0
        while !lock.compareExchange(expected: 0, desired: pid, successOrdering: .acquiring, failureOrdering: .relaxed).exchanged {
            while lock.load(ordering: .relaxed) != 0 { MempoolRing.spinPause(&spins) }
        }
    }

    /// Writes the journal of an operation (the operation last, so a
    /// half-written journal names none).
    @inlinable @inline(__always)
    static func begin(
        _ journal: borrowing MempoolJournal, _ operation: Operation, start: UInt32, count n: Int, owner pid: UInt32,
        record: MempoolRecord?, recordCount: Int
    ) {
        journal.start.store(start, ordering: .relaxed)
        journal.count.store(UInt32(truncatingIfNeeded: n), ordering: .relaxed)
        journal.owner.store(Int32(bitPattern: pid), ordering: .relaxed)
        journal.record.store(record.map { $0.bits } ?? 0, ordering: .relaxed)
        journal.recordCount.store(recordCount, ordering: .relaxed)
        journal.operation.store(operation.rawValue, ordering: .releasing)
    }

    /// After the commit: a transfer's record count.
    @inlinable @inline(__always)
    static func settleRecord(_ operation: Operation, record: MempoolRecord?, recordCount: Int) {
        if operation == .transfer, let record { record.setCount(recordCount) }
    }

    /// A dead holder's journal, as read by its repairer.
    struct Entry {
        var operation: Operation
        var owner: Int32
        var start: UInt32
        var count: Int
        var record: MempoolRecord?
        var recordCount: Int

        /// The journal's operation, nil when none is under way (or it moves
        /// pointers only, which the commit alone settles).
        init?(_ journal: borrowing MempoolJournal) {
            guard let operation = Operation(rawValue: journal.operation.load(ordering: .acquiring)), operation != .plain
            else { return nil }
            self.operation = operation
            owner = journal.owner.load(ordering: .relaxed)
            start = journal.start.load(ordering: .relaxed)
            count = Int(journal.count.load(ordering: .relaxed))
            record = MempoolRecord(bits: journal.record.load(ordering: .relaxed))
            recordCount = journal.recordCount.load(ordering: .relaxed)
        }

        /// Finishes a committed transfer, or hands a checked operation's
        /// objects to `settle`.
        func finish(committed: Bool, objects: () -> [UnsafeMutableRawPointer],
                    settle: (Operation, Bool, [UnsafeMutableRawPointer], Int32) -> Void) {
            if operation == .transfer {
                if committed { MempoolSharedBackend.settleRecord(.transfer, record: record, recordCount: recordCount) }
            } else {
                unsafe settle(operation, committed, objects(), owner)
            }
        }
    }
}

extension MempoolRing._UnsafeHandle {
    /// Side 0 (producers) or 1 (consumers) of the ring.
    @inlinable @inline(__always)
    func side(_ i: Int) -> UnsafeMutablePointer<MempoolPaddedHeadTail> {
        unsafe UnsafeMutableRawPointer(header).assumingMemoryBound(to: MempoolPaddedHeadTail.self) + i
    }

    /// ``enqueue(_:count:)`` for a shared ring: under the producers' lock.
    @inlinable
    func lockedEnqueue(
        _ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int, by pid: UInt32,
        _ operation: MempoolSharedBackend.Operation, record: MempoolRecord?, recordCount: Int,
        afterCommit: (UnsafePointer<UnsafeMutableRawPointer>, Int) -> Void
    ) -> Bool {
        let producer = unsafe side(0), consumer = unsafe side(1)
        MempoolSharedBackend.acquire(unsafe producer.pointee.lock, by: pid)
        MempoolSharedBackend.crashIfAsked(.locked)
        let tail = unsafe producer.pointee.tail.load(ordering: .relaxed)
        let consumed = unsafe consumer.pointee.tail.load(ordering: .acquiring)
        if UInt(bitPattern: n) > UInt(capacity &- (tail &- consumed)) {
            unsafe producer.pointee.lock.store(0, ordering: .releasing)
            return false
        }
        MempoolSharedBackend.begin(unsafe producer.pointee.journal, operation, start: tail, count: n, owner: pid,
                                   record: record, recordCount: recordCount)
        MempoolSharedBackend.crashIfAsked(.journaled)
        let slots = unsafe self.slots
        let start = Int(tail & mask)
        let first = min(n, Int(mask) &+ 1 &- start)
        unsafe (slots + start).update(from: objects, count: first)
        unsafe slots.update(from: objects + first, count: n &- first)
        MempoolSharedBackend.crashIfAsked(.copied)
        let next = tail &+ UInt32(truncatingIfNeeded: n)
        unsafe producer.pointee.head.store(next, ordering: .relaxed)
        unsafe producer.pointee.tail.store(next, ordering: .releasing)
        MempoolSharedBackend.crashIfAsked(.committed)
        MempoolSharedBackend.settleRecord(operation, record: record, recordCount: recordCount)
        unsafe afterCommit(objects, n)
        unsafe producer.pointee.journal.operation.store(0, ordering: .releasing)
        unsafe producer.pointee.lock.store(0, ordering: .releasing)
        return true
    }

    /// ``dequeue(into:count:)`` for a shared ring: under the consumers' lock.
    @inlinable
    func lockedDequeue(
        into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int, by pid: UInt32,
        _ operation: MempoolSharedBackend.Operation, record: MempoolRecord?, recordCount: Int,
        beforeCommit: (UnsafePointer<UnsafeMutableRawPointer>, Int) -> Void
    ) -> Bool {
        let producer = unsafe side(0), consumer = unsafe side(1)
        MempoolSharedBackend.acquire(unsafe consumer.pointee.lock, by: pid)
        MempoolSharedBackend.crashIfAsked(.locked)
        let tail = unsafe consumer.pointee.tail.load(ordering: .relaxed)
        let produced = unsafe producer.pointee.tail.load(ordering: .acquiring)
        if UInt(bitPattern: n) > UInt(produced &- tail) {
            unsafe consumer.pointee.lock.store(0, ordering: .releasing)
            return false
        }
        MempoolSharedBackend.begin(unsafe consumer.pointee.journal, operation, start: tail, count: n, owner: pid,
                                   record: record, recordCount: recordCount)
        MempoolSharedBackend.crashIfAsked(.journaled)
        let slots = unsafe self.slots
        let start = Int(tail & mask)
        let first = min(n, Int(mask) &+ 1 &- start)
        unsafe objects.update(from: slots + start, count: first)
        unsafe (objects + first).update(from: slots, count: n &- first)
        unsafe beforeCommit(objects, n)
        MempoolSharedBackend.crashIfAsked(.copied)
        let next = tail &+ UInt32(truncatingIfNeeded: n)
        unsafe consumer.pointee.head.store(next, ordering: .relaxed)
        unsafe consumer.pointee.tail.store(next, ordering: .releasing)
        MempoolSharedBackend.crashIfAsked(.committed)
        MempoolSharedBackend.settleRecord(operation, record: record, recordCount: recordCount)
        unsafe consumer.pointee.journal.operation.store(0, ordering: .releasing)
        unsafe consumer.pointee.lock.store(0, ordering: .releasing)
        return true
    }

    /// Repairs side `i` if dead process `pid` holds its lock, taken over
    /// by process `me` first; 1 if it did.
    func repair(
        side i: Int, deadProcess pid: Int32, by me: UInt32,
        settle: (MempoolSharedBackend.Operation, Bool, [UnsafeMutableRawPointer], Int32) -> Void
    ) -> Int {
        let side = unsafe side(i)
        guard unsafe side.pointee.lock.compareExchange(
            expected: UInt32(bitPattern: pid), desired: me, successOrdering: .acquiring, failureOrdering: .relaxed).exchanged
        else { return 0 }
        let tail = unsafe side.pointee.tail.load(ordering: .acquiring)
        if let entry = unsafe MempoolSharedBackend.Entry(side.pointee.journal) {
            // The slots of the operation are intact: the lock kept this
            // side out, and the other side does not write the slots it
            // reads (consumers) or has not been given (producers).
            let slots = unsafe self.slots
            unsafe entry.finish(
                committed: tail == entry.start &+ UInt32(truncatingIfNeeded: entry.count),
                objects: { unsafe (0..<entry.count).map { k in unsafe slots[Int((entry.start &+ UInt32(k)) & mask)] } },
                settle: settle)
        }
        unsafe side.pointee.head.store(tail, ordering: .relaxed)
        unsafe side.pointee.journal.operation.store(0, ordering: .relaxed)
        unsafe side.pointee.lock.store(0, ordering: .releasing)
        return 1
    }
}

extension MempoolStack._UnsafeHandle {
    /// ``push(_:count:locked:)`` for a shared stack: the lock word holds
    /// the holder's pid, and the operation is journaled.
    @inlinable
    func lockedPush(
        _ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int, by pid: UInt32,
        _ operation: MempoolSharedBackend.Operation, record: MempoolRecord?, recordCount: Int,
        afterCommit: (UnsafePointer<UnsafeMutableRawPointer>, Int) -> Void
    ) -> Bool {
        MempoolSharedBackend.acquire(unsafe header.pointee.lock.value, by: pid)
        MempoolSharedBackend.crashIfAsked(.locked)
        let top = unsafe header.pointee.count.value.load(ordering: .relaxed)
        if UInt(bitPattern: n) > UInt(bitPattern: capacity &- top) {
            unsafe header.pointee.lock.value.store(0, ordering: .releasing)
            return false
        }
        MempoolSharedBackend.begin(unsafe header.pointee.lock.journal, operation, start: UInt32(truncatingIfNeeded: top),
                                   count: n, owner: pid, record: record, recordCount: recordCount)
        MempoolSharedBackend.crashIfAsked(.journaled)
        unsafe (slots + top).update(from: objects, count: n)
        MempoolSharedBackend.crashIfAsked(.copied)
        unsafe header.pointee.count.value.store(top &+ n, ordering: .releasing)
        MempoolSharedBackend.crashIfAsked(.committed)
        MempoolSharedBackend.settleRecord(operation, record: record, recordCount: recordCount)
        unsafe afterCommit(objects, n)
        unsafe header.pointee.lock.journal.operation.store(0, ordering: .releasing)
        unsafe header.pointee.lock.value.store(0, ordering: .releasing)
        return true
    }

    /// ``pop(into:count:locked:)`` for a shared stack.
    @inlinable
    func lockedPop(
        into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int, by pid: UInt32,
        _ operation: MempoolSharedBackend.Operation, record: MempoolRecord?, recordCount: Int,
        beforeCommit: (UnsafePointer<UnsafeMutableRawPointer>, Int) -> Void
    ) -> Bool {
        MempoolSharedBackend.acquire(unsafe header.pointee.lock.value, by: pid)
        MempoolSharedBackend.crashIfAsked(.locked)
        let top = unsafe header.pointee.count.value.load(ordering: .relaxed)
        if UInt(bitPattern: n) > UInt(bitPattern: top) {
            unsafe header.pointee.lock.value.store(0, ordering: .releasing)
            return false
        }
        MempoolSharedBackend.begin(unsafe header.pointee.lock.journal, operation, start: UInt32(truncatingIfNeeded: top),
                                   count: n, owner: pid, record: record, recordCount: recordCount)
        MempoolSharedBackend.crashIfAsked(.journaled)
        let slots = unsafe self.slots
        var i = 0
        while i < n {
            unsafe objects[i] = slots[top &- 1 &- i]
            i &+= 1
        }
        unsafe beforeCommit(objects, n)
        MempoolSharedBackend.crashIfAsked(.copied)
        unsafe header.pointee.count.value.store(top &- n, ordering: .releasing)
        MempoolSharedBackend.crashIfAsked(.committed)
        MempoolSharedBackend.settleRecord(operation, record: record, recordCount: recordCount)
        unsafe header.pointee.lock.journal.operation.store(0, ordering: .releasing)
        unsafe header.pointee.lock.value.store(0, ordering: .releasing)
        return true
    }

    /// Repairs the stack if dead process `pid` holds its lock, taken over
    /// by process `me` first; 1 if it did.
    func repair(
        deadProcess pid: Int32, by me: UInt32, settle: (MempoolSharedBackend.Operation, Bool, [UnsafeMutableRawPointer], Int32) -> Void
    ) -> Int {
        guard unsafe header.pointee.lock.value.compareExchange(
            expected: UInt32(bitPattern: pid), desired: me, successOrdering: .acquiring, failureOrdering: .relaxed).exchanged
        else { return 0 }
        let top = unsafe header.pointee.count.value.load(ordering: .acquiring)
        if let entry = unsafe MempoolSharedBackend.Entry(header.pointee.lock.journal) {
            // Only the holder moves the count: it is the start until the
            // commit. A push's objects are the slots above the start, a
            // pop's those below; the lock kept everyone else out.
            let start = Int(entry.start), n = entry.count
            let low = entry.operation == .checkedPut ? start : start - n
            let slots = unsafe self.slots
            unsafe entry.finish(committed: top != start || n == 0, objects: { unsafe (0..<n).map { k in unsafe slots[low + k] } },
                         settle: settle)
        }
        unsafe header.pointee.lock.journal.operation.store(0, ordering: .relaxed)
        unsafe header.pointee.lock.value.store(0, ordering: .releasing)
        return 1
    }
}
