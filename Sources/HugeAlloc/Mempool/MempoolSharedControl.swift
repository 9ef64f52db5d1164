import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Objects a pool recovered from a process that died.
public struct MempoolReclaim: Sendable, Equatable {
    /// Objects that were in the dead process's thread caches.
    public var cachedObjects: Int
    /// Objects the dead process had taken and not put back (checked mode
    /// only: without it the pool does not know who holds an object).
    public var heldObjects: Int

    public init(cachedObjects: Int = 0, heldObjects: Int = 0) {
        self.cachedObjects = cachedObjects
        self.heldObjects = heldObjects
    }
}

/// What one process holds of a shared pool.
public struct MempoolProcessUsage: Sendable, Equatable {
    public var pid: Int32
    /// Objects in the process's thread caches.
    public var cachedObjects: Int
    /// Objects the process has taken and not put back; nil without checked mode.
    public var heldObjects: Int?
    /// Thread records (caches) the process's threads hold.
    public var threadRecords: Int

    public init(pid: Int32, cachedObjects: Int, heldObjects: Int?, threadRecords: Int) {
        self.pid = pid
        self.cachedObjects = cachedObjects
        self.heldObjects = heldObjects
        self.threadRecords = threadRecords
    }
}

/// A pool's control state in memory the caller provides, which several
/// processes map at the same address so that their ``Mempool`` instances
/// over the same objects work as one pool.
///
/// The control memory holds, in this order (each part 128-byte aligned):
///
/// - a header of 64-bit words: a magic value (written last by the creator,
///   so an opener never sees half a pool), the layout version, the
///   configuration, the memory's address, length and page size, the number
///   of thread records and the layout facts an opener checks;
/// - one bit per page: whether the next page follows it physically, as the
///   creator saw it (an opener may not be able to read physical addresses,
///   and must place objects exactly as the creator did);
/// - the ring or the stack, header and slots;
/// - checked mode: a 32-bit word per object, 0 while it is in the pool, the
///   pid of the process holding it while handed out;
/// - a fixed table of thread records (``MempoolRecord``: a 64-byte header
///   with the owner's pid, 0 when free, then `cacheSize` slots).
///
/// Everything in it is placed at fixed offsets and addressed by pointers, so
/// every process must map it (and the objects) at the same addresses.
package enum MempoolSharedControl {
    /// "HAMPSHRD": a shared pool was created here.
    static let magic: UInt64 = 0x4841_4D50_5348_5244
    /// The layout of the control memory; an opener of another version refuses.
    /// 2: the ring's and the stack's lock words hold pids, with a journal beside them.
    static let version = 2
    /// The control memory's alignment, and the multiple its size is rounded to.
    static let alignment = 4096
    /// The most thread records one shared pool has.
    package static let maximumThreadRecords = 1 << 20

    /// The header's words after the magic, each an `Int` stored as 64 bits.
    enum Field: Int, CaseIterable {
        case version = 1, count, objectSize, alignment, cacheSize, backend, checked, statistics, memoryChannels
        case memoryLength, pageSize, threadRecords, elementStride, usedLength, memoryBase

        /// The field's name, as an error names it: the case's.
        var name: String { String(describing: self) }
    }

    /// Bytes of the header: room for 32 words.
    static let headerBytes = 256

    /// Bytes of control memory a shared pool of `configuration` over
    /// `memoryLength` bytes of `pageSize` pages needs, for at most
    /// `threadRecords` thread caches (all processes together), rounded up
    /// to 4096. Throws what creation would throw for an invalid configuration.
    package static func bytesNeeded(
        for configuration: MempoolConfiguration, memoryLength: Int, pageSize: PageSize, threadRecords: Int
    ) throws(MempoolError) -> Int {
        try Layout(configuration: configuration, memoryLength: memoryLength, pageSize: pageSize, threadRecords: threadRecords)
            .totalBytes
    }

    /// Where each part lies in the control memory.
    struct Layout: Equatable {
        var pages: Int
        var contiguityOffset: Int
        var backendOffset: Int
        var statesOffset: Int
        var recordsOffset: Int
        var recordStride: Int
        var threadRecords: Int
        /// Every part, rounded up to ``MempoolSharedControl/alignment``.
        var totalBytes: Int

        init(
            configuration c: MempoolConfiguration, memoryLength: Int, pageSize: PageSize, threadRecords: Int
        ) throws(MempoolError) {
            let pageBytes = pageSize.bytes
            guard memoryLength > 0, memoryLength <= MempoolLayout.maximumLength, memoryLength % pageBytes == 0 else {
                throw .invalidMemory(address: 0, length: memoryLength, pageSize: pageBytes)
            }
            guard c.threading == .shared else { throw .sharedPoolNeedsSharedThreading }
            guard threadRecords >= 0, threadRecords <= MempoolSharedControl.maximumThreadRecords else {
                throw .threadRecordsOutOfRange(requested: threadRecords, maximum: MempoolSharedControl.maximumThreadRecords)
            }
            _ = try MempoolLayout.element(for: c, pageSize: pageBytes, contiguousBytes: memoryLength)
            func up(_ n: Int, _ to: Int) -> Int { (n + to - 1) / to * to }
            pages = memoryLength / pageBytes
            contiguityOffset = MempoolSharedControl.headerBytes
            backendOffset = up(contiguityOffset + (pages + 7) / 8, 128)
            let backendBytes = c.backend == .ring
                ? MempoolRing._UnsafeHandle.storageBytes(capacity: c.count)
                : MempoolStack._UnsafeHandle.storageBytes(capacity: c.count)
            statesOffset = up(backendOffset + backendBytes, 128)
            recordsOffset = up(statesOffset + (c.checked ? c.count * MemoryLayout<Int32>.stride : 0), 128)
            recordStride = unsafe up(
                MemoryLayout<MempoolRecord.Header>.stride + c.cacheSize * MemoryLayout<UnsafeMutableRawPointer>.stride, 64)
            self.threadRecords = threadRecords
            totalBytes = up(recordsOffset + threadRecords * recordStride, MempoolSharedControl.alignment)
        }
    }

    /// A view of a shared pool's control memory: the only code that
    /// computes addresses in it. It owns nothing; the caller keeps the
    /// memory mapped while any ``Mempool`` over it is alive.
    @safe
    struct Region: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
        let layout: Layout
        let cacheSize: Int

        private var magicWord: UnsafeMutablePointer<Atomic<UInt64>> {
            unsafe base.assumingMemoryBound(to: Atomic<UInt64>.self)
        }

        func load(_ field: Field) -> Int {
            Int(truncatingIfNeeded: unsafe base.load(fromByteOffset: field.rawValue * 8, as: UInt64.self))
        }

        func store(_ value: Int, _ field: Field) {
            unsafe base.storeBytes(of: UInt64(truncatingIfNeeded: value), toByteOffset: field.rawValue * 8, as: UInt64.self)
        }

        /// The header's words a configuration and memory give.
        static func fields(
            _ c: MempoolConfiguration, memory: MempoolMemory
        ) -> [(Field, Int)] {
            return [
                (.version, MempoolSharedControl.version), (.count, c.count), (.objectSize, c.objectSize),
                (.alignment, c.alignment), (.cacheSize, c.cacheSize), (.backend, c.backend == .ring ? 0 : 1),
                (.checked, c.checked ? 1 : 0), (.statistics, c.statistics ? 1 : 0),
                (.memoryChannels, c.memoryChannels ?? 0), (.memoryLength, memory.length), (.pageSize, memory.pageSize.bytes),
                // Object pointers in the ring and the caches are addresses:
                // every process maps the objects at the creator's.
                (.memoryBase, Int(bitPattern: UInt(bitPattern: unsafe memory.base))),
            ]
        }

        /// Lays out a new pool's control state in `length` zero-filled bytes
        /// at `control`: the header (all but the magic, which
        /// ``publish(_:)`` writes), the contiguity bits from
        /// `contiguous(p)`, and free thread records, as many as fit.
        static func create(
            at control: UnsafeMutableRawPointer, length: Int, configuration c: MempoolConfiguration,
            memory: MempoolMemory, contiguous: (Int) -> Bool
        ) throws(MempoolError) -> Region {
            let fixed = try unsafe layoutWithoutRecords(
                at: control, length: length, configuration: c, memory: memory, minimumLength: { $0.totalBytes })
            let records = min((length - fixed.recordsOffset) / fixed.recordStride, MempoolSharedControl.maximumThreadRecords)
            let layout = try Layout(
                configuration: c, memoryLength: memory.length, pageSize: memory.pageSize, threadRecords: records)
            let region = unsafe Region(base: control, layout: layout, cacheSize: c.cacheSize)
            unsafe control.bindMemory(to: Atomic<UInt64>.self, capacity: 1).initialize(to: Atomic(0))
            for (field, value) in fields(c, memory: memory) { region.store(value, field) }
            region.store(records, .threadRecords)
            let bits = unsafe (control + layout.contiguityOffset).assumingMemoryBound(to: UInt8.self)
            for p in 0..<max(0, layout.pages - 1) where contiguous(p) {
                unsafe bits[p / 8] |= UInt8(1) << UInt8(p % 8)
            }
            if c.checked {
                let words = unsafe (control + layout.statesOffset).bindMemory(to: Atomic<Int32>.self, capacity: c.count)
                for i in 0..<c.count { unsafe (words + i).initialize(to: Atomic(0)) }
            }
            for i in 0..<records {
                _ = unsafe MempoolStorage.place(
                    MempoolRecord.Header(poolID: 0, capacity: c.cacheSize),
                    at: control + layout.recordsOffset + i * layout.recordStride, slots: c.cacheSize)
            }
            return region
        }

        /// The layout of `c` over `memory` with no thread records, after
        /// checking that `control` is 4096-aligned and at least
        /// `minimumLength(layout)` bytes long.
        private static func layoutWithoutRecords(
            at control: UnsafeMutableRawPointer, length: Int, configuration c: MempoolConfiguration,
            memory: MempoolMemory, minimumLength: (Layout) -> Int
        ) throws(MempoolError) -> Layout {
            let fixed = try Layout(configuration: c, memoryLength: memory.length, pageSize: memory.pageSize, threadRecords: 0)
            let address = UInt(bitPattern: control)
            guard address % UInt(MempoolSharedControl.alignment) == 0, length >= minimumLength(fixed) else {
                throw .invalidSharedControl(address: address, length: length, needed: fixed.totalBytes)
            }
            return fixed
        }

        /// The control state another instance created at `control`, after
        /// checking that it was made for `c` over the same memory.
        static func open(
            at control: UnsafeMutableRawPointer, length: Int, configuration c: MempoolConfiguration,
            memory: MempoolMemory
        ) throws(MempoolError) -> Region {
            let fixed = try unsafe layoutWithoutRecords(
                at: control, length: length, configuration: c, memory: memory,
                minimumLength: { _ in MempoolSharedControl.headerBytes })
            let address = UInt(bitPattern: control)
            let probe = unsafe Region(base: control, layout: fixed, cacheSize: c.cacheSize)
            guard unsafe probe.magicWord.pointee.load(ordering: .acquiring) == MempoolSharedControl.magic,
                  probe.load(.version) == MempoolSharedControl.version
            else { throw .sharedControlNotInitialized(address: address) }
            for (field, value) in fields(c, memory: memory) where probe.load(field) != value {
                throw .sharedControlMismatch(field: field.name, created: probe.load(field), requested: value)
            }
            let records = probe.load(.threadRecords)
            let layout = try Layout(configuration: c, memoryLength: memory.length, pageSize: memory.pageSize, threadRecords: records)
            guard length >= layout.totalBytes else {
                throw .invalidSharedControl(address: address, length: length, needed: layout.totalBytes)
            }
            return unsafe Region(base: control, layout: layout, cacheSize: c.cacheSize)
        }

        /// Whether page `p + 1` follows page `p` physically, as the creator saw it.
        func followsPhysically(_ p: Int) -> Bool {
            guard p >= 0, p + 1 < layout.pages else { return false }
            return unsafe (base + layout.contiguityOffset).load(fromByteOffset: p / 8, as: UInt8.self) & (1 << UInt8(p % 8)) != 0
        }

        /// Checks the layout this instance planned against the creator's.
        func verify(_ planned: MempoolLayout) throws(MempoolError) {
            if load(.elementStride) != planned.stride {
                throw .sharedControlMismatch(field: Field.elementStride.name, created: load(.elementStride), requested: planned.stride)
            }
            if load(.usedLength) != planned.usedLength {
                throw .sharedControlMismatch(field: Field.usedLength.name, created: load(.usedLength), requested: planned.usedLength)
            }
        }

        /// The creator's last step, after the backend holds every object:
        /// the layout facts, then the magic that lets others open the pool.
        func publish(_ planned: MempoolLayout) {
            store(planned.stride, .elementStride)
            store(planned.usedLength, .usedLength)
            unsafe magicWord.pointee.store(MempoolSharedControl.magic, ordering: .releasing)
        }

        var backendStorage: UnsafeMutableRawPointer { unsafe base + layout.backendOffset }

        var stateWords: UnsafeMutablePointer<Atomic<Int32>> {
            unsafe (base + layout.statesOffset).assumingMemoryBound(to: Atomic<Int32>.self)
        }

        /// Thread record `i`, 0..<threadRecords.
        func record(_ i: Int) -> MempoolRecord {
            unsafe MempoolRecord(header: (base + layout.recordsOffset + i * layout.recordStride)
                .assumingMemoryBound(to: MempoolRecord.Header.self))
        }

        /// Claims a free thread record for process `pid` and pool instance
        /// `poolID` (compare-exchange of its owner from 0 to `pid`); nil
        /// when every record is taken.
        func claimRecord(pid: Int32, poolID: UInt64) -> MempoolRecord? {
            for i in 0..<layout.threadRecords {
                let record = record(i)
                guard unsafe record.header.pointee.ownerPID.load(ordering: .relaxed) == 0,
                      unsafe record.header.pointee.ownerPID.compareExchange(
                          expected: 0, desired: pid, successOrdering: .acquiring, failureOrdering: .relaxed).exchanged
                else { continue }
                unsafe record.header.pointee.poolID.store(poolID, ordering: .relaxed)
                return record
            }
            return nil
        }

        /// Objects in every thread record, of every process.
        var cachedCount: Int {
            var total = 0
            for i in 0..<layout.threadRecords { total += record(i).count }
            return total
        }

        /// The statistics of every thread record, of every process, ever:
        /// a record keeps its counters when released and claimed again.
        var statistics: MempoolStatistics {
            var total = MempoolStatistics()
            for i in 0..<layout.threadRecords { total += record(i).statistics }
            return total
        }
    }
}

extension MempoolRecord {
    /// Set in a shared pool's record owner, with the dead owner's pid,
    /// while a reclaim drains the record: the sign bit, so a draining
    /// record's owner is negative, as no process's pid is.
    static let drainingBit: Int32 = Int32.min

    /// The process holding this record of a shared pool (0: free), with
    /// ``drainingBit`` while a reclaim drains it.
    var ownerPID: Int32 { unsafe header.pointee.ownerPID.load(ordering: .acquiring) }

    /// Marks the record of dead process `pid` as being drained (its owner
    /// from `pid` to `pid` with ``drainingBit``); false when it is not `pid`'s.
    func beginDraining(of pid: Int32) -> Bool {
        unsafe header.pointee.ownerPID.compareExchange(
            expected: pid, desired: pid | Self.drainingBit, successOrdering: .acquiringAndReleasing, failureOrdering: .relaxed).exchanged
    }

    /// Hands a shared pool's record back (its cache already empty).
    func release() {
        unsafe header.pointee.ownerPID.store(0, ordering: .releasing)
    }
}

extension Mempool {
    /// Creates (`creating: true`) or opens a pool whose control state — the
    /// ring or stack, the thread records with their statistics, checked
    /// mode's object states — lives in `control`, memory the caller maps in
    /// several processes at the same address, as it maps `sharedMemory`:
    /// the instances over one control memory, one per process, work as
    /// one pool.
    ///
    /// Creating lays out the control state in `control` (at least
    /// ``MempoolSharedControl/bytesNeeded(for:memoryLength:pageSize:threadRecords:)``
    /// bytes, 4096-aligned, zero-filled; the records are as many as fit) and
    /// fills the backend with every object, as a private pool does. Opening
    /// changes nothing: it checks that the pool was created with the same
    /// configuration over memory of the same length and page size
    /// (``MempoolError/sharedControlMismatch(field:created:requested:)``),
    /// and places the objects as the creator did, from the contiguity it
    /// stored, without reading physical addresses. `sharedMemory`'s
    /// physical addresses serve ``physicalAddress(of:)`` only.
    ///
    /// A thread claims a free record on its first cached call and releases
    /// it, its objects put back, when it exits or calls
    /// ``flushThreadCache()``; when every record is taken, the thread works
    /// uncached. Destroying the instance flushes and releases the records
    /// of this process's threads that use it; `releaseMemory` then runs.
    package convenience init(
        sharedMemory memory: MempoolMemory, control: UnsafeMutableRawPointer, controlLength: Int,
        configuration: MempoolConfiguration, creating: Bool, releaseMemory: (@Sendable () -> Void)?
    ) throws(MempoolError) {
        try Self.validate(memory)
        let region: MempoolSharedControl.Region
        let translation = Self.translation(of: memory)
        if creating {
            let table = translation?.pagePhysical ?? []
            let pageBytes = UInt64(memory.pageSize.bytes)
            region = try unsafe .create(
                at: control, length: controlLength, configuration: configuration, memory: memory,
                contiguous: { p in p + 1 < table.count && table[p] != 0 && table[p + 1] == table[p] &+ pageBytes })
        } else {
            region = try unsafe .open(
                at: control, length: controlLength, configuration: configuration, memory: memory)
        }
        try unsafe self.init(
            base: memory.base, length: memory.length, pageSize: memory.pageSize, translation: translation,
            configuration: configuration, releaseMemory: releaseMemory, owning: nil, shared: region, creating: creating)
    }

    /// Whether the pool's control state is in shared control memory.
    public var isShared: Bool { sharedControl != nil }

    /// Returns to the pool what process `pid` held: the objects in its
    /// threads' cache records (the records freed for reuse) and, in checked
    /// mode, every object handed out to it. The caller has made sure the
    /// process is dead: its records are then touched by no one else, and
    /// the pool may be in use by live processes meanwhile (a held object a
    /// live process puts back at the same moment is returned once). Does
    /// nothing for a private pool.
    ///
    /// A reclaimer that dies part way leaves the rest to the next: every
    /// step can run again. Its lock is repaired like any dead holder's; a
    /// record it was draining keeps the dead owner's pid (with a
    /// draining bit), so the next reclaim of `pid` drains
    /// it again from what the repair left; and a held object goes back
    /// through a journaled checked put in the reclaimer's name, so an
    /// object caught between the two is in the reclaimer's hands and its
    /// own reclaim returns it.
    public func reclaim(process pid: Int32) -> MempoolReclaim {
        guard let region = sharedControl, let backend = sharedBackend, pid > 0 else { return MempoolReclaim() }
        var result = MempoolReclaim()
        // First the backend locks it died holding: its operation finished
        // or undone (a transfer's record count set), the lock released.
        if repairsDeadLocks.load(ordering: .relaxed) && MempoolSharedBackend.repairEnabled.load(ordering: .relaxed) {
            repairLocks(of: pid, backend)
        } else if backend.isLocked(by: pid) {
            // Tests only: left as it is, the lock stalls the backend.
            return result
        }
        for i in 0..<region.layout.threadRecords {
            let record = region.record(i)
            // The dead pid with the draining bit while reclaiming: no one
            // claims the record, and a reclaim taken over finds it again.
            let draining = pid | MempoolRecord.drainingBit
            let owner = record.ownerPID
            let claimed = owner == draining || (owner == pid && record.beginDraining(of: pid))
            guard claimed else { continue }
            let n = record.count
            if n > 0 {
                // A cached object is in the pool: an owner word naming the
                // dead process (a get or put that died before its commit
                // left it so) is cleared.
                if checked {
                    for k in 0..<n {
                        if let index = unsafe try? objectIndex(of: record.slots[k]) { _ = objectStates.reclaim(index, from: pid) }
                    }
                }
                if unsafe !backend.enqueue(record.slots, count: n, by: processID, .transfer, record: record, recordCount: 0) {
                    backendOverflow(n)
                }
                result.cachedObjects += n
            }
            record.release()
        }
        guard checked else { return result }
        // Held objects go back as a checked put in this process's name:
        // "returning by me" first, then the journaled direct put that clears it.
        let me = ownerPID
        var batch = unsafe [UnsafeMutableRawPointer]()
        var indices = [Int]()
        unsafe batch.reserveCapacity(256)
        indices.reserveCapacity(256)
        func flush() {
            guard !indices.isEmpty else { return }
            unsafe batch.withUnsafeBufferPointer { buffer in
                unsafe sharedDirectPut(backend, buffer.baseAddress!, count: buffer.count, returning: indices)
            }
            result.heldObjects += indices.count
            unsafe batch.removeAll(keepingCapacity: true)
            indices.removeAll(keepingCapacity: true)
        }
        unsafe forEachObject { index, object in
            guard objectStates.takeOverReturn(index, from: pid, by: me) else { return }
            unsafe batch.append(object)
            indices.append(index)
            if indices.count == 256 { flush() }
        }
        flush()
        return result
    }

    /// Per process with a thread record or (checked mode) objects handed
    /// out: its cached objects, its held objects and its records, by pid.
    /// Empty for a private pool.
    public func processUsage() -> [MempoolProcessUsage] {
        guard let region = sharedControl else { return [] }
        var usage = [Int32: MempoolProcessUsage]()
        func entry(_ pid: Int32) -> MempoolProcessUsage {
            usage[pid] ?? MempoolProcessUsage(pid: pid, cachedObjects: 0, heldObjects: checked ? 0 : nil, threadRecords: 0)
        }
        for i in 0..<region.layout.threadRecords {
            let record = region.record(i)
            let pid = record.ownerPID & ~MempoolRecord.drainingBit  // a record being drained is still its dead owner's
            guard pid > 0 else { continue }
            var e = entry(pid)
            e.cachedObjects += record.count
            e.threadRecords += 1
            usage[pid] = e
        }
        if checked {
            for index in 0..<count {
                let pid = objectStates.owner(index)
                guard pid > 0 else { continue }
                var e = entry(pid)
                e.heldObjects! += 1
                usage[pid] = e
            }
        }
        return usage.values.sorted { $0.pid < $1.pid }
    }

    /// For tests: claims a free thread record of this shared pool for
    /// process `pid`, as a thread of that process would, and caches
    /// `objects` in it (taken from the pool, at most `cacheSize`). false
    /// when every record is taken or the objects do not fit.
    package func claimThreadRecordForTesting(process pid: Int32, caching objects: [UnsafeMutableRawPointer]) -> Bool {
        guard let region = sharedControl, unsafe objects.count <= cacheCapacity,
              let record = region.claimRecord(pid: pid, poolID: 0)
        else { return false }
        for unsafe (i, object) in unsafe objects.enumerated() {
            unsafe (record.slots + i).initialize(to: object)
            // Cached objects are in the pool for checked mode.
            if checked, let index = unsafe try? objectIndex(of: object) { _ = objectStates.markReturned(index) }
        }
        record.setCount(unsafe objects.count)
        return true
    }
}
