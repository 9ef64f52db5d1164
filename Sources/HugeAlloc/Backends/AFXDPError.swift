/// Why a packet pool cannot be an AF_XDP UMEM, or an AF_XDP call failed:
/// the kernel's rule that was broken, the numbers, and the fix.
public enum AFXDPError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A system call failed (`socket`, `setsockopt`, `getsockopt`, `mmap`, `bind`).
    case systemCall(SystemCallError)
    /// The chunk size is not a power of two (required in aligned mode).
    case chunkSizeNotPowerOfTwo(chunkSize: Int)
    /// The chunk size is outside `XDP_UMEM_MIN_CHUNK_SIZE`...`PAGE_SIZE`.
    case chunkSizeOutOfRange(chunkSize: Int, minimum: Int, maximum: Int)
    /// The UMEM does not start on a page boundary.
    case baseNotPageAligned(address: UInt, pageSize: Int)
    /// The UMEM length is zero or not a whole number of chunks.
    case lengthNotWholeChunks(length: Int, chunkSize: Int)
    /// The UMEM headroom leaves no room for `XDP_PACKET_HEADROOM` and data.
    case headroomTooLarge(headroom: Int, chunkSize: Int)
    /// The pool's packet headroom is below the kernel's `XDP_PACKET_HEADROOM`.
    case packetHeadroomTooSmall(headroom: Int, minimum: Int)
    /// The pool's buffers are not laid out one per chunk.
    case bufferNotChunk(bufferStride: Int, bufferSize: Int, chunkSize: Int)
    /// A ring size that is not a power of two.
    case ringSizeNotPowerOfTwo(entries: Int)
    /// A UMEM address that lies outside the UMEM.
    case addressOutsideUMEM(address: UInt64, length: Int)
    /// A buffer handed to an ``AFXDPSocket`` is not one of its pool's
    /// buffers (its metadata is not a chunk start of the UMEM).
    case bufferNotInUMEM(address: UInt, base: UInt, length: Int)
    /// A buffer handed to the kernel (fill or TX ring) that it already holds.
    case bufferAlreadyWithKernel(index: Int)
    /// A buffer whose data cannot go in one TX descriptor: more than one
    /// segment, an indirect clone, empty, or data beyond its buffer.
    case frameNotSendable(index: Int, dataOffset: Int, length: Int, room: Int, segments: Int)
    /// `bind` was asked for neither an RX nor a TX ring.
    case noReceiveOrTransmitRing
    /// `transmit` on a socket bound without a TX ring (or not bound).
    case noTransmitRing
    /// The kernel refused a call for want of a capability: `socket(AF_XDP)`
    /// needs CAP_NET_RAW; loading and attaching the XDP program (`bpf(2)`)
    /// needs CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN).
    case missingCapability(call: String, capabilities: [String], underlying: SystemCallError)

    /// The error for a failed AF_XDP system call: a refusal for want of
    /// privilege (`EPERM`, `EACCES`) names the capability; anything else is
    /// ``systemCall(_:)``.
    public init(_ error: SystemCallError) {
        let capabilities: [String]
        switch error.call {
        case "socket": capabilities = ["CAP_NET_RAW"]
        case "bpf": capabilities = ["CAP_BPF", "CAP_NET_ADMIN"]
        default: capabilities = []
        }
        guard error.errno == .notPermitted || error.errno == .permissionDenied, !capabilities.isEmpty else {
            self = .systemCall(error)
            return
        }
        self = .missingCapability(call: error.call, capabilities: capabilities, underlying: error)
    }

    public var description: String {
        switch self {
        case .systemCall(let error):
            return "AF_XDP: \(error)"
        case .chunkSizeNotPowerOfTwo(let c):
            return "AF_XDP chunk size \(c) is not a power of two, which aligned mode requires: use 2048 or 4096"
        case .chunkSizeOutOfRange(let c, let lo, let hi):
            return "AF_XDP chunk size \(c) is outside \(lo)...\(hi) (XDP_UMEM_MIN_CHUNK_SIZE...PAGE_SIZE): use 2048 or 4096"
        case .baseNotPageAligned(let a, let p):
            return "AF_XDP UMEM at 0x\(String(a, radix: 16)) is not aligned to the \(p)-byte page size: map the pool's memory with mmap"
        case .lengthNotWholeChunks(let len, let c):
            return "AF_XDP UMEM length \(len) is not a positive multiple of the chunk size \(c)"
        case .headroomTooLarge(let h, let c):
            return "AF_XDP UMEM headroom \(h) is more than the kernel allows for \(c)-byte chunks (\(AFXDPUMEMLayout.maximumHeadroom(chunkSize: c)): "
                + "chunk size minus XDP_PACKET_HEADROOM, skb_shared_info and 128 bytes of data); use a smaller packet headroom or 4096-byte chunks"
        case .packetHeadroomTooSmall(let h, let minimum):
            return "the packet pool's headroom \(h) is below XDP_PACKET_HEADROOM (\(minimum)), which the kernel keeps before received data: "
                + "create the pool with PacketPoolConfiguration.afXDP(count:chunkSize:)"
        case .bufferNotChunk(let stride, let size, let c):
            return "the packet pool's buffers (\(size) bytes every \(stride)) are not one per \(c)-byte chunk: "
                + "create the pool with PacketPoolConfiguration.afXDP(count:chunkSize:)"
        case .ringSizeNotPowerOfTwo(let n):
            return "AF_XDP ring size \(n) is not a power of two: use 512, 1024, 2048 or 4096"
        case .addressOutsideUMEM(let a, let len):
            return "UMEM address 0x\(String(a, radix: 16)) is outside the \(len)-byte UMEM"
        case .bufferNotInUMEM(let address, let base, let length):
            return "buffer 0x\(String(address, radix: 16)) is not one of the AF_XDP socket's UMEM buffers "
                + "(0x\(String(base, radix: 16)), \(length) bytes): allocate it from the socket's pool"
        case .bufferAlreadyWithKernel(let index):
            return "buffer \(index) is already the kernel's (on the fill or TX ring, or not yet back from it): "
                + "hand a buffer over once, and again only after receive or takeCompleted/freeCompleted returned it"
        case .frameNotSendable(let index, let offset, let length, let room, let segments):
            return "buffer \(index) cannot be sent in one AF_XDP TX descriptor (data offset \(offset), length \(length), "
                + "buffer room \(room), \(segments) segment(s)): send one direct segment with 1...room − offset bytes; "
                + "copy a chain or a clone into one buffer first"
        case .noReceiveOrTransmitRing:
            return "AF_XDP bind needs an RX or a TX ring: give receiveRingEntries or transmitRingEntries a power of two"
        case .noTransmitRing:
            return "the AF_XDP socket has no TX ring: bind it with transmitRingEntries > 0 before transmitting"
        case .missingCapability(let call, let capabilities, let underlying):
            let names = capabilities.joined(separator: " and ")
            let setcap = capabilities.map { $0.lowercased() }.joined(separator: ",")
            return "AF_XDP: \(call) was refused (\(underlying.errno), errno \(underlying.errno.rawValue)): it needs \(names). "
                + "Run as root, grant the binary the capabilities (`setcap \(setcap)+ep BINARY`), "
                + "or add them to the service (AmbientCapabilities=\(capabilities.joined(separator: " ")) for systemd)"
        }
    }
}
