import CHugeAllocShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One completed request of an ``IOUring``: the caller's tag, the result
/// (bytes transferred, or `-errno`) and the completion flags.
public struct IOUringCompletion: Sendable, Equatable {
    public var userData: UInt64
    /// Bytes transferred, or a negated `errno`.
    public var result: Int32
    public var flags: UInt32

    /// The id of the provided buffer the kernel chose for this request
    /// (`IORING_CQE_F_BUFFER`), nil when it chose none.
    public var bufferID: UInt16? {
        flags & HA_IORING_CQE_F_BUFFER != 0 ? UInt16(truncatingIfNeeded: flags >> HA_IORING_CQE_BUFFER_SHIFT) : nil
    }
}

/// An io_uring instance with packet-pool memory registered for zero-copy
/// I/O: fixed buffers (`IORING_REGISTER_BUFFERS`, for `READ_FIXED` /
/// `WRITE_FIXED`) and provided-buffer rings (`IORING_REGISTER_PBUF_RING`,
/// from which the kernel picks a buffer per read).
///
/// Raw system calls (`io_uring_setup(2)`, `io_uring_register(2)`,
/// `io_uring_enter(2)`) through `CHugeAllocShims`; no liburing. Noncopyable:
/// the rings are unmapped and the fd closed (which unpins every registered
/// page) exactly once, when the value is destroyed. The pools whose memory is
/// registered are kept alive until then.
@safe
public struct IOUring: ~Copyable {
    let ring: UnsafeMutablePointer<ha_uring>
    /// The fixed-buffer regions registered, and the pool they cover.
    public private(set) var fixedBuffers: IOUringFixedBuffers?
    var fixedPool: PacketPool?
    var providedRings: [ProvidedRing] = []

    /// A provided-buffer ring: page-aligned memory the kernel reads buffer
    /// addresses from (owned by a ``MappedRegion``, unmapped when the ring
    /// goes), and the pool the buffers come from. One object per ring, not
    /// per buffer.
    @safe
    final class ProvidedRing {
        let group: UInt16
        let region: MappedRegion
        let entries: Int
        var tail: UInt16 = 0
        let pool: PacketPool

        init(group: UInt16, region: consuming MappedRegion, entries: Int, pool: PacketPool) {
            self.group = group
            self.region = region
            self.entries = entries
            self.pool = pool
        }

        var memory: UnsafeMutableRawPointer { unsafe region.base }
    }

    /// Creates an io_uring with `entries` submission slots (rounded up to a
    /// power of two by the kernel). The corresponding system call is `io_uring_setup(2)`.
    public init(entries: Int = 64) throws(IOUringError) {
        let ring = UnsafeMutablePointer<ha_uring>.allocate(capacity: 1)
        do {
            try unsafe Sys.uringOpen(ring, entries: UInt32(clamping: entries))
        } catch {
            unsafe ring.deallocate()
            throw .systemCall(error)
        }
        unsafe self.ring = ring
    }

    deinit {
        unsafe Sys.uringClose(ring)
        unsafe ring.deallocate()
        // The provided rings' memory is unmapped when `providedRings` goes, after the close.
    }

    /// Submission queue slots.
    public var submissionEntries: Int { Int(unsafe ring.pointee.sq_entries) }
    /// The io_uring file descriptor.
    public var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: unsafe ring.pointee.fd) }

    // MARK: fixed buffers

    /// Registers `pool`'s buffers as fixed buffers: the regions of
    /// ``IOUringFixedBuffers/init(pool:maximumRegionLength:)``, each at most
    /// 1 GiB, at most 16384 of them, pinned by the kernel (counted against
    /// RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK, which is checked
    /// first). The corresponding system call is
    /// `io_uring_register(2)` with `IORING_REGISTER_BUFFERS`.
    public mutating func registerBuffers(
        of pool: PacketPool, maximumRegionLength: Int = IOUringFixedBuffers.maximumRegionLength
    ) throws(IOUringError) {
        guard fixedBuffers == nil else { throw .alreadyRegistered }
        let plan = try IOUringFixedBuffers(pool: pool, maximumRegionLength: maximumRegionLength)
        try plan.checkMemlock()
        let n = plan.regions.count
        let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: n)
        defer { unsafe iovecs.deallocate() }
        for (i, region) in plan.regions.enumerated() {
            unsafe (iovecs + i).initialize(to: iovec(
                iov_base: UnsafeMutableRawPointer(bitPattern: region.address), iov_len: region.length))
        }
        do {
            try unsafe Sys.uringRegister(
                ring, opcode: HA_IORING_REGISTER_BUFFERS, argument: UnsafeRawPointer(iovecs),
                count: UInt32(n), detail: "IORING_REGISTER_BUFFERS, \(n) regions")
        } catch { throw .systemCall(error) }
        fixedBuffers = plan
        fixedPool = pool
    }

    /// Unregisters the fixed buffers (`IORING_UNREGISTER_BUFFERS`), unpinning them.
    public mutating func unregisterBuffers() throws(IOUringError) {
        guard fixedBuffers != nil else { return }
        do {
            try unsafe Sys.uringRegister(ring, opcode: HA_IORING_UNREGISTER_BUFFERS, argument: nil, count: 0,
                                         detail: "IORING_UNREGISTER_BUFFERS")
        } catch { throw .systemCall(error) }
        fixedBuffers = nil
        fixedPool = nil
    }

    /// Queues an `IORING_OP_READ_FIXED` of `length` bytes at `fileOffset` of
    /// `file` into `buffer`'s data start (set the buffer's length from the
    /// completion's result). The buffer must be in the registered pool.
    public func queueReadFixed(
        _ file: FileDescriptor, into buffer: PacketBuffer, length: Int, fileOffset: Int, userData: UInt64
    ) throws(IOUringError) {
        try queueFixed(HA_IORING_OP_READ_FIXED, file, buffer: buffer, length: length, fileOffset: fileOffset, userData: userData)
    }

    /// Queues an `IORING_OP_WRITE_FIXED` of `buffer`'s data (its ``PacketBuffer/length`` bytes).
    public func queueWriteFixed(
        _ file: FileDescriptor, from buffer: PacketBuffer, fileOffset: Int, userData: UInt64
    ) throws(IOUringError) {
        try queueFixed(HA_IORING_OP_WRITE_FIXED, file, buffer: buffer, length: buffer.length, fileOffset: fileOffset, userData: userData)
    }

    func queueFixed(
        _ opcode: UInt8, _ file: FileDescriptor, buffer: PacketBuffer, length: Int, fileOffset: Int, userData: UInt64
    ) throws(IOUringError) {
        // The data's address decides: a clone's data lies in another buffer.
        let address = UInt(bitPattern: unsafe buffer.data)
        guard let plan = fixedBuffers, let region = plan.regionIndex(containing: address) else {
            throw .bufferNotRegistered(address: address)
        }
        let room = buffer.bufferLength - buffer.dataOffset
        guard length >= 0, length <= room else { throw .lengthExceedsBuffer(length: length, room: room) }
        let end = plan.regions[region].address + UInt(plan.regions[region].length)
        guard address + UInt(length) <= end else { throw .bufferNotRegistered(address: address) }
        try Self.checkDirectIO(file, address: address, length: length, fileOffset: fileOffset,
                               bufferOffset: PacketBuffer.metadataSize + buffer.dataOffset)
        guard unsafe Sys.uringQueue(
            ring, opcode: opcode, fd: file.rawValue, address: buffer.data, length: UInt32(length),
            offset: UInt64(fileOffset), buffer: UInt16(region), flags: 0, userData: userData)
        else { throw .submissionQueueFull(entries: submissionEntries) }
    }

    /// For a file opened with `O_DIRECT`, checks the buffer address, the
    /// length and the file offset against the file's direct-I/O alignment,
    /// which the kernel would otherwise answer with a bare `EINVAL` completion.
    static func checkDirectIO(
        _ file: FileDescriptor, address: UInt, length: Int, fileOffset: Int, bufferOffset: Int
    ) throws(IOUringError) {
        let alignment: (memory: Int, offset: Int)?
        do { alignment = try Sys.directIOAlignment(file) } catch { throw .systemCall(error) }
        guard let alignment else { return }
        guard alignment.memory > 0, alignment.offset > 0 else { throw .directIOUnsupported }
        if Int(address % UInt(alignment.memory)) != 0 {
            throw .directIOMisaligned(what: "buffer address", value: Int(address), alignment: alignment.memory,
                                      bufferOffset: bufferOffset)
        }
        if length % alignment.offset != 0 {
            throw .directIOMisaligned(what: "length", value: length, alignment: alignment.offset, bufferOffset: bufferOffset)
        }
        if fileOffset % alignment.offset != 0 {
            throw .directIOMisaligned(what: "file offset", value: fileOffset, alignment: alignment.offset, bufferOffset: bufferOffset)
        }
    }

    // MARK: submission and completion

    /// Submits every queued request and waits until at least `count` have
    /// completed. Returns how many were submitted. The corresponding system
    /// call is `io_uring_enter(2)`.
    @discardableResult
    public func submit(waitingFor count: Int = 0) throws(IOUringError) -> Int {
        do { return try unsafe Sys.uringSubmit(ring, wait: UInt32(clamping: count)) } catch { throw .systemCall(error) }
    }

    /// Takes the next completion, or nil when none is ready.
    public func nextCompletion() -> IOUringCompletion? {
        guard let c = unsafe Sys.uringReap(ring) else { return nil }
        return IOUringCompletion(userData: c.userData, result: c.result, flags: c.flags)
    }

    /// Submits what is queued and returns exactly `count` completions,
    /// waiting in the kernel for those not ready yet.
    public func completions(_ count: Int) throws(IOUringError) -> [IOUringCompletion] {
        var result: [IOUringCompletion] = []
        try submit()
        while result.count < count {
            if let c = nextCompletion() { result.append(c); continue }
            try submit(waitingFor: 1)
        }
        return result
    }

    // MARK: provided buffers

    /// Registers a provided-buffer ring of `entries` slots (a power of two up
    /// to 32768) for buffer group `group`, and provides `buffers` to it: a
    /// read queued with ``queueRead(_:group:length:fileOffset:userData:)``
    /// lands in whichever the kernel picks, named in the completion by its
    /// ``IOUringCompletion/bufferID``, which is the buffer's
    /// ``PacketBuffer/index`` (so the pool may have at most 65536 buffers).
    /// The corresponding system call is `io_uring_register(2)` with
    /// `IORING_REGISTER_PBUF_RING`.
    public mutating func registerProvidedBuffers(
        _ buffers: [PacketBuffer], from pool: PacketPool, group: UInt16, entries: Int
    ) throws(IOUringError) {
        guard entries > 0, entries <= 32768, entries & (entries - 1) == 0 else { throw .invalidRingEntries(requested: entries) }
        guard pool.count <= 65536 else { throw .poolTooLargeForBufferIDs(count: pool.count, maximum: 65536) }
        let length = (entries * HA_IO_URING_BUF_SIZE + Sys.basePageSize - 1) / Sys.basePageSize * Sys.basePageSize
        let mapped: Result<UnsafeMutableRawPointer, SystemCallError> = unsafe Result { () throws(SystemCallError) in
            try unsafe Sys.mmap(length: length, protection: .readWrite, flags: [.private, .anonymous, .populate])
        }
        guard case .success(let memory) = unsafe mapped else {
            if case .failure(let error) = unsafe mapped { throw .systemCall(error) }
            return
        }
        let region = unsafe MappedRegion(base: memory, length: length, fd: -1)
        var registration = ha_uring_buf_reg(
            ring_addr: UInt64(UInt(bitPattern: memory)), ring_entries: UInt32(entries), bgid: group, flags: 0,
            resv: (0, 0, 0))
        do {
            _ = try unsafe withUnsafePointer(to: &registration) { p throws(SystemCallError) in
                try unsafe Sys.uringRegister(ring, opcode: HA_IORING_REGISTER_PBUF_RING, argument: UnsafeRawPointer(p),
                                             count: 1, detail: "IORING_REGISTER_PBUF_RING, group \(group), \(entries) entries")
            }
        } catch {
            _ = consume region
            throw .systemCall(error)
        }
        providedRings.append(ProvidedRing(group: group, region: region, entries: entries, pool: pool))
        try provide(buffers, group: group)
    }

    /// Gives buffers (back) to group `group`'s ring, each from its data start
    /// to the end of its data room. Returns how many fit in the ring.
    @discardableResult
    public mutating func provide(_ buffers: [PacketBuffer], group: UInt16) throws(IOUringError) -> Int {
        guard let r = providedRings.firstIndex(where: { $0.group == group }) else {
            throw .systemCall(SystemCallError(call: "provide", errno: .noSuchFileOrDirectory, detail: "no ring for group \(group)"))
        }
        let ring = providedRings[r]
        var tail = ring.tail
        var given = 0
        for b in buffers where given < ring.entries {
            unsafe ha_uring_buf_ring_add(
                ring.memory, UInt32(ring.entries - 1), UInt32(tail), b.data, UInt32(b.bufferLength - b.dataOffset),
                UInt16(truncatingIfNeeded: b.index))
            tail &+= 1
            given += 1
        }
        unsafe ha_uring_buf_ring_publish(ring.memory, tail)
        ring.tail = tail
        return given
    }

    /// Queues an `IORING_OP_READ` of up to `length` bytes that takes its
    /// buffer from group `group` (`IOSQE_BUFFER_SELECT`).
    public func queueRead(
        _ file: FileDescriptor, group: UInt16, length: Int, fileOffset: Int, userData: UInt64
    ) throws(IOUringError) {
        guard unsafe Sys.uringQueue(
            ring, opcode: HA_IORING_OP_READ, fd: file.rawValue, address: nil, length: UInt32(clamping: length),
            offset: UInt64(fileOffset), buffer: group, flags: HA_IOSQE_BUFFER_SELECT, userData: userData)
        else { throw .submissionQueueFull(entries: submissionEntries) }
    }

    /// The packet buffer a completion's provided buffer id names, with its
    /// length set to the bytes read; nil when the completion used none.
    public func providedBuffer(for completion: IOUringCompletion, group: UInt16) -> PacketBuffer? {
        guard let id = completion.bufferID, let ring = providedRings.first(where: { $0.group == group }),
              let buffer = ring.pool.buffer(at: Int(id))
        else { return nil }
        if completion.result >= 0 { buffer.length = Int(completion.result) }
        return buffer
    }
}

/// How a packet pool's memory is cut into io_uring fixed-buffer regions:
/// whole buffers only (a read never crosses a region), each region at most
/// 1 GiB (the kernel's limit per iovec), at most 16384 regions
/// (`IORING_MAX_REG_BUFFERS`). A pool below 1 GiB is one region.
public struct IOUringFixedBuffers: Sendable {
    /// One iovec: a run of consecutive buffers.
    public struct Region: Sendable, Equatable {
        public var address: UInt
        public var length: Int
        /// Index of the first buffer in it; the buffers of a region are consecutive.
        public var firstBufferIndex: Int
        public var bufferCount: Int
    }

    /// The kernel's limit per registered iovec (`SZ_1G` in io_uring/rsrc.c).
    public static let maximumRegionLength = 1 << 30
    /// The kernel's limit on registered buffers (`IORING_MAX_REG_BUFFERS`).
    public static var maximumRegions: Int { Int(HA_IORING_MAX_REG_BUFFERS) }

    /// The regions, in address order; a request names one by its index.
    public let regions: [Region]

    /// Plans the regions for `pool`, each at most `maximumRegionLength` bytes.
    public init(pool: PacketPool, maximumRegionLength: Int = maximumRegionLength) throws(IOUringError) {
        let limit = min(maximumRegionLength, Self.maximumRegionLength)
        let size = pool.bufferSize
        guard size <= limit else { throw .regionTooLarge(bytes: size, maximum: limit) }
        var regions: [Region] = []
        var start: UInt = 0, end: UInt = 0
        var first = 0, count = 0
        unsafe pool.mempool.forEachObject { index, object in
            let address = UInt(bitPattern: object)
            if count > 0 && address + UInt(size) - start <= UInt(limit) {
                end = address + UInt(size)
                count += 1
                return
            }
            if count > 0 {
                regions.append(Region(address: start, length: Int(end - start), firstBufferIndex: first, bufferCount: count))
            }
            start = address
            end = address + UInt(size)
            first = index
            count = 1
        }
        if count > 0 { regions.append(Region(address: start, length: Int(end - start), firstBufferIndex: first, bufferCount: count)) }
        guard regions.count <= Self.maximumRegions else {
            throw .tooManyRegions(needed: regions.count, maximum: Self.maximumRegions)
        }
        self.regions = regions
    }

    /// The index of the region holding the byte at `address`, or nil.
    public func regionIndex(containing address: UInt) -> Int? {
        var low = 0, high = regions.count - 1
        while low <= high {
            let mid = (low + high) / 2
            let r = regions[mid]
            if address < r.address { high = mid - 1 } else if address >= r.address + UInt(r.length) { low = mid + 1 } else { return mid }
        }
        return nil
    }

    /// The index of the region holding `buffer`, or nil.
    public func regionIndex(of buffer: PacketBuffer) -> Int? {
        regionIndex(containing: UInt(bitPattern: unsafe buffer.metadata))
    }

    /// Bytes the kernel will pin: every base page the regions touch.
    public var pinnedBytes: Int {
        let page = UInt(Sys.basePageSize)
        return regions.reduce(0) { sum, r in
            let first = r.address / page * page
            let last = (r.address + UInt(r.length) + page - 1) / page * page
            return sum + Int(last - first)
        }
    }

    /// Throws when pinning would pass RLIMIT_MEMLOCK (io_uring accounts the
    /// pages against it unless the process has CAP_IPC_LOCK).
    func checkMemlock() throws(IOUringError) {
        if let shortage = MemlockCheck.shortage(needed: pinnedBytes) { throw .memlockLimitTooLow(shortage) }
    }
}
