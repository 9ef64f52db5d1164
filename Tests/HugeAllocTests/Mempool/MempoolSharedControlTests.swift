import Foundation
import Synchronization
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// A 2 MiB-page mapping and a separate anonymous shared mapping for the
/// control state, kept alive by every pool made over them: two pool
/// instances over one of these in one process stand for two processes.
final class SharedPoolFixture: @unchecked Sendable {
    let mapping: MemoryMapping
    let control: UnsafeMutableRawPointer
    let controlLength: Int
    let pages: Int
    /// The physical address of each page the creator is told (nil: the mapping's).
    let creatorPhysical: ((Int) -> PhysicalAddress?)?

    init(
        pages: Int = 2, configuration: MempoolConfiguration, threadRecords: Int,
        creatorPhysical: ((Int) -> PhysicalAddress?)? = nil
    ) throws {
        mapping = try MemoryMapping(length: pages * PageSize.huge2M.bytes, options: MappingOptions(pageSize: .huge2M))
        self.pages = pages
        self.creatorPhysical = creatorPhysical
        controlLength = try MempoolSharedControl.bytesNeeded(
            for: configuration, memoryLength: pages * PageSize.huge2M.bytes, pageSize: .huge2M, threadRecords: threadRecords)
        let raw = mmap(nil, controlLength, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        guard let raw, raw != MAP_FAILED else { throw POSIXError(.ENOMEM) }
        control = raw
    }

    deinit { munmap(control, controlLength) }

    /// The pool's memory; `known: false` gives no physical address at all (an opener without CAP_SYS_ADMIN).
    func memory(creator: Bool) -> MempoolMemory {
        if creator, let creatorPhysical {
            return MempoolMemory(base: mapping.base, length: mapping.length, pageSize: .huge2M) {
                creatorPhysical($0 / PageSize.huge2M.bytes)
            }
        }
        if creator { return MempoolMemory(mapping: mapping) }
        return MempoolMemory(base: mapping.base, length: mapping.length, pageSize: .huge2M) { _ in nil }
    }

    func create(_ configuration: MempoolConfiguration) throws(MempoolError) -> Mempool {
        try Mempool(
            sharedMemory: memory(creator: true), control: control, controlLength: controlLength,
            configuration: configuration, creating: true, releaseMemory: { withExtendedLifetime(self) {} })
    }

    func open(_ configuration: MempoolConfiguration, length: Int? = nil) throws(MempoolError) -> Mempool {
        try Mempool(
            sharedMemory: memory(creator: false), control: control, controlLength: length ?? controlLength,
            configuration: configuration, creating: false, releaseMemory: { withExtendedLifetime(self) {} })
    }
}

/// A pid no process has (above the kernel's PID_MAX_LIMIT of 2^22).
let fakePID: Int32 = 0x7F00_0001

@Suite(.usesHugepagePool, .enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
struct MempoolSharedControlTests {
    let cached = MempoolConfiguration(count: 1000, objectSize: 200, cacheSize: 32, statistics: true)

    @Test(arguments: [MempoolConfiguration.Backend.ring, .stack])
    func twoInstancesAreOnePool(backend: MempoolConfiguration.Backend) throws {
        var c = cached
        c.backend = backend
        let fixture = try SharedPoolFixture(configuration: c, threadRecords: 8)
        let a = try fixture.create(c)
        let b = try fixture.open(c)
        #expect(a.isShared && b.isShared)
        #expect(a.availableCount == 1000 && b.availableCount == 1000)
        // Same objects, same addresses.
        #expect(allObjects(a) == allObjects(b))

        var taken: [UnsafeMutableRawPointer] = []
        for _ in 0..<300 { taken.append(try #require(a.get())) }
        #expect(Set(taken).count == 300)
        #expect(a.inUseCount == 300 && b.inUseCount == 300, "both see one pool")
        for object in taken { b.put(object) }
        #expect(a.availableCount == 1000 && b.availableCount == 1000)

        // Every object exactly once, taken through either instance.
        var all: [UnsafeMutableRawPointer] = []
        for i in 0..<1000 { all.append(try #require((i % 2 == 0 ? a : b).get())) }
        #expect(Set(all).count == 1000)
        #expect(a.get() == nil && b.get() == nil, "the pool is empty for both")
        for (i, object) in all.enumerated() { (i % 3 == 0 ? a : b).put(object) }
        #expect(a.availableCount == 1000)
        // Negative control: a private pool over other memory is not part of it.
        let other = try Mempool(configuration: MempoolConfiguration(count: 10, objectSize: 200, cacheSize: 4))
        #expect(!other.isShared && other.availableCount == 10 && other.processUsage().isEmpty)
    }

    @Test func openingChecksTheConfiguration() throws {
        let fixture = try SharedPoolFixture(configuration: cached, threadRecords: 4)
        #expect(throws: MempoolError.sharedControlNotInitialized(address: UInt(bitPattern: fixture.control))) {
            try fixture.open(cached)
        }
        let a = try fixture.create(cached)
        var other = cached
        other.count = 999
        #expect(throws: MempoolError.sharedControlMismatch(field: "count", created: 1000, requested: 999)) {
            try fixture.open(other)
        }
        other = cached
        other.checked = true
        #expect(throws: MempoolError.sharedControlMismatch(field: "checked", created: 0, requested: 1)) {
            try fixture.open(other)
        }
        other = cached
        other.threading = .singleThread
        #expect(throws: MempoolError.sharedPoolNeedsSharedThreading) { try fixture.open(other) }
        #expect(throws: MempoolError.invalidSharedControl(
            address: UInt(bitPattern: fixture.control), length: 4096, needed: fixture.controlLength)) {
            try fixture.open(cached, length: 4096)
        }
        // A different memory length.
        let shorter = MempoolMemory(base: fixture.mapping.base, length: PageSize.huge2M.bytes, pageSize: .huge2M) { _ in nil }
        #expect(throws: MempoolError.sharedControlMismatch(
            field: "memoryLength", created: 2 * PageSize.huge2M.bytes, requested: PageSize.huge2M.bytes)) {
            try Mempool(
                sharedMemory: shorter, control: fixture.control, controlLength: fixture.controlLength,
                configuration: cached, creating: false, releaseMemory: nil)
        }
        // The same objects at another address: their pointers would mean nothing.
        let elsewhere = try MemoryMapping(length: 2 * PageSize.huge2M.bytes, options: MappingOptions(pageSize: .huge2M))
        #expect(throws: MempoolError.sharedControlMismatch(
            field: "memoryBase", created: Int(bitPattern: UInt(bitPattern: fixture.mapping.base)),
            requested: Int(bitPattern: UInt(bitPattern: elsewhere.base)))) {
            try Mempool(
                sharedMemory: MempoolMemory(mapping: elsewhere), control: fixture.control,
                controlLength: fixture.controlLength, configuration: cached, creating: false, releaseMemory: nil)
        }
        #expect(MempoolError.sharedControlMismatch(field: "count", created: 1, requested: 2).description.contains("count = 1"))
        // Negative control: the right configuration opens, and opening changed nothing.
        let b = try fixture.open(cached)
        #expect(b.availableCount == 1000 && a.availableCount == 1000)
        // Control memory too small to create in.
        #expect(throws: MempoolError.self) {
            try Mempool(
                sharedMemory: fixture.memory(creator: true), control: fixture.control, controlLength: 4096,
                configuration: cached, creating: true, releaseMemory: nil)
        }
        #expect(throws: MempoolError.threadRecordsOutOfRange(requested: -1, maximum: MempoolSharedControl.maximumThreadRecords)) {
            try MempoolSharedControl.bytesNeeded(for: cached, memoryLength: 1 << 21, pageSize: .huge2M, threadRecords: -1)
        }
    }

    @Test func anOpenerPlacesObjectsAsTheCreatorSawThePages() throws {
        // Objects of 1,000,000 bytes: with the two pages physically
        // contiguous (as the creator is told) the third object straddles
        // the page boundary; without, it starts the second page.
        let c = MempoolConfiguration(count: 4, objectSize: 1_000_000, cacheSize: 0)
        let fixture = try SharedPoolFixture(
            configuration: c, threadRecords: 0,
            creatorPhysical: { PhysicalAddress(rawValue: 0x4000_0000 + UInt64($0) * UInt64(PageSize.huge2M.bytes)) })
        let a = try fixture.create(c)
        let b = try fixture.open(c)
        #expect(a.objectAddress(at: 2) == fixture.mapping.base + 2_000_000)
        #expect(b.objectAddress(at: 2) == a.objectAddress(at: 2), "the opener read the creator's contiguity")
        #expect(b.physicalAddress(of: fixture.mapping.base) == nil, "the opener knows no physical address")
        // Negative control: planned from the opener's own (unknown) addresses, the layout differs.
        let own = try Mempool(memory: fixture.memory(creator: false), configuration: c)
        #expect(own.objectAddress(at: 2) == fixture.mapping.base + PageSize.huge2M.bytes)
    }

    @Test func reclaimReturnsADeadProcesssCache() throws {
        let fixture = try SharedPoolFixture(configuration: cached, threadRecords: 4)
        let a = try fixture.create(cached)
        let b = try fixture.open(cached)
        var objects: [UnsafeMutableRawPointer] = []
        for _ in 0..<20 { objects.append(try #require(a.get())) }
        #expect(a.claimThreadRecordForTesting(process: fakePID, caching: objects))
        // The objects are in the fake process's cache: available, but not to us.
        #expect(b.availableCount == 1000)
        let usage = b.processUsage()
        #expect(usage.contains(MempoolProcessUsage(pid: fakePID, cachedObjects: 20, heldObjects: nil, threadRecords: 1)))
        #expect(usage.contains { $0.pid == getpid() && $0.threadRecords == 1 }, "this thread's record of instance a")
        #expect(b.reclaim(process: fakePID + 1) == MempoolReclaim(), "negative control: a process with nothing")
        #expect(b.reclaim(process: fakePID) == MempoolReclaim(cachedObjects: 20, heldObjects: 0))
        #expect(b.reclaim(process: fakePID) == MempoolReclaim(), "a second reclaim finds nothing")
        #expect(!a.processUsage().contains { $0.pid == fakePID })
        // All 1000 objects can be taken again: the 20 are back in the backend.
        a.flushThreadCache()
        var all: [UnsafeMutableRawPointer] = []
        while let o = b.get() { all.append(o) }
        #expect(all.count == 1000 && Set(all).count == 1000)
        for o in all { a.put(o) }
    }

    @Test func checkedModeTagsOwnersAndReclaimsHeldObjects() throws {
        let c = MempoolConfiguration(count: 100, objectSize: 64, cacheSize: 0, checked: true)
        let fixture = try SharedPoolFixture(configuration: c, threadRecords: 2)
        let a = try fixture.create(c)
        let b = try fixture.open(c)
        var held: [UnsafeMutableRawPointer] = []
        for _ in 0..<10 { held.append(try #require(a.get())) }
        #expect(b.processUsage() == [MempoolProcessUsage(pid: getpid(), cachedObjects: 0, heldObjects: 10, threadRecords: 0)])
        // Put back through the other instance: the tag is cleared.
        try b.putChecked(held.removeLast())
        #expect(a.processUsage().first?.heldObjects == 9)
        // Negative control: another pid holds nothing.
        #expect(a.reclaim(process: fakePID) == MempoolReclaim())
        #expect(a.inUseCount == 9)
        // This process stands for the dead one: its 9 held objects come back.
        #expect(b.reclaim(process: getpid()) == MempoolReclaim(cachedObjects: 0, heldObjects: 9))
        #expect(a.inUseCount == 0 && a.processUsage().isEmpty)
        // The reclaimed objects are in the pool: putting one back now is a double free.
        let index = try a.objectIndex(of: held[0])
        #expect(throws: MempoolError.doubleFree(address: UInt(bitPattern: held[0]), objectIndex: index)) {
            try a.putChecked(held[0])
        }
        #expect(a.availableCount == 100)
    }

    @Test func aDoubleFreeIsCaughtAcrossInstances() throws {
        let c = MempoolConfiguration(count: 64, objectSize: 100, cacheSize: 8, checked: true)
        let fixture = try SharedPoolFixture(configuration: c, threadRecords: 4)
        let a = try fixture.create(c)
        let b = try fixture.open(c)
        let object = try #require(b.get())
        try a.putChecked(object)
        let index = try a.objectIndex(of: object)
        #expect(throws: MempoolError.doubleFree(address: UInt(bitPattern: object), objectIndex: index)) {
            try b.putChecked(object)
        }
        #expect(a.availableCount == 64 && b.availableCount == 64, "the second put added nothing")
        // Negative control: a fresh get and one put through the other instance pass.
        let again = try #require(a.get())
        try b.putChecked(again)
        // A bulk put with a double free in it puts nothing back and keeps the owner of the rest.
        let first = try #require(a.get())
        let second = try #require(a.get())
        try b.putChecked(second)
        #expect(throws: MempoolError.self) { try b.putChecked(from: [first, second], count: 2) }
        #expect(b.processUsage().first?.heldObjects == 1)
        try b.putChecked(first)
        #expect(a.inUseCount == 0)
    }

    @Test func aThreadWithoutAFreeRecordWorksUncached() throws {
        let fixture = try SharedPoolFixture(configuration: cached, threadRecords: 1)
        let a = try fixture.create(cached)
        let b = try fixture.open(cached)
        // Every record (one asked for, as many as fit in the rounded-up
        // control memory) goes to another process.
        var claimed = 0
        while a.claimThreadRecordForTesting(process: fakePID, caching: []) { claimed += 1 }
        #expect(claimed >= 1)
        #expect(a.processUsage() == [MempoolProcessUsage(pid: fakePID, cachedObjects: 0, heldObjects: nil, threadRecords: claimed)])
        var taken: [UnsafeMutableRawPointer] = []
        for _ in 0..<100 { taken.append(try #require(a.get())) }
        var bulk = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: 50)
        #expect(b.get(into: &bulk, count: 50))
        #expect(a.inUseCount == 150)
        #expect(a.backendAvailableCount == 850, "uncached: straight from the backend")
        for o in taken { b.put(o) }
        #expect(a.put(from: bulk, count: 50))
        #expect(a.backendAvailableCount == 1000 && a.availableCount == 1000)
        #expect(!a.processUsage().contains { $0.pid == getpid() }, "no record for this process")
        // Once the record is free again, the thread takes it and caches.
        _ = a.reclaim(process: fakePID)
        let o = try #require(a.get())
        #expect(a.backendAvailableCount < 999, "a cache refill took a batch")
        a.put(o)
        a.flushThreadCache()
        #expect(a.backendAvailableCount == 1000 && a.processUsage().isEmpty, "flushing released the record")
    }

    @Test func statisticsAndCountsSumOverEveryRecord() throws {
        let fixture = try SharedPoolFixture(configuration: cached, threadRecords: 8)
        let a = try fixture.create(cached)
        let b = try fixture.open(cached)
        for _ in 0..<5 { a.put(try #require(a.get())) }
        let held = try #require(a.get())
        runOnThreads(2) { _ in
            for _ in 0..<7 { if let o = b.get() { b.put(o) } }
        }
        let expected = MempoolStatistics(gets: 5 + 1 + 14, puts: 5 + 14, getFailures: 0, refills: 3, flushes: 2)
        #expect(a.statistics == b.statistics)
        #expect(a.statistics.gets == expected.gets && a.statistics.puts == expected.puts)
        #expect(a.statistics.refills == expected.refills, "one refill per thread record")
        #expect(a.statistics.flushes == expected.flushes, "the exiting threads flushed their caches")
        // The threads' records were released at their exit; only this thread's is held.
        #expect(a.processUsage() == [MempoolProcessUsage(pid: getpid(), cachedObjects: a.availableCount - a.backendAvailableCount,
                                                         heldObjects: nil, threadRecords: 1)])
        #expect(a.inUseCount == 1 && b.inUseCount == 1)
        a.put(held)
        // Negative control: a private pool's statistics know nothing of these.
        let other = try Mempool(configuration: MempoolConfiguration(count: 10, objectSize: 64, cacheSize: 4, statistics: true))
        #expect(other.statistics == MempoolStatistics())
    }

    @Test func destroyingAnInstanceReleasesThisProcesssRecords() throws {
        let fixture = try SharedPoolFixture(configuration: cached, threadRecords: 4)
        let a = try fixture.create(cached)
        #expect(a.claimThreadRecordForTesting(process: fakePID, caching: []))
        do {
            let b = try fixture.open(cached)
            let o = try #require(b.get())
            b.put(o)
            #expect(a.processUsage().first { $0.pid == getpid() }?.threadRecords == 1)
            #expect(a.backendAvailableCount < 1000)
            _ = consume b
        }
        #expect(a.backendAvailableCount == 1000, "the cache went back when the instance went")
        #expect(!a.processUsage().contains { $0.pid == getpid() })
        #expect(a.processUsage().contains { $0.pid == fakePID }, "another process's record is untouched")
        // This thread's table no longer points at the released record: a new instance claims afresh.
        let c = try fixture.open(cached)
        let o = try #require(c.get())
        c.put(o)
        #expect(a.processUsage().first { $0.pid == getpid() }?.threadRecords == 1)
    }

    @Test func concurrentUseThroughTwoInstances() throws {
        let fixture = try SharedPoolFixture(configuration: cached, threadRecords: 2)
        let a = try fixture.create(cached)
        let b = try fixture.open(cached)
        // Four threads, two records: two of them work uncached at times.
        runOnThreads(4) { t in
            let pool = t % 2 == 0 ? a : b
            var mine: [UnsafeMutableRawPointer] = []
            for round in 0..<2000 {
                if round % 3 != 2, let o = pool.get() { mine.append(o) } else if let o = mine.popLast() { (t < 2 ? a : b).put(o) }
            }
            for o in mine { pool.put(o) }
        }
        #expect(a.availableCount == 1000 && b.availableCount == 1000)
        #expect(a.processUsage().isEmpty, "every thread released its record")
    }

    @Test func anAttachedPacketPoolSharesTheCreatorsBuffers() throws {
        let c = MempoolConfiguration(count: 200, objectSize: PacketBuffer.metadataSize + 128 + 2048, cacheSize: 16)
        let fixture = try SharedPoolFixture(configuration: c, threadRecords: 8)
        let a = try fixture.create(c)
        let b = try fixture.open(c)
        let pa = try PacketPool(mempool: a)
        let marked = try #require(pa.buffer(at: 5))
        marked.userData = 0xABCD
        let pb = try PacketPool(attaching: b)
        #expect(try #require(pb.buffer(at: 5)).userData == 0xABCD, "attaching rewrote no metadata")
        #expect(pa.identity == pb.identity && pa.identity == UInt64(UInt(bitPattern: fixture.mapping.base)))

        // Allocated through one, freed through the other, in bulk and one by one.
        let packets = try #require(pa.allocate(count: 50))
        #expect(packets.allSatisfy { pb.owns($0) })
        pb.free(Array(packets[..<40]))
        for p in packets[40...] { pb.free(p) }
        #expect(pa.availableCount == 200 && pb.availableCount == 200)

        // The general path: a chain and a clone across the two instances.
        let frame = try pa.allocateFrame(length: 5000)
        #expect(frame.segmentCount == 3)
        let copy = try #require(pb.clone(frame))
        pb.free(frame)
        pa.free(copy)
        #expect(pa.availableCount == 200)

        // A buffer of another pool in the chain goes home through the registry.
        let other = try PacketPool(configuration: PacketPoolConfiguration(count: 8, cacheSize: 0))
        let head = try #require(pa.allocate())
        let tail = try #require(other.allocate())
        #expect(pa.chain(head, tail))
        pb.free(head)
        #expect(other.availableCount == 8 && pa.availableCount == 200)
        // Negative control: a non-attaching PacketPool over the same mempool rewrites the metadata.
        _ = try PacketPool(mempool: b)
        #expect(try #require(pa.buffer(at: 5)).userData == 0)
    }
}
