import Synchronization

/// A shared pool's calls, ordered so that a process killed between any two
/// instructions leaves a state its reclaimer completes (see
/// `MempoolSharedBackend` for the backend's own steps, and
/// docs/multi-process.md, "Crashes").
///
/// Each move of objects has one commit point, a single store, before which
/// the objects are where they were and after which they are where they go:
/// - a thread's cache: its count. A get takes the top `n` (checked mode:
///   their owner words set to this process first) and then lowers the
///   count; a put copies above the count and then raises it (checked mode:
///   the owner words, "returning" until then, cleared after).
/// - the backend: a ring side's tail or a stack's count, under a lock
///   whose journal lets the reclaimer finish or undo the move.
/// - refill and flush are transfers between the backend and a cache, one
///   journaled operation each: the reclaimer sets the cache's count when
///   the backend's commit happened.
///
/// The reclaimer of a dead process repairs the backend's locks it held
/// first, then drains its caches (clearing the owner words of what they
/// hold: a cache's objects are in the pool), then, in checked mode, takes
/// back every object whose owner word names it, plain or returning.
extension Mempool {
    /// ``backendDequeue(_:count:)`` of a shared pool; in checked mode the
    /// whole get (``get(into:count:)`` comes here, its thread record not
    /// used inline), which marks the objects before it commits.
    @usableFromInline @inline(never)
    func sharedDequeue(_ objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        if checked { return unsafe sharedCheckedGet(into: objects, count: n) }
        return unsafe sharedBackend.unsafelyUnwrapped.dequeue(into: objects, count: n, by: processID)
    }

    /// ``backendEnqueue(_:count:)`` of a shared pool.
    @usableFromInline @inline(never)
    func sharedEnqueue(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        unsafe sharedBackend.unsafelyUnwrapped.enqueue(objects, count: n, by: processID)
    }

    /// This process's pid as an owner word holds it.
    var ownerPID: Int32 { Int32(bitPattern: processID) }

    /// Marks `n` objects handed out to this process (checked mode).
    func markHeld(_ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int) {
        for i in 0..<n {
            guard let index = unsafe try? objectIndex(of: objects[i]) else {
                fatalError("mempool: the shared backend handed out \(UInt(bitPattern: unsafe objects[i])), which is not an object (memory corruption)")
            }
            objectStates.markHandedOut(index, by: ownerPID)
        }
    }

    /// Takes `n` objects straight from the backend, marked for this
    /// process before the commit in checked mode.
    func sharedDirectGet(
        _ backend: MempoolSharedBackend, into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int,
        marking: Bool
    ) -> Bool {
        guard marking else { return unsafe backend.dequeue(into: objects, count: n, by: processID) }
        return unsafe backend.dequeue(into: objects, count: n, by: processID, .checkedGet) { taken, k in
            unsafe markHeld(taken, count: k)
        }
    }

    /// The top `n` of the cache (it holds `have` ≥ `n`) into `objects`:
    /// (checked: marked first), then the count lowered, the commit.
    func takeFromCache(
        _ record: MempoolRecord, into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int, have: Int,
        marking: Bool
    ) {
        let source = unsafe record.slots + (have &- n)
        if marking { unsafe markHeld(source, count: n) }
        unsafe MempoolObjects.copy(objects, from: source, count: n)
        record.setCount(have &- n)
        if statisticsEnabled { record.bump(.gets, by: n) }
    }

    /// ``refillAndGet(_:into:count:)`` of a shared pool (`n` in `0...count`):
    /// the refill is one journaled transfer into the cache.
    func sharedRefillAndGet(
        _ backend: MempoolSharedBackend, _ record: MempoolRecord,
        into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int, marking: Bool
    ) -> Bool {
        if n > cacheHalf {
            let ok = unsafe sharedDirectGet(backend, into: objects, count: n, marking: marking)
            if statisticsEnabled { record.bump(ok ? .gets : .getFailures, by: ok ? n : 1) }
            return ok
        }
        var have = record.count
        if n > have {
            func refill(_ k: Int) -> Bool {
                unsafe backend.dequeue(into: record.slots + have, count: k, by: processID, .transfer,
                                       record: record, recordCount: have + k)
            }
            let want = cacheHalf &+ n &- have
            if refill(want) {
                have &+= want
            } else if refill(n &- have) {
                have = n
            } else {
                if statisticsEnabled { record.bump(.getFailures, by: 1) }
                return false
            }
            if statisticsEnabled { record.bump(.refills, by: 1) }
        }
        unsafe takeFromCache(record, into: objects, count: n, have: have, marking: marking)
        return true
    }

    /// ``flushAndPut(_:_:count:)`` of a shared pool (`n` in `0...count`):
    /// the flush is one journaled transfer out of the cache. `returning`:
    /// the objects' indices in checked mode, whose owner words say
    /// "returning" and are cleared once the objects are in.
    func sharedFlushAndPut(
        _ backend: MempoolSharedBackend, _ record: MempoolRecord, _ objects: UnsafePointer<UnsafeMutableRawPointer>,
        count n: Int, returning indices: [Int]?
    ) -> Bool {
        if n > cacheHalf {
            unsafe sharedDirectPut(backend, objects, count: n, returning: indices)
            return true
        }
        var have = record.count
        if n > cacheCapacity &- have {
            if unsafe !backend.enqueue(record.slots + cacheHalf, count: have &- cacheHalf, by: processID, .transfer,
                                       record: record, recordCount: cacheHalf) {
                backendOverflow(have &- cacheHalf)
            }
            have = cacheHalf
            if statisticsEnabled { record.bump(.flushes, by: 1) }
        }
        unsafe putIntoCache(record, objects, count: n, have: have, returning: indices)
        return true
    }

    /// Copies `n` objects above the cache's `have`, then raises the count
    /// (the commit), then (checked) clears their owner words.
    func putIntoCache(
        _ record: MempoolRecord, _ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int, have: Int,
        returning indices: [Int]?
    ) {
        unsafe MempoolObjects.copy(record.slots + have, from: objects, count: n)
        record.setCount(have &+ n)
        if let indices { for index in indices { objectStates.finishReturn(index, by: ownerPID) } }
    }

    /// Puts `n` objects straight into the backend; in checked mode their
    /// owner words are cleared after the commit, under the lock.
    func sharedDirectPut(
        _ backend: MempoolSharedBackend, _ objects: UnsafePointer<UnsafeMutableRawPointer>, count n: Int,
        returning indices: [Int]?
    ) {
        let ok: Bool
        if let indices {
            let me = ownerPID
            ok = unsafe backend.enqueue(objects, count: n, by: processID, .checkedPut) { _, _ in
                for index in indices { objectStates.finishReturn(index, by: me) }
            }
        } else {
            ok = unsafe backend.enqueue(objects, count: n, by: processID)
        }
        if !ok { backendOverflow(n) }
    }

    /// ``get(into:count:)`` of a shared checked pool: the objects are
    /// marked for this process before the get commits.
    func sharedCheckedGet(into objects: UnsafeMutablePointer<UnsafeMutableRawPointer>, count n: Int) -> Bool {
        let backend = unsafe sharedBackend.unsafelyUnwrapped
        guard cachesThreads, let record = threadRecord() else {
            return unsafe sharedDirectGet(backend, into: objects, count: n, marking: true)
        }
        let have = record.count
        if UInt(bitPattern: n) <= UInt(bitPattern: have) {
            unsafe takeFromCache(record, into: objects, count: n, have: have, marking: true)
            return true
        }
        guard n >= 0, n <= count else {
            if statisticsEnabled { record.bump(.getFailures, by: 1) }
            return false
        }
        return unsafe sharedRefillAndGet(backend, record, into: objects, count: n, marking: true)
    }

    /// The put of ``putChecked(from:count:)`` in a shared pool, after the
    /// checks: each owner word goes to "returning by this process" (a
    /// double free is refused here, all undone), the objects go in, and
    /// the words are cleared.
    func sharedCheckedPut(_ objects: UnsafePointer<UnsafeMutableRawPointer>, indices: [Int]) throws(MempoolError) {
        let me = ownerPID
        var holders = [Int32]()
        holders.reserveCapacity(indices.count)
        for (i, index) in indices.enumerated() {
            guard let holder = objectStates.beginReturn(index, by: me) else {
                for (k, earlier) in indices[..<i].enumerated() { objectStates.undoReturn(earlier, by: me, holder: holders[k]) }
                throw .doubleFree(address: UInt(bitPattern: unsafe objects[i]), objectIndex: index)
            }
            holders.append(holder)
        }
        let n = indices.count
        let backend = unsafe sharedBackend.unsafelyUnwrapped
        guard cachesThreads, let record = threadRecord() else {
            unsafe sharedDirectPut(backend, objects, count: n, returning: indices)
            return
        }
        if statisticsEnabled { record.bump(.puts, by: n) }
        let have = record.count
        if n <= cacheCapacity &- have {
            unsafe putIntoCache(record, objects, count: n, have: have, returning: indices)
        } else {
            _ = unsafe sharedFlushAndPut(backend, record, objects, count: n, returning: indices)
        }
    }

    /// What the repair of a dead lock holder's checked operation does to
    /// the owner words: a committed put's "returning" words are cleared
    /// (the objects are in the pool); an uncommitted get's marks are
    /// undone (the objects stayed in the backend). The other two cases
    /// leave the objects in the dead process's hands, for the owner scan.
    func settleJournaled(_ operation: MempoolSharedBackend.Operation, committed: Bool, objects: [UnsafeMutableRawPointer], owner: Int32) {
        guard checked else { return }
        for unsafe object in unsafe objects {
            guard let index = unsafe try? objectIndex(of: object) else { continue }
            switch operation {
            case .checkedPut where committed: objectStates.finishReturn(index, by: owner)
            case .checkedGet where !committed: objectStates.undoHandOut(index, from: owner)
            default: break
            }
        }
    }

    /// Finishes or undoes the backend operation dead process `pid` was
    /// doing under a lock, and releases the lock; checked mode's owner
    /// words of the operation's objects are put right.
    func repairLocks(of pid: Int32, _ backend: MempoolSharedBackend) {
        unsafe backend.repair(deadProcess: pid, by: processID) { operation, committed, objects, owner in
            unsafe settleJournaled(operation, committed: committed, objects: objects, owner: owner)
        }
    }

    /// For tests: makes this process kill itself at `point` of its next
    /// shared backend operation (nil: never).
    package static func crashInsideSharedOperations(at point: MempoolSharedBackend.CrashPoint?) {
        MempoolSharedBackend.crashPoint.store(point?.rawValue ?? 0, ordering: .relaxed)
    }

    /// For tests: whether reclaiming a dead process repairs the backend
    /// locks it held (off, such a process stalls the backend, as a ring
    /// without the journal would).
    package static func repairsLocksOfDeadProcesses(_ enabled: Bool) {
        MempoolSharedBackend.repairEnabled.store(enabled, ordering: .relaxed)
    }
}
