/// A packet pool's memory described as an AF_XDP UMEM (`struct
/// xdp_umem_reg`): base address, length, chunk size and headroom, checked
/// against the rules the kernel applies in `xdp_umem_reg()`
/// (net/xdp/xdp_umem.c; Documentation/networking/af_xdp.rst):
///
/// - the chunk size is a power of two (aligned mode) from
///   `XDP_UMEM_MIN_CHUNK_SIZE` (2048) to `PAGE_SIZE`;
/// - the base is page-aligned;
/// - the length is a positive whole number of chunks;
/// - the headroom leaves room, after `XDP_PACKET_HEADROOM` (256), for a
///   `struct skb_shared_info` (320 bytes on x86-64) and 128 bytes of data:
///   at most chunk size − 704 (the rule of current kernels, 6.18.y
///   included; older ones only asked for headroom < chunk size − 256).
///
/// With a pool made by ``PacketPoolConfiguration/afXDP(count:chunkSize:cacheSize:)``
/// each buffer is exactly one chunk, so buffer index `i` is UMEM offset
/// `i × chunkSize`, and the 64 metadata bytes plus the packet headroom
/// beyond 256 are the UMEM headroom: the kernel writes a received frame at
/// chunk + headroom + 256, which is the buffer's data room.
public struct AFXDPUMEMLayout: Sendable, Equatable {
    /// The UMEM's first byte (the first buffer's metadata).
    public var base: UInt
    /// Bytes registered: `chunkCount × chunkSize`.
    public var length: Int
    public var chunkSize: Int
    /// `xdp_umem_reg.headroom`: bytes of each chunk the kernel leaves alone
    /// before its own `XDP_PACKET_HEADROOM`.
    public var headroom: Int
    public var chunkCount: Int { length / chunkSize }

    /// A layout with explicit values, validated.
    public init(base: UInt, length: Int, chunkSize: Int, headroom: Int) throws(AFXDPError) {
        try Self.validate(base: base, length: length, chunkSize: chunkSize, headroom: headroom)
        self.base = base
        self.length = length
        self.chunkSize = chunkSize
        self.headroom = headroom
    }

    /// The UMEM layout of `pool`, whose buffers must be whole chunks
    /// (``PacketPoolConfiguration/afXDP(count:chunkSize:cacheSize:)``).
    public init(pool: PacketPool) throws(AFXDPError) {
        let chunk = pool.bufferStride
        guard pool.headroom >= AFXDPLimits.packetHeadroom else {
            throw .packetHeadroomTooSmall(headroom: pool.headroom, minimum: AFXDPLimits.packetHeadroom)
        }
        guard pool.bufferSize == chunk else {
            throw .bufferNotChunk(bufferStride: pool.bufferStride, bufferSize: pool.bufferSize, chunkSize: chunk)
        }
        let base = UInt(bitPattern: unsafe pool.mempool.base)
        // Buffers must tile the UMEM with no gap: buffer i at offset i × chunk.
        guard let first = pool.buffer(at: 0), let last = pool.buffer(at: pool.count - 1),
              UInt(bitPattern: unsafe first.metadata) == base,
              UInt(bitPattern: unsafe last.metadata) - base == UInt((pool.count - 1) * chunk)
        else {
            throw .bufferNotChunk(bufferStride: pool.bufferStride, bufferSize: pool.bufferSize, chunkSize: chunk)
        }
        try self.init(
            base: base, length: pool.count * chunk, chunkSize: chunk,
            headroom: PacketBuffer.metadataSize + pool.headroom - AFXDPLimits.packetHeadroom)
    }

    /// Checks the kernel's `XDP_UMEM_REG` rules for aligned chunks; `pageSize`
    /// is the kernel's `PAGE_SIZE` (the base page size).
    public static func validate(
        base: UInt, length: Int, chunkSize: Int, headroom: Int, pageSize: Int = PageSize.base.bytes
    ) throws(AFXDPError) {
        guard chunkSize >= AFXDPLimits.minimumChunkSize, chunkSize <= pageSize else {
            throw .chunkSizeOutOfRange(chunkSize: chunkSize, minimum: AFXDPLimits.minimumChunkSize, maximum: pageSize)
        }
        guard chunkSize & (chunkSize - 1) == 0 else { throw .chunkSizeNotPowerOfTwo(chunkSize: chunkSize) }
        guard base % UInt(pageSize) == 0 else { throw .baseNotPageAligned(address: base, pageSize: pageSize) }
        guard length > 0, length % chunkSize == 0, base.addingReportingOverflow(UInt(length)).overflow == false else {
            throw .lengthNotWholeChunks(length: length, chunkSize: chunkSize)
        }
        guard headroom >= 0, headroom <= maximumHeadroom(chunkSize: chunkSize) else {
            throw .headroomTooLarge(headroom: headroom, chunkSize: chunkSize)
        }
    }

    /// The largest `xdp_umem_reg.headroom` for a chunk size: chunk size −
    /// `XDP_PACKET_HEADROOM` − `SKB_DATA_ALIGN(sizeof(struct skb_shared_info))`
    /// (320 on x86-64) − 128.
    public static func maximumHeadroom(chunkSize: Int) -> Int {
        chunkSize - AFXDPLimits.packetHeadroom - 320 - 128
    }

    // MARK: buffer ↔ UMEM address

    /// The UMEM address (offset from the base) of the chunk holding `buffer`:
    /// what goes on the fill ring.
    public func address(of buffer: PacketBuffer) -> UInt64 {
        UInt64(UInt(bitPattern: unsafe buffer.metadata) - base)
    }

    /// The buffer index of the chunk holding UMEM address `address` (any
    /// address inside the chunk: the kernel hands back data addresses).
    public func bufferIndex(ofAddress address: UInt64) -> Int? {
        guard address < UInt64(length) else { return nil }
        return Int(address) / chunkSize
    }

    /// The UMEM address of buffer `index`'s chunk.
    public func address(ofBufferIndex index: Int) -> UInt64? {
        guard index >= 0, index < chunkCount else { return nil }
        return UInt64(index * chunkSize)
    }

    /// The buffer whose chunk holds UMEM address `address`.
    public func buffer(atAddress address: UInt64) -> PacketBuffer? {
        guard let index = bufferIndex(ofAddress: address),
              let metadata = unsafe UnsafeMutableRawPointer(bitPattern: base + UInt(index * chunkSize))
        else { return nil }
        return unsafe PacketBuffer(metadata: metadata)
    }

    /// Where the kernel puts a received frame's first byte in a chunk:
    /// headroom + `XDP_PACKET_HEADROOM`.
    public var frameOffset: Int { headroom + AFXDPLimits.packetHeadroom }
}

/// The kernel's fixed AF_XDP numbers that UMEM layouts are planned with.
public enum AFXDPLimits {
    /// `XDP_PACKET_HEADROOM`: bytes the kernel keeps before received data.
    public static let packetHeadroom = 256
    /// `XDP_UMEM_MIN_CHUNK_SIZE`.
    public static let minimumChunkSize = 2048
}

extension PacketPoolConfiguration {
    /// Buffers laid out as AF_XDP UMEM chunks of `chunkSize` bytes (2048 or
    /// 4096): each element is exactly one chunk, chunk-aligned, with the 64
    /// metadata bytes in the UMEM's own headroom and 256 bytes of packet
    /// headroom (`XDP_PACKET_HEADROOM`) before the data the kernel writes.
    public static func afXDP(count: Int, chunkSize: Int = 2048, cacheSize: Int = 256) -> PacketPoolConfiguration {
        let headroom = AFXDPLimits.packetHeadroom
        return PacketPoolConfiguration(
            count: count, headroom: headroom, dataRoom: chunkSize - PacketBuffer.metadataSize - headroom,
            alignment: chunkSize, cacheSize: cacheSize)
    }

    /// AF_XDP chunks whose data also meets `O_DIRECT`'s buffer alignment
    /// (`directIOAlignment`, e.g. 512: what `statx` `STATX_DIOALIGN` reports
    /// as `stx_dio_mem_align`), so frames received by AF_XDP can be written
    /// to disk with io_uring fixed writes and read back into the same
    /// buffers: the headroom is the smallest one of at least
    /// `XDP_PACKET_HEADROOM` that puts the data on that boundary (448 for
    /// 512, data at offset 512 of a 2048-byte chunk, 1536 bytes of data
    /// room). Nil when no such headroom leaves data room in the chunk.
    public static func afXDP(count: Int, chunkSize: Int = 2048, cacheSize: Int = 256, directIOAlignment: Int) -> PacketPoolConfiguration? {
        guard directIOAlignment > 0, directIOAlignment & (directIOAlignment - 1) == 0 else { return nil }
        let minimum = PacketBuffer.metadataSize + AFXDPLimits.packetHeadroom
        let dataOffset = (minimum + directIOAlignment - 1) / directIOAlignment * directIOAlignment
        let dataRoom = chunkSize - dataOffset
        guard dataRoom > 0 else { return nil }
        return PacketPoolConfiguration(
            count: count, headroom: dataOffset - PacketBuffer.metadataSize, dataRoom: dataRoom,
            alignment: chunkSize, cacheSize: cacheSize)
    }
}
