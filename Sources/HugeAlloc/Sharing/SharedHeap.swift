import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A named block of a ``SharedHeap``, found by its name from every attached process.
public struct SharedMemzone: Sendable, Hashable {
    public let name: String
    /// The first byte (the same in every process).
    public let address: UInt
    /// The size asked for.
    public let length: Int
    public let alignment: Int

    /// The first byte, as a pointer.
    public var pointer: UnsafeMutableRawPointer { unsafe UnsafeMutableRawPointer(bitPattern: address)! }
}

/// A shared heap's numbers at one moment.
public struct SharedHeapStatistics: Sendable, Equatable {
    /// Bytes the heap manages (fixed when published).
    public var capacity: Int
    /// Bytes in free blocks, their 64-byte headers included.
    public var freeBytes: Int
    /// The most one allocation (alignment 64) can get now.
    public var largestAllocation: Int
    /// Blocks allocated, memzones included.
    public var blocksInUse: Int
    public var memzones: Int
    /// Times a process repaired the heap after another died holding its lock.
    public var repairs: Int
    /// Blocks freed because their process died (checked mode).
    public var reclaimedBlocks: Int
}

/// What one process holds in a shared heap.
public struct SharedHeapProcessUsage: Sendable, Equatable {
    public var pid: Int32
    public var blocks: Int
    /// Bytes of those blocks, headers included.
    public var bytes: Int
}

/// A DMA heap published under a name: its memory and every byte of its
/// allocator state — block headers, free lists, memzone table, the lock —
/// live in one hugetlb memfd mapped at the same address in every attached
/// process, so a block allocated in one process can be used and freed in
/// any other, and a memzone reserved in one is found by name in all.
///
/// Unlike ``DMAHeap`` it does not grow: its capacity is chosen when it is
/// published. One robust process-shared mutex (`pthread_mutex_t` with
/// `PTHREAD_PROCESS_SHARED` and `PTHREAD_MUTEX_ROBUST`, as DPDK's per-heap
/// lock) serialises every call; a process that dies holding it leaves the
/// next holder to rebuild the free lists from the block headers. In checked
/// mode each block records the pid that allocated it, and the blocks of a
/// process that died go back (``reclaim()``, or at once through the pidfd
/// watcher every shared object runs); without it they stay allocated.
/// See docs/multi-process.md, "The shared heap".
@safe
public final class SharedHeap: @unchecked Sendable {
    let core: SharedObjectCore
    let handle: SharedHeapHandle
    /// Bytes reclaimed per dead process, for ``reclaim()``'s report.
    private let reclaimedBytes = Mutex<[Int32: Int]>([:])

    /// The first byte the heap manages (the same in every process).
    public let base: UnsafeMutableRawPointer
    /// Bytes the heap manages: fixed when published.
    public let capacity: Int
    /// The published name.
    public var name: String { core.name }
    /// Whether blocks record their process and are reclaimed when it dies.
    public var isChecked: Bool { handle.checked }
    /// The page size beneath: a block within one page is physically contiguous.
    public var pageSize: PageSize { core.segment.pageSize }

    /// The largest alignment ``allocate(bytes:alignment:zeroed:)`` takes: the page size.
    public var maximumAlignment: Int { pageSize.bytes }
    /// The longest memzone name, in UTF-8 bytes.
    public static let maximumMemzoneNameLength = SharedHeapHandle.memzoneNameCapacity - 1
    /// The most memzones one heap holds.
    public static let maximumMemzones = SharedHeapHandle.memzoneSlots

    /// Tests: the step at which this process kills itself inside a heap call.
    package static let stopAt = Atomic<Int>(SharedHeapStep.none.rawValue)
    /// Tests: whether a process that finds the lock's holder dead repairs the heap.
    package static let repairsEnabled = Atomic<Bool>(true)

    static func stopIfAsked(_ step: SharedHeapStep) {
        if stopAt.load(ordering: .relaxed) == step.rawValue { Sys.killSelf() }
    }

    private init(core: SharedObjectCore, handle: SharedHeapHandle) {
        self.core = core
        self.handle = handle
        unsafe base = handle.data
        capacity = handle.dataLength
    }

    deinit { core.close() }

    private static func handle(of core: SharedObjectCore) -> SharedHeapHandle {
        let h = core.header
        return unsafe SharedHeapHandle(control: core.segment.control, data: core.segment.base + h.dataOffset, dataLength: h.dataLength)
    }

    /// Publishes a heap of `bytes` (rounded up to whole pages) as `name`.
    /// `checked`: every block records its process, and a dead process's
    /// blocks are freed.
    public static func publish(
        name: String, bytes: Int, checked: Bool = false, mapping: MappingOptions = MappingOptions(),
        options: SharingOptions = SharingOptions()
    ) throws(SharingError) -> SharedHeap {
        guard bytes >= SharedHeapHandle.minimumBlock, bytes <= 1 << 46 else {
            throw .mapping(.invalidLength(requested: bytes, pageSize: mapping.pageSize, reason: "a shared heap needs 128 bytes to 64 TiB"))
        }
        guard Sys.robustMutexBytes <= SharedHeapHandle.headerBytes else {
            throw .notShareable(reason: "pthread_mutex_t takes \(Sys.robustMutexBytes) bytes, the heap's layout keeps \(SharedHeapHandle.headerBytes)")
        }
        let rounded = (bytes + mapping.pageSize.bytes - 1) / mapping.pageSize.bytes * mapping.pageSize.bytes
        var facts = SharedSegmentFacts()
        facts.count = rounded
        facts.checked = checked
        let core = try SharedObjectCore.publish(kind: .heap, name: name, options: options, mapping: mapping,
                                                controlLength: SharedHeapHandle.controlBytes, dataLength: rounded, facts: facts)
        let handle = Self.handle(of: core)
        do { try handle.initialize(checked: checked) } catch {
            core.close()
            throw .systemCall(error)
        }
        let heap = SharedHeap(core: core, handle: handle)
        try heap.start()
        return heap
    }

    /// Attaches to the heap published as `name`.
    public static func attach(name: String, options: SharingOptions = SharingOptions()) throws(SharingError) -> SharedHeap {
        let core = try SharedObjectCore.attach(kind: .heap, name: name, options: options)
        let handle = Self.handle(of: core)
        guard core.header.controlLength >= SharedHeapHandle.controlBytes, handle.isInitialized,
              handle.recordedDataLength == handle.dataLength else {
            core.close()
            throw .incompatible(name: name, reason: "heap control area of \(core.header.controlLength) bytes, not initialised as this version does")
        }
        let heap = SharedHeap(core: core, handle: handle)
        try heap.start()
        return heap
    }

    /// Starts the core's thread; a dead process's blocks go back in checked mode.
    private func start() throws(SharingError) {
        try core.start { [weak self] pid in
            guard let self, self.isChecked else { return (0, 0) }
            return (0, self.reclaimBlocks(of: pid))
        }
    }

    private func reclaimBlocks(of pid: Int32) -> Int {
        guard let r = try? Self.locked(handle, name: name, { () throws(SharedHeapError) in handle.reclaim(pid: pid) }) else { return 0 }
        reclaimedBytes.withLock { $0[pid, default: 0] += r.bytes }
        return r.blocks
    }

    // MARK: the lock

    /// Runs `body` holding the heap's lock. When the previous holder died
    /// (`EOWNERDEAD`) the heap is repaired from its block headers first and
    /// the lock marked consistent; with repairs disabled (tests) the lock is
    /// given up unrepaired, which leaves it unusable (`ENOTRECOVERABLE`) for
    /// every process.
    static func locked<T>(_ handle: SharedHeapHandle, name: String, _ body: () throws(SharedHeapError) -> T) throws(SharedHeapError) -> T {
        let ownerDied: Bool
        do { ownerDied = try unsafe Sys.robustMutexLock(handle.mutex) } catch {
            if error.errno.rawValue == ENOTRECOVERABLE { throw .lockOwnerDied(name: name, pid: handle.holder) }
            throw .systemCall(error)
        }
        if ownerDied {
            let dead = handle.holder
            guard repairsEnabled.load(ordering: .relaxed) else {
                unsafe Sys.robustMutexUnlock(handle.mutex)
                throw .lockOwnerDied(name: name, pid: dead)
            }
            if let broken = handle.repair() {
                unsafe Sys.robustMutexUnlock(handle.mutex)
                throw .corrupted(name: name, offset: broken.offset, reason: broken.reason)
            }
            do { try unsafe Sys.robustMutexConsistent(handle.mutex) } catch {
                unsafe Sys.robustMutexUnlock(handle.mutex)
                throw .systemCall(error)
            }
            handle.noteRepair()
        }
        handle.setHolder(Sys.processID)
        stopIfAsked(.locked)
        defer {
            handle.setHolder(0)
            unsafe Sys.robustMutexUnlock(handle.mutex)
        }
        return try body()
    }

    private func locked<T>(_ body: () throws(SharedHeapError) -> T) throws(SharedHeapError) -> T {
        try Self.locked(handle, name: name, body)
    }

    /// Takes and releases the lock: repairs the heap if its last holder died.
    public func check() throws(SharedHeapError) { try locked { () throws(SharedHeapError) in } }

    // MARK: blocks

    private func outOfMemory(_ bytes: Int, _ alignment: Int) -> SharedHeapError {
        .outOfMemory(name: name, requested: bytes, alignment: alignment, largestFreeBlock: handle.largestFree,
                     freeBytes: handle.freeBytes, capacity: capacity)
    }

    private func validate(bytes: Int, alignment: Int) throws(SharedHeapError) -> (bytes: Int, alignment: Int) {
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= maximumAlignment else {
            throw .badAlignment(requested: alignment, maximum: maximumAlignment)
        }
        guard bytes > 0, bytes <= capacity else { throw .invalidSize(requested: bytes, capacity: capacity) }
        return ((bytes + SharedHeapHandle.granule - 1) & ~(SharedHeapHandle.granule - 1), max(alignment, SharedHeapHandle.granule))
    }

    /// `bytes` of DMA memory whose first byte is a multiple of `alignment`
    /// (a power of two up to the page size; at least 64), from any
    /// attached process; zero-filled when `zeroed`. First fit over
    /// segregated free lists, under the heap's lock.
    public func allocate(bytes: Int, alignment: Int = 64, zeroed: Bool = false) throws(SharedHeapError) -> UnsafeMutableRawPointer {
        let (rounded, aligned) = try validate(bytes: bytes, alignment: alignment)
        let owner = Sys.processID
        let block = try locked { () throws(SharedHeapError) -> Int in
            guard let b = handle.allocate(bytes: rounded, alignment: aligned, state: .allocated, owner: owner, requested: bytes) else {
                throw outOfMemory(bytes, alignment)
            }
            return b
        }
        let pointer = unsafe base + block + SharedHeapHandle.headerBytes
        if zeroed { unsafe pointer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes) }
        return unsafe pointer
    }

    /// Frees a block allocated by any attached process.
    public func free(_ pointer: UnsafeMutableRawPointer) throws(SharedHeapError) {
        let address = UInt(bitPattern: pointer)
        let start = UInt(bitPattern: unsafe base)
        let header = UInt(SharedHeapHandle.headerBytes)
        guard address >= start + header, address < start + UInt(capacity), (address - start) % header == 0 else {
            throw .foreignPointer(name: name, address: address)
        }
        let o = Int(address - start - header)
        try locked { () throws(SharedHeapError) in
            guard handle.tagIsValid(o) else { throw .foreignPointer(name: name, address: address) }
            switch handle.state(o) {
            case .free: throw .doubleFree(name: name, address: address)
            case .allocated where handle.isBlock(o): handle.free(o)
            default: throw .foreignPointer(name: name, address: address)
            }
        }
    }

    /// The physical address of a byte of the heap, from this process's
    /// read of `/proc/self/pagemap`; nil outside it or when hidden. A
    /// block within one page is physically contiguous; one that crosses
    /// pages only when the pages happen to be.
    public func physicalAddress(of pointer: UnsafeRawPointer) -> PhysicalAddress? {
        let offset = unsafe pointer - UnsafeRawPointer(base)
        guard offset >= 0, offset < capacity else { return nil }
        return core.segment.translation?.physicalAddress(atOffset: core.header.dataOffset + offset)
    }

    // MARK: memzones

    private func zone(_ r: SharedHeapHandle.MemzoneRecord) -> SharedMemzone {
        SharedMemzone(name: r.name, address: UInt(bitPattern: unsafe base) + UInt(r.block + SharedHeapHandle.headerBytes),
                      length: r.bytes, alignment: r.alignment)
    }

    /// Reserves a zero-filled block of `bytes` under `name`, found by
    /// ``lookupMemzone(name:)`` from every attached process until
    /// ``freeMemzone(name:)``. Memzones belong to the heap, not to a
    /// process: they outlive the process that reserved them.
    public func reserveMemzone(name zoneName: String, bytes: Int, alignment: Int = 64) throws(SharedHeapError) -> SharedMemzone {
        guard !zoneName.isEmpty, zoneName.utf8.count <= Self.maximumMemzoneNameLength else {
            throw .invalidMemzoneName(zoneName, maximumLength: Self.maximumMemzoneNameLength)
        }
        let (rounded, aligned) = try validate(bytes: bytes, alignment: alignment)
        return try locked { () throws(SharedHeapError) -> SharedMemzone in
            if let existing = handle.memzones.first(where: { $0.name == zoneName }) {
                let z = zone(existing)
                throw .memzoneExists(name: zoneName, address: z.address, bytes: z.length)
            }
            guard let slot = handle.freeMemzoneSlot else { throw .memzoneTableFull(maximum: Self.maximumMemzones) }
            guard let b = handle.allocate(bytes: rounded, alignment: aligned, state: .memzone, owner: 0, requested: bytes) else {
                throw outOfMemory(bytes, alignment)
            }
            unsafe (base + b + SharedHeapHandle.headerBytes).initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
            handle.recordMemzone(slot: slot, name: zoneName, block: b, bytes: bytes, alignment: aligned)
            return zone(SharedHeapHandle.MemzoneRecord(slot: slot, name: zoneName, block: b, bytes: bytes, alignment: aligned))
        }
    }

    /// The memzone named `name`, reserved by any attached process; nil when none is.
    public func lookupMemzone(name zoneName: String) throws(SharedHeapError) -> SharedMemzone? {
        try locked { () throws(SharedHeapError) -> SharedMemzone? in handle.memzones.first { $0.name == zoneName }.map(zone) }
    }

    /// Every memzone.
    public func memzones() throws(SharedHeapError) -> [SharedMemzone] {
        try locked { () throws(SharedHeapError) -> [SharedMemzone] in handle.memzones.map(zone) }
    }

    /// Frees the memzone named `name`; its name is free again.
    public func freeMemzone(name zoneName: String) throws(SharedHeapError) {
        try locked { () throws(SharedHeapError) in
            guard let r = handle.memzones.first(where: { $0.name == zoneName }) else { throw .memzoneNotFound(name: zoneName) }
            handle.removeMemzone(slot: r.slot)
            if handle.state(r.block) == .memzone { handle.free(r.block) }
        }
    }

    // MARK: state

    /// Bytes in free blocks now (their headers included), read without the lock.
    public var freeBytes: Int { handle.freeBytes }

    /// The heap's numbers, read under its lock.
    public func statistics() throws(SharedHeapError) -> SharedHeapStatistics {
        try locked { () throws(SharedHeapError) -> SharedHeapStatistics in
            SharedHeapStatistics(capacity: capacity, freeBytes: handle.freeBytes,
                                 largestAllocation: max(0, handle.largestFree - SharedHeapHandle.headerBytes),
                                 blocksInUse: handle.blocksInUse, memzones: handle.memzones.count, repairs: handle.repairs,
                                 reclaimedBlocks: handle.reclaimedBlocks)
        }
    }

    /// Blocks (memzones aside) per process that allocated them.
    public func processUsage() throws(SharedHeapError) -> [SharedHeapProcessUsage] {
        try Self.usage(handle, name: name)
    }

    static func usage(_ handle: SharedHeapHandle, name: String) throws(SharedHeapError) -> [SharedHeapProcessUsage] {
        try locked(handle, name: name) { () throws(SharedHeapError) -> [SharedHeapProcessUsage] in
            var byPID: [Int32: SharedHeapProcessUsage] = [:]
            for b in handle.blocks() where b.state == .allocated {
                byPID[b.owner, default: SharedHeapProcessUsage(pid: b.owner, blocks: 0, bytes: 0)].blocks += 1
                byPID[b.owner]!.bytes += b.size
            }
            return byPID.values.sorted { $0.pid < $1.pid }
        }
    }

    /// Tests: the first broken invariant of the heap's state, or nil.
    package func invariantViolation() throws(SharedHeapError) -> String? {
        try locked { () throws(SharedHeapError) -> String? in handle.invariantViolation() }
    }

    /// For `inspect-memory pools`: capacity, free bytes and what each process holds.
    static func observe(_ core: SharedObjectCore) -> (capacity: Int, free: Int, usage: [SharedHeapProcessUsage]?) {
        let handle = Self.handle(of: core)
        guard handle.isInitialized else { return (handle.dataLength, 0, nil) }
        return (handle.dataLength, handle.freeBytes, try? usage(handle, name: core.name))
    }

    /// Reclaims every attached process that died and was not reclaimed yet
    /// (in checked mode, freeing its blocks), and reports what this process
    /// recovered since the last call, the watcher's reclaims included:
    /// ``SharedReclaim/heldObjects`` counts blocks, ``SharedReclaim/heldBytes`` their bytes.
    public func reclaim() -> [SharedReclaim] {
        core.reclaimNow().map { r in
            var r = r
            r.heldBytes = reclaimedBytes.withLock { $0.removeValue(forKey: r.pid) } ?? 0
            return r
        }
    }

    /// The attached processes.
    public var participants: [SharedParticipant] { core.participants }

    /// Blocks reclaimed from dead processes since the heap was published, by every process.
    public var reclaimedTotals: (blocks: Int, processes: Int) {
        let r = core.header.reclaimed
        return (r.held, r.processes)
    }

    /// Stops sharing from this process (its socket, and the rendezvous when
    /// it was the last); the memory stays mapped here until this object is released.
    public func detach() { core.close() }
}
