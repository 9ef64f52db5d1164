import Synchronization

/// How a ``PacketPool`` is built.
public struct PacketPoolConfiguration: Sendable {
    /// How many buffers; at most `UInt32.max`.
    public var count: Int
    /// Bytes reserved before the data of a freshly allocated buffer, for
    /// headers prepended later (DPDK's `RTE_PKTMBUF_HEADROOM` is 128; AF_XDP
    /// needs at least 256, `XDP_PACKET_HEADROOM`).
    public var headroom: Int
    /// Bytes of data one buffer holds; larger frames are chained segments.
    public var dataRoom: Int
    /// Alignment of each buffer's metadata block (and so of the element): a
    /// power of two up to the page size. An AF_XDP UMEM wants the chunk size.
    public var alignment: Int
    /// Buffers each thread keeps for itself (0: no cache); see
    /// ``MempoolConfiguration/cacheSize``.
    public var cacheSize: Int
    /// The mempool's shared backend.
    public var backend: MempoolConfiguration.Backend
    /// Memory channels to spread buffer starts over (nil: packed); see
    /// ``MempoolConfiguration/memoryChannels``.
    public var memoryChannels: Int?
    /// Checked mode: ``PacketPool/freeChecked(_:)`` refuses a double free, a
    /// foreign buffer or a reference count that would go below zero with a
    /// typed error; the unchecked ``PacketPool/free(_:)-(PacketBuffer)``
    /// stops the process on a double free instead of corrupting the pool
    /// (the mempool's checked mode, with its cost on every put).
    public var checked: Bool

    public init(
        count: Int, headroom: Int = 128, dataRoom: Int = 2048, alignment: Int = 64,
        cacheSize: Int = 256, backend: MempoolConfiguration.Backend = .ring, memoryChannels: Int? = nil,
        checked: Bool = false
    ) {
        self.count = count
        self.headroom = headroom
        self.dataRoom = dataRoom
        self.alignment = alignment
        self.cacheSize = cacheSize
        self.backend = backend
        self.memoryChannels = memoryChannels
        self.checked = checked
    }

    /// Bytes per pool element: metadata, headroom and data room.
    public var bufferSize: Int { PacketBuffer.metadataSize + headroom + dataRoom }
}

/// A pool of packet buffers on a ``Mempool``: each buffer has a 64-byte
/// metadata block (data offset and length, segment chain, reference count,
/// physical address, index), a headroom and a data room, in one element of
/// DMA-ready memory.
///
/// Buffers are ``PacketBuffer`` handles (one pointer each); allocation and
/// freeing go through the mempool's per-thread caches in bulk, resetting the
/// metadata as DPDK's `rte_pktmbuf_alloc_bulk` does. A buffer's physical
/// address is read at creation into its metadata, so it costs one load.
///
/// Frames larger than one data room are chains of segments
/// (``allocateFrame(length:)``); ``clone(_:)`` shares a packet's data
/// without copying through indirect buffers that hold a reference on it.
@safe
public final class PacketPool: @unchecked Sendable {
    /// The mempool the buffers are carved from.
    public let mempool: Mempool
    /// Headroom of a freshly allocated buffer.
    public let headroom: Int
    /// Data bytes one buffer holds.
    public let dataRoom: Int
    /// The metadata word a fresh buffer gets at offset 24: data offset =
    /// headroom, length 0, one segment, no flags.
    @usableFromInline let resetWord: UInt64
    /// What every buffer's metadata names as its pool: the mempool's base
    /// address, the same in every process that maps a shared pool (at the
    /// same address) and different for every pool of one process.
    @usableFromInline let identity: UInt64
    /// Functions run when the pool is destroyed (memory-event hooks).
    let releaseHooks = Mutex<[@Sendable () -> Void]>([])

    /// Creates a pool of `configuration.count` buffers in new hugepage memory
    /// the pool owns (see ``Mempool/init(configuration:mapping:)``: `mmap(2)`
    /// with `MAP_HUGETLB`, prefaulted in parallel by
    /// ``MappingOptions/prefaultThreads`` threads, physical addresses from
    /// `/proc/self/pagemap`), then writes every buffer's metadata.
    public convenience init(
        configuration: PacketPoolConfiguration, mapping: MappingOptions = MappingOptions()
    ) throws(PacketPoolError) {
        let c = configuration
        try Self.validate(c)
        let mempool: Mempool
        do {
            mempool = try Mempool(
                configuration: MempoolConfiguration(
                    count: c.count, objectSize: c.bufferSize, alignment: c.alignment, cacheSize: c.cacheSize,
                    backend: c.backend, checked: c.checked, memoryChannels: c.memoryChannels),
                mapping: mapping)
        } catch { throw .mempool(error) }
        try self.init(mempool: mempool, headroom: c.headroom, dataRoom: c.dataRoom)
    }

    /// Makes packet buffers of an existing mempool's objects, which must be
    /// at least 64 + `headroom` + `dataRoom` bytes, all in the pool (none
    /// handed out), and are not used through the mempool directly afterwards.
    public convenience init(mempool: Mempool, headroom: Int = 128, dataRoom: Int = 2048) throws(PacketPoolError) {
        try self.init(mempool: mempool, headroom: headroom, dataRoom: dataRoom, writingMetadata: true)
    }

    /// Packet buffers of a shared mempool another ``PacketPool`` (possibly
    /// in another process, over the same memory at the same address) made
    /// already: the buffers' metadata is used as that pool wrote it,
    /// nothing is rewritten. `headroom` and `dataRoom` must be the creator's.
    package convenience init(attaching mempool: Mempool, headroom: Int = 128, dataRoom: Int = 2048) throws(PacketPoolError) {
        try self.init(mempool: mempool, headroom: headroom, dataRoom: dataRoom, writingMetadata: false)
    }

    init(mempool: Mempool, headroom: Int, dataRoom: Int, writingMetadata: Bool) throws(PacketPoolError) {
        try Self.validate(PacketPoolConfiguration(count: mempool.count, headroom: headroom, dataRoom: dataRoom))
        let needed = PacketBuffer.metadataSize + headroom + dataRoom
        guard mempool.objectSize >= needed else { throw .objectTooSmall(objectSize: mempool.objectSize, needed: needed) }
        self.mempool = mempool
        self.headroom = headroom
        self.dataRoom = dataRoom
        resetWord = UInt64(headroom) | (1 << 32)
        identity = UInt64(UInt(bitPattern: unsafe mempool.base))
        if writingMetadata { initializeMetadata() }
        PacketPoolRegistry.register(self)
    }

    deinit {
        PacketPoolRegistry.unregister(self)
        for hook in releaseHooks.withLock({ $0 }) { hook() }
    }

    static func validate(_ c: PacketPoolConfiguration) throws(PacketPoolError) {
        guard c.headroom >= 0, c.dataRoom > 0 else { throw .invalidSize(headroom: c.headroom, dataRoom: c.dataRoom) }
        guard c.headroom + c.dataRoom <= Int(UInt16.max) else {
            throw .bufferTooLarge(bytes: c.headroom + c.dataRoom, maximum: Int(UInt16.max))
        }
        guard c.count <= Int(UInt32.max) else { throw .tooManyBuffers(requested: c.count, maximum: Int(UInt32.max)) }
    }
}

/// The packet pools of this process by identity (their mempool's base), for
/// the general free path, which finds a segment's pool from its metadata.
/// Two pools of one identity are two instances of one shared pool: either
/// serves.
@safe
enum PacketPoolRegistry {
    /// Per identity, the addresses of its live pools (unretained: a pool
    /// leaves in its `deinit`).
    static let pools = Mutex<[UInt64: [UInt]]>([:])

    static func register(_ pool: PacketPool) {
        let address = UInt(bitPattern: unsafe Unmanaged.passUnretained(pool).toOpaque())
        pools.withLock { $0[pool.identity, default: []].append(address) }
    }

    static func unregister(_ pool: PacketPool) {
        let address = UInt(bitPattern: unsafe Unmanaged.passUnretained(pool).toOpaque())
        pools.withLock { pools in
            pools[pool.identity]?.removeAll { $0 == address }
            if pools[pool.identity]?.isEmpty == true { pools[pool.identity] = nil }
        }
    }

    /// The live pool whose buffers name `identity`.
    static func pool(identity: UInt64) -> PacketPool {
        guard let address = pools.withLock({ $0[identity]?.last }), let raw = unsafe UnsafeRawPointer(bitPattern: address) else {
            fatalError("packet buffer names pool 0x\(String(identity, radix: 16)), which no live PacketPool of this process has")
        }
        return unsafe Unmanaged<PacketPool>.fromOpaque(raw).takeUnretainedValue()
    }
}
