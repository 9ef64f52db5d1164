import Foundation
import HugeAllocTestSupport
import Synchronization
import Testing
@testable import HugeAlloc

/// A stand-in for a device driver: keeps an IOVA table of the memory it was
/// told about, as an IOMMU mapping or SPDK mem map would.
final class RecordingBackend: Sendable {
    let events = Mutex<[MemoryEvent]>([])
    let refuseAbove: Int?
    init(refuseAbove: Int? = nil) { self.refuseAbove = refuseAbove }

    struct Refused: Error {}

    func handle(_ event: MemoryEvent) throws {
        if case .added(let region) = event, let limit = refuseAbove, region.length > limit { throw Refused() }
        events.withLock { $0.append(event) }
    }

    /// The regions this backend has mapped now.
    var mapped: [MemoryRegion] {
        events.withLock { events in
            var result: [MemoryRegion] = []
            for e in events {
                switch e {
                case .added(let r): result.append(r)
                case .removed(let r): result.removeAll { $0 == r }
                }
            }
            return result
        }
    }

    /// The IOVA the backend would use for `address`.
    func translate(_ address: UInt) -> PhysicalAddress? {
        mapped.lazy.compactMap { $0.physicalAddress(of: address) }.first
    }
}

@Suite(.usesHugepagePool) struct MemoryEventTests {
    @Test(.enabled(if: canMakePools, "needs root (physical addresses) and free 2 MiB hugepages"))
    func handlersHearOfPoolMemoryAddedAndRemoved() throws {
        let arena = MemoryArena()
        let early = RecordingBackend()
        let earlyRegistration = try arena.register { try early.handle($0) }

        var first: PacketPool? = try makePacketPool(count: 1000)
        try arena.add(first!)
        let firstRegion = MemoryRegion(pool: first!)
        #expect(arena.regions == [firstRegion])
        #expect(early.events.withLock { $0 } == [.added(firstRegion)])
        #expect(firstRegion.address == UInt(bitPattern: first!.mempool.base))
        #expect(firstRegion.pieces.allSatisfy { $0.physicalAddress != nil })

        // The backend can translate every buffer from what it was told.
        for i in stride(from: 0, to: 1000, by: 37) {
            let b = try #require(first!.buffer(at: i))
            #expect(early.translate(UInt(bitPattern: b.data)) == b.dataPhysicalAddress)
            #expect(early.translate(UInt(bitPattern: b.data))?.rawValue == Kernel.physicalAddress(UInt(bitPattern: b.data)))
        }

        // A handler registered later is told of what is already there.
        let late = RecordingBackend()
        var lateRegistration: MemoryEventRegistration? = try arena.register { try late.handle($0) }
        #expect(late.events.withLock { $0 } == [.added(firstRegion)])

        // A handler that refuses large regions makes the addition fail, and
        // those told before it hear the memory removed again.
        let picky = RecordingBackend(refuseAbove: 4 << 20)
        let pickyRegistration = try arena.register { try picky.handle($0) }
        let big = try makePacketPool(count: 3000)
        #expect(throws: MemoryArenaError.self) { try arena.add(big) }
        #expect(arena.regions == [firstRegion])
        #expect(early.mapped == [firstRegion] && late.mapped == [firstRegion] && picky.mapped == [firstRegion])
        #expect(early.events.withLock { $0.count } == 3, "added, then removed again")
        _ = consume pickyRegistration
        #expect(picky.mapped.isEmpty, "a cancelled handler is told everything is removed")

        #expect(throws: MemoryArenaError.overlaps(address: firstRegion.address, length: firstRegion.length)) {
            try arena.add(firstRegion)
        }

        // Destroying the pool removes its memory, while it is still mapped.
        first = nil
        #expect(arena.regions.isEmpty)
        #expect(early.mapped.isEmpty && late.mapped.isEmpty)
        #expect(early.events.withLock { $0.last } == .removed(firstRegion))

        // After cancelling, nothing more arrives.
        lateRegistration = nil
        let count = late.events.withLock { $0.count }
        try arena.add(big)
        #expect(late.events.withLock { $0.count } == count)
        #expect(early.mapped == [MemoryRegion(pool: big)])
        earlyRegistration.cancel()
        #expect(early.mapped.isEmpty)
        _ = lateRegistration
    }

    @Test func registrationFailsWhenTheHandlerRefusesExistingMemory() throws {
        let arena = MemoryArena()
        let a = MemoryRegion(address: 0x10_0000, length: 4096, pageSize: .base, pieces: [.init(offset: 0, length: 4096, physicalAddress: nil)])
        let b = MemoryRegion(address: 0x20_0000, length: 8 << 20, pageSize: .base, pieces: [])
        try arena.add(a)
        try arena.add(b)
        let picky = RecordingBackend(refuseAbove: 1 << 20)
        #expect(throws: MemoryArenaError.handlerRefused(address: 0x20_0000, length: 8 << 20, reason: "Refused()")) {
            _ = try arena.register { try picky.handle($0) }
        }
        #expect(picky.events.withLock { $0 } == [.added(a), .removed(a)])
        arena.remove(a)
        arena.remove(a)
        #expect(arena.regions == [b])
    }
}
