import CHugeAllocShims
import SystemPackage

/// io_uring and AF_XDP system calls for the I/O backend exports
/// (`Backends/`). The ring layouts live in `CHugeAllocShims/backends.c`,
/// which fails as the C library does (-1 and `errno`); these wrappers turn
/// that into ``SystemCallError`` and retry `EINTR` in ``retryingInterrupts(_:detail:_:)``.
extension Sys {
    // MARK: - io_uring

    /// Creates an io_uring instance and maps its rings.
    /// The corresponding system call is `io_uring_setup(2)`, then `mmap(2)`.
    static func uringOpen(_ ring: UnsafeMutablePointer<ha_uring>, entries: UInt32) throws(SystemCallError) {
        _ = try retryingInterrupts("io_uring_setup", detail: "\(entries) entries") {
            unsafe ha_uring_open(ring, entries)
        }
    }

    /// Unmaps the rings and closes the instance (which unregisters its buffers).
    static func uringClose(_ ring: UnsafeMutablePointer<ha_uring>) {
        unsafe ha_uring_close(ring)
    }

    /// The corresponding system call is `io_uring_register(2)`.
    @discardableResult
    static func uringRegister(
        _ ring: UnsafeMutablePointer<ha_uring>, opcode: UInt32, argument: UnsafeRawPointer?, count: UInt32,
        detail: String
    ) throws(SystemCallError) -> Int32 {
        try retryingInterrupts("io_uring_register", detail: detail) {
            unsafe ha_uring_register(ring, opcode, argument, count)
        }
    }

    /// Writes one submission queue entry; false when the ring is full.
    static func uringQueue(
        _ ring: UnsafeMutablePointer<ha_uring>, opcode: UInt8, fd: Int32, address: UnsafeMutableRawPointer?,
        length: UInt32, offset: UInt64, buffer: UInt16, flags: UInt8, userData: UInt64
    ) -> Bool {
        unsafe ha_uring_queue_rw(ring, opcode, fd, address, length, offset, buffer, flags, userData) == 0
    }

    /// Submits the queued entries and waits for `wait` completions.
    /// The corresponding system call is `io_uring_enter(2)`.
    static func uringSubmit(_ ring: UnsafeMutablePointer<ha_uring>, wait: UInt32) throws(SystemCallError) -> Int {
        Int(try retryingInterrupts("io_uring_enter", detail: "wait \(wait)") { unsafe ha_uring_submit(ring, wait) })
    }

    /// Takes one completion queue entry, if any.
    static func uringReap(_ ring: UnsafeMutablePointer<ha_uring>) -> (userData: UInt64, result: Int32, flags: UInt32)? {
        var userData: UInt64 = 0, result: Int32 = 0, flags: UInt32 = 0
        guard unsafe ha_uring_reap(ring, &userData, &result, &flags) == 1 else { return nil }
        return (userData, result, flags)
    }

    // MARK: - AF_XDP

    /// The corresponding C call is `socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0)`.
    static func xdpSocket() throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingInterrupts("socket", detail: "AF_XDP, SOCK_RAW") { ha_xsk_socket() })
    }

    /// The corresponding C call is `setsockopt(SOL_XDP, XDP_UMEM_REG)`.
    static func xdpRegisterUMEM(
        _ fd: FileDescriptor, base: UnsafeMutableRawPointer, length: Int, chunkSize: Int, headroom: Int, flags: UInt32
    ) throws(SystemCallError) {
        _ = try retryingInterrupts(
            "setsockopt", detail: "SOL_XDP, XDP_UMEM_REG, len \(length), chunk_size \(chunkSize), headroom \(headroom)"
        ) {
            unsafe ha_xsk_register_umem(fd.rawValue, base, UInt64(length), UInt32(chunkSize), UInt32(headroom), flags)
        }
    }

    /// Sizes a ring (`setsockopt(SOL_XDP, XDP_UMEM_FILL_RING` and the
    /// others), reads its offsets (`getsockopt(XDP_MMAP_OFFSETS)`) and maps it
    /// (`mmap(2)` at the ring's page offset).
    static func xdpMapRing(
        _ fd: FileDescriptor, kind: ha_xsk_ring_kind, entries: UInt32, into ring: UnsafeMutablePointer<ha_xsk_ring>
    ) throws(SystemCallError) {
        _ = try retryingInterrupts("setsockopt/getsockopt/mmap", detail: "SOL_XDP ring \(kind.rawValue), \(entries) entries") {
            unsafe ha_xsk_map_ring(fd.rawValue, kind, entries, ring)
        }
    }

    /// The corresponding C function is `munmap(2)`.
    static func xdpUnmapRing(_ ring: UnsafeMutablePointer<ha_xsk_ring>) {
        unsafe ha_xsk_unmap_ring(ring)
    }

    /// The corresponding C call is `bind(2)` with a `struct sockaddr_xdp`.
    static func xdpBind(_ fd: FileDescriptor, interfaceIndex: UInt32, queue: UInt32, flags: UInt16) throws(SystemCallError) {
        _ = try retryingInterrupts("bind", detail: "AF_XDP ifindex \(interfaceIndex) queue \(queue)") {
            ha_xsk_bind(fd.rawValue, interfaceIndex, queue, flags)
        }
    }

    /// Asks the kernel to send what is on an AF_XDP socket's TX ring.
    /// Returns false when the kernel is busy and wants another kick later
    /// (`EAGAIN`: its per-call budget ran out or the completion ring is full;
    /// `EBUSY`, `ENOBUFS`, `ENETDOWN`), as libxdp's users treat them.
    /// The corresponding C call is `sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0)`.
    static func xdpKickTransmit(_ fd: FileDescriptor) throws(SystemCallError) -> Bool {
        // Busy is the common answer in copy mode (EAGAIN once a kick used
        // its budget of 32 frames): decided on the errno before any error
        // value (and its strings) is made, so a busy kick costs no allocation.
        while true {
            if ha_xsk_kick_transmit(fd.rawValue) == 0 { return true }
            let code = Sys.lastErrno
            switch code {
            case .interrupted: continue
            case .resourceTemporarilyUnavailable, .resourceBusy, .noBufferSpace, .networkDown: return false
            default: throw SystemCallError(call: "sendto", errno: code, detail: "AF_XDP TX kick, fd \(fd.rawValue)")
            }
        }
    }

    // MARK: - XDP redirect program (bpf(2))

    /// An XSKMAP. The corresponding system call is `bpf(BPF_MAP_CREATE)`.
    static func xskMapCreate(entries: UInt32) throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingInterrupts("bpf", detail: "BPF_MAP_CREATE XSKMAP \(entries)") {
            ha_xsk_map_create(entries)
        })
    }

    /// The corresponding system call is `bpf(BPF_MAP_UPDATE_ELEM)`.
    static func xskMapSet(_ map: FileDescriptor, key: UInt32, socket: FileDescriptor) throws(SystemCallError) {
        _ = try retryingInterrupts("bpf", detail: "BPF_MAP_UPDATE_ELEM XSKMAP[\(key)]") {
            ha_xsk_map_set(map.rawValue, key, socket.rawValue)
        }
    }

    /// Loads the redirect-to-XSKMAP program. The corresponding system call
    /// is `bpf(BPF_PROG_LOAD)`; a refusal carries the verifier's log.
    static func xdpRedirectProgram(map: FileDescriptor) throws(SystemCallError) -> FileDescriptor {
        var log = [CChar](repeating: 0, count: 4096)
        let fd = unsafe ha_xdp_redirect_program(map.rawValue, &log, UInt32(log.count))
        if fd >= 0 { return FileDescriptor(rawValue: fd) }
        let code = lastErrno
        let text = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        throw SystemCallError(call: "bpf", errno: code, detail: "BPF_PROG_LOAD XDP" + (text.isEmpty ? "" : ": " + text))
    }

    /// The corresponding system call is `bpf(BPF_LINK_CREATE)` with `BPF_XDP`.
    static func xdpAttach(program: FileDescriptor, interfaceIndex: UInt32, genericMode: Bool) throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingInterrupts("bpf", detail: "BPF_LINK_CREATE XDP ifindex \(interfaceIndex)") {
            ha_xdp_attach(program.rawValue, interfaceIndex, genericMode ? 1 : 0)
        })
    }

    /// Sends one raw Ethernet frame. The corresponding C call is
    /// `sendto(2)` on a `socket(AF_PACKET, SOCK_RAW)`.
    static func packetSend(interfaceIndex: UInt32, frame: [UInt8]) throws(SystemCallError) -> Int {
        try retryingInterrupts("sendto", detail: "AF_PACKET ifindex \(interfaceIndex)") {
            unsafe frame.withUnsafeBytes { unsafe ha_packet_send(interfaceIndex, $0.baseAddress, $0.count) }
        }
    }

    // MARK: - O_DIRECT

    /// The direct-I/O alignment of `fd` (buffer address; file offset and
    /// length), or nil when the file was not opened with `O_DIRECT`. The
    /// corresponding C calls are `fcntl(F_GETFL)` and `statx(2)` with
    /// `STATX_DIOALIGN`.
    static func directIOAlignment(_ fd: FileDescriptor) throws(SystemCallError) -> (memory: Int, offset: Int)? {
        var memory: UInt32 = 0, offset: UInt32 = 0
        let found = try retryingInterrupts("statx", detail: "STATX_DIOALIGN, fd \(fd.rawValue)") {
            unsafe ha_direct_io_alignment(fd.rawValue, &memory, &offset)
        }
        return found == 1 ? (Int(memory), Int(offset)) : nil
    }
}
