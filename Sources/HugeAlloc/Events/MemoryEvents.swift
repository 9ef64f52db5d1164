import Synchronization

/// A range of DMA-ready memory that joined or left an arena, with the
/// physically contiguous pieces a device mapping needs.
public struct MemoryRegion: Sendable, Hashable {
    /// One physically contiguous piece.
    public struct Piece: Sendable, Hashable {
        /// Bytes from the region's start.
        public var offset: Int
        public var length: Int
        /// Nil when the kernel hid physical addresses.
        public var physicalAddress: PhysicalAddress?
    }

    public var address: UInt
    public var length: Int
    public var pageSize: PageSize
    public var pieces: [Piece]

    public init(address: UInt, length: Int, pageSize: PageSize, pieces: [Piece]) {
        self.address = address
        self.length = length
        self.pageSize = pageSize
        self.pieces = pieces
    }

    /// The memory of a packet pool: its pages up to the last buffer, in
    /// physically contiguous pieces (``Mempool/memoryChunks``).
    public init(pool: PacketPool) {
        self.init(mempool: pool.mempool)
    }

    /// The memory of a mempool, as ``init(pool:)``.
    public init(mempool: Mempool) {
        let base = UInt(bitPattern: unsafe mempool.base)
        let chunks = mempool.memoryChunks
        let pieces = chunks.map { chunk in
            Piece(offset: Int(UInt(bitPattern: unsafe chunk.address) - base), length: chunk.length,
                  physicalAddress: chunk.physicalAddress)
        }
        self.init(address: base, length: pieces.reduce(0) { $0 + $1.length }, pageSize: mempool.pageSize, pieces: pieces)
    }

    /// The physical address of the byte at `address`, nil outside the region or when unknown.
    public func physicalAddress(of address: UInt) -> PhysicalAddress? {
        guard address >= self.address else { return nil }
        let offset = Int(address - self.address)
        for piece in pieces where offset >= piece.offset && offset < piece.offset + piece.length {
            return piece.physicalAddress.map { $0 + (offset - piece.offset) }
        }
        return nil
    }
}

/// What happened to an arena's memory.
public enum MemoryEvent: Sendable, Hashable {
    /// Memory joined the arena: map it for the device.
    case added(MemoryRegion)
    /// Memory is leaving the arena: unmap it; it is still mapped in the
    /// process while the handler runs.
    case removed(MemoryRegion)
}

/// Why an arena change or a handler registration failed.
public enum MemoryArenaError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A handler refused memory (its device could not map it); every
    /// handler told before it was told the memory was removed again.
    case handlerRefused(address: UInt, length: Int, reason: String)
    /// The region overlaps one already in the arena.
    case overlaps(address: UInt, length: Int)

    public var description: String {
        switch self {
        case .handlerRefused(let a, let len, let reason):
            return "a memory event handler refused \(len) bytes at 0x\(String(a, radix: 16)): \(reason); "
                + "handlers already told were told it was removed"
        case .overlaps(let a, let len):
            return "\(len) bytes at 0x\(String(a, radix: 16)) overlap memory already in the arena: add each range once"
        }
    }
}

/// A set of memory regions (the memory of packet pools and mempools) and the
/// handlers that must hear when it grows or shrinks — how SPDK's memory maps
/// (`spdk_mem_map_alloc` with a `notify_cb`) let a driver map every
/// registered buffer with its device and unmap it before it goes.
///
/// A handler registered late is first told of every region already in the
/// arena, in the order they were added. Adding memory tells every handler;
/// if one throws, the handlers told before it are told the memory was
/// removed and the addition fails. Removing memory tells every handler.
/// Cancelling a registration tells that handler every region is removed.
/// Events are delivered one at a time, under a lock: a handler must not add
/// or remove memory, or register handlers, from inside its call.
public final class MemoryArena: Sendable {
    /// The process-wide arena.
    public static let shared = MemoryArena()

    typealias Handler = @Sendable (MemoryEvent) throws -> Void

    struct State {
        var regions: [MemoryRegion] = []
        var handlers: [(id: Int, handler: Handler)] = []
        var nextID = 1
    }

    /// Serializes event delivery; `state` is only touched with it held.
    let delivery = Mutex<State>(State())

    public init() {}

    /// The regions in the arena, in the order they were added.
    public var regions: [MemoryRegion] { delivery.withLock { $0.regions } }

    /// Registers `handler`, telling it at once of every region already in the
    /// arena. If it throws for one, those it was told of are removed again
    /// (for it) and the registration fails.
    public func register(
        _ handler: @escaping @Sendable (MemoryEvent) throws -> Void
    ) throws(MemoryArenaError) -> MemoryEventRegistration {
        let result: Result<Int, MemoryArenaError> = delivery.withLock { state in
            var told: [MemoryRegion] = []
            for region in state.regions {
                do { try handler(.added(region)) } catch {
                    for r in told.reversed() { try? handler(.removed(r)) }
                    return .failure(.handlerRefused(address: region.address, length: region.length, reason: "\(error)"))
                }
                told.append(region)
            }
            let id = state.nextID
            state.nextID += 1
            state.handlers.append((id, handler))
            return .success(id)
        }
        switch result {
        case .success(let id): return MemoryEventRegistration(arena: self, id: id)
        case .failure(let error): throw error
        }
    }

    /// Adds a region and tells every handler; fails, adding nothing, when a
    /// handler refuses or the region overlaps one already present.
    public func add(_ region: MemoryRegion) throws(MemoryArenaError) {
        let failure: MemoryArenaError? = delivery.withLock { state in
            let end = region.address + UInt(region.length)
            if state.regions.contains(where: { $0.address < end && region.address < $0.address + UInt($0.length) }) {
                return .overlaps(address: region.address, length: region.length)
            }
            var told: [Handler] = []
            for entry in state.handlers {
                do { try entry.handler(.added(region)) } catch {
                    for h in told.reversed() { try? h(.removed(region)) }
                    return .handlerRefused(address: region.address, length: region.length, reason: "\(error)")
                }
                told.append(entry.handler)
            }
            state.regions.append(region)
            return nil
        }
        if let failure { throw failure }
    }

    /// Removes a region (matched by address) and tells every handler. Does
    /// nothing when the arena does not hold it.
    public func remove(_ region: MemoryRegion) {
        delivery.withLock { state in
            guard let i = state.regions.firstIndex(where: { $0.address == region.address }) else { return }
            let held = state.regions.remove(at: i)
            for entry in state.handlers { try? entry.handler(.removed(held)) }
        }
    }

    /// Adds a packet pool's memory, and removes it when the pool is destroyed
    /// (handlers hear of the removal while the memory is still mapped).
    public func add(_ pool: PacketPool) throws(MemoryArenaError) {
        let region = MemoryRegion(pool: pool)
        try add(region)
        pool.releaseHooks.withLock { $0.append { [self] in self.remove(region) } }
    }

    func unregister(_ id: Int) {
        delivery.withLock { state in
            guard let i = state.handlers.firstIndex(where: { $0.id == id }) else { return }
            let handler = state.handlers.remove(at: i).handler
            for region in state.regions.reversed() { try? handler(.removed(region)) }
        }
    }
}

/// A handler's registration with a ``MemoryArena``: noncopyable, cancelled
/// exactly once, by ``cancel()`` or when the value is destroyed; the handler
/// is then told that every region still in the arena is removed.
public struct MemoryEventRegistration: ~Copyable, Sendable {
    let arena: MemoryArena
    let id: Int

    deinit { arena.unregister(id) }

    /// Stops events to the handler now (consuming the registration runs its
    /// `deinit`, which unregisters).
    public consuming func cancel() {}
}
