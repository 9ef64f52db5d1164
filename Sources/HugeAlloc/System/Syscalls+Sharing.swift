import CHugeAllocShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Calls for sharing memory between processes: `SOCK_SEQPACKET` Unix
/// sockets carrying descriptors (`SCM_RIGHTS`), the peer's credentials
/// (`SO_PEERCRED`), process descriptors (`pidfd_open(2)`) and `poll(2)`.
/// The sharing layer calls nothing else for these.
extension Sys {
    /// Who is at the other end of a connected Unix socket.
    package struct PeerCredentials: Sendable, Equatable {
        package var pid: Int32
        package var uid: UInt32
        package var gid: UInt32
    }

    /// A new `SOCK_SEQPACKET` Unix socket (message boundaries kept).
    /// The corresponding C function is `socket(2)`.
    static func seqpacketSocket() throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingInterrupts("socket", detail: "AF_UNIX, SOCK_SEQPACKET") { ha_share_socket() })
    }

    /// Binds `fd` to `path` and listens. The corresponding C functions are `bind(2)` and `listen(2)`.
    static func listen(_ fd: FileDescriptor, at path: String, backlog: Int32 = 64) throws(SystemCallError) {
        _ = try retryingInterrupts("bind", detail: path) { unsafe ha_share_listen(fd.rawValue, path, backlog) }
    }

    /// Connects `fd` to the socket at `path`. The corresponding C function is `connect(2)`.
    static func connect(_ fd: FileDescriptor, to path: String) throws(SystemCallError) {
        _ = try retryingInterrupts("connect", detail: path) { unsafe ha_share_connect(fd.rawValue, path) }
    }

    /// Accepts a connection. The corresponding C function is `accept4(2)`.
    static func accept(_ fd: FileDescriptor) throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingInterrupts("accept4") { ha_share_accept(fd.rawValue) })
    }

    /// Sends one message with descriptors attached (`SCM_RIGHTS`).
    /// The corresponding C function is `sendmsg(2)`.
    static func send(_ fd: FileDescriptor, _ bytes: [UInt8], descriptors: [Int32] = []) throws(SystemCallError) {
        let sent = try retryingInterrupts("sendmsg", detail: "\(bytes.count) bytes, \(descriptors.count) descriptors") {
            unsafe bytes.withUnsafeBytes { b in
                unsafe descriptors.withUnsafeBufferPointer { d in
                    unsafe ha_share_send(fd.rawValue, b.baseAddress, b.count, d.baseAddress, Int32(d.count))
                }
            }
        }
        if sent != bytes.count { throw SystemCallError(call: "sendmsg", errno: .messageTooLong, detail: "sent \(sent) of \(bytes.count) bytes") }
    }

    /// Receives one message and the descriptors sent with it (close-on-exec);
    /// an empty message at the end of the stream. The corresponding C
    /// function is `recvmsg(2)`.
    static func receive(_ fd: FileDescriptor, capacity: Int) throws(SystemCallError) -> (bytes: [UInt8], descriptors: [Int32]) {
        var bytes = [UInt8](repeating: 0, count: capacity)
        var fds = [Int32](repeating: -1, count: Int(HA_SHARE_MAX_FDS))
        var count: Int32 = 0
        let received = try retryingInterrupts("recvmsg") {
            unsafe bytes.withUnsafeMutableBytes { b in
                unsafe fds.withUnsafeMutableBufferPointer { d in
                    unsafe ha_share_receive(fd.rawValue, b.baseAddress, b.count, d.baseAddress, &count)
                }
            }
        }
        return (Array(bytes[..<received]), Array(fds[..<Int(count)]))
    }

    /// The connected peer's process and user. The corresponding C function
    /// is `getsockopt(2)` with `SO_PEERCRED`.
    static func peerCredentials(_ fd: FileDescriptor) throws(SystemCallError) -> PeerCredentials {
        var c = PeerCredentials(pid: 0, uid: 0, gid: 0)
        _ = try retryingInterrupts("getsockopt", detail: "SO_PEERCRED") { unsafe ha_share_peer(fd.rawValue, &c.pid, &c.uid, &c.gid) }
        return c
    }

    /// Send and receive time-outs on a socket. The corresponding C function
    /// is `setsockopt(2)` with `SO_RCVTIMEO` and `SO_SNDTIMEO`.
    static func setTimeouts(_ fd: FileDescriptor, milliseconds: Int32) throws(SystemCallError) {
        _ = try retryingInterrupts("setsockopt", detail: "SO_RCVTIMEO") { ha_share_timeouts(fd.rawValue, milliseconds) }
    }

    /// A descriptor that becomes readable when `pid` exits.
    /// The corresponding C function is `pidfd_open(2)`.
    static func pidfdOpen(_ pid: Int32) throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingInterrupts("pidfd_open", detail: "pid \(pid)") { ha_pidfd_open(pid) })
    }

    // MARK: robust process-shared mutexes

    /// Bytes a `pthread_mutex_t` takes.
    static var robustMutexBytes: Int { ha_robust_mutex_size() }

    /// Makes a mutex at `mutex` that processes share and that survives its
    /// holder's death. The corresponding C function is `pthread_mutex_init(3)`
    /// with `PTHREAD_PROCESS_SHARED` and `PTHREAD_MUTEX_ROBUST`.
    static func robustMutexInitialize(_ mutex: UnsafeMutableRawPointer) throws(SystemCallError) {
        _ = try retryingInterrupts("pthread_mutex_init", detail: "robust, process-shared") { unsafe ha_robust_mutex_init(mutex) }
    }

    /// Takes the mutex; true when its previous holder died holding it
    /// (`EOWNERDEAD`): the caller holds it then, and repairs what it
    /// guards before ``robustMutexConsistent(_:)``. The corresponding C
    /// function is `pthread_mutex_lock(3)`.
    static func robustMutexLock(_ mutex: UnsafeMutableRawPointer) throws(SystemCallError) -> Bool {
        try retryingInterrupts("pthread_mutex_lock") { unsafe ha_robust_mutex_lock(mutex) } == 1
    }

    /// Marks a mutex taken from a dead holder usable again.
    /// The corresponding C function is `pthread_mutex_consistent(3)`.
    static func robustMutexConsistent(_ mutex: UnsafeMutableRawPointer) throws(SystemCallError) {
        _ = try retryingInterrupts("pthread_mutex_consistent") { unsafe ha_robust_mutex_consistent(mutex) }
    }

    /// The corresponding C function is `pthread_mutex_unlock(3)`.
    static func robustMutexUnlock(_ mutex: UnsafeMutableRawPointer) {
        _ = try? retryingInterrupts("pthread_mutex_unlock") { unsafe ha_robust_mutex_unlock(mutex) }
    }

    /// Which of `fds` are readable (or hung up) within `milliseconds`
    /// (-1: wait). The corresponding C function is `poll(2)`.
    static func pollReadable(_ fds: [FileDescriptor], milliseconds: Int32) throws(SystemCallError) -> [Bool] {
        var entries = fds.map { pollfd(fd: $0.rawValue, events: Int16(POLLIN), revents: 0) }
        _ = try retryingInterrupts("poll") { unsafe Glibc.poll(&entries, nfds_t(entries.count), milliseconds) }
        return entries.map { $0.revents != 0 }
    }

    /// Whether a process with this id exists (`kill(pid, 0)`; a process of
    /// another user exists too).
    package static func processExists(_ pid: Int32) -> Bool {
        pid > 0 && (Glibc.kill(pid, 0) == 0 || lastErrno == .notPermitted)
    }

    /// Ends this process at once with SIGKILL, as a crash would: no exit
    /// handler runs, no lock is released. For tests that stop a process
    /// inside an operation. The corresponding C function is `kill(2)`.
    package static func killSelf() -> Never {
        _ = Glibc.kill(Glibc.getpid(), SIGKILL)
        while true { _ = Glibc.pause() }
    }

    /// The calling process's id. The corresponding C function is `getpid(2)`.
    package static var processID: Int32 { Glibc.getpid() }

    /// The effective user id. The corresponding C function is `geteuid(2)`.
    package static var effectiveUserID: UInt32 { Glibc.geteuid() }

    /// Creates a directory with `mode` (the umask applies, so the mode is
    /// set again with `chmod(2)`); an existing one is fine. The
    /// corresponding C functions are `mkdir(2)` and `chmod(2)`.
    static func makeDirectory(_ path: String, mode: UInt32) throws(SystemCallError) {
        if unsafe Glibc.mkdir(path, mode_t(mode)) != 0 {
            let code = lastErrno
            if code != .fileExists { throw SystemCallError(call: "mkdir", errno: code, detail: path) }
            return
        }
        try changeMode(path, mode: mode)
    }

    /// The corresponding C function is `chmod(2)`.
    static func changeMode(_ path: String, mode: UInt32) throws(SystemCallError) {
        _ = try retryingInterrupts("chmod", detail: path) { unsafe Glibc.chmod(path, mode_t(mode)) }
    }

    /// The corresponding C function is `chown(2)`.
    static func changeOwner(_ path: String, uid: UInt32?, gid: UInt32?) throws(SystemCallError) {
        _ = try retryingInterrupts("chown", detail: path) {
            unsafe Glibc.chown(path, uid ?? UInt32.max, gid ?? UInt32.max)
        }
    }

    /// Writes a whole small file atomically: a temporary name in the same
    /// directory, then `rename(2)` over `path`.
    static func writeFileAtomically(_ path: String, _ text: String, mode: UInt32) throws(SystemCallError) {
        let temporary = path + ".\(processID).tmp"
        let fd = FileDescriptor(rawValue: try retryingInterrupts("open", detail: temporary) {
            unsafe Glibc.open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode_t(mode))
        })
        do {
            _ = try fd.writeAll(Array(text.utf8))
        } catch {
            close(fd)
            _ = unsafe Glibc.unlink(temporary)
            throw SystemCallError(call: "write", errno: error as? Errno ?? .ioError, detail: temporary)
        }
        close(fd)
        do {
            try changeMode(temporary, mode: mode)
            _ = try retryingInterrupts("rename", detail: path) { unsafe Glibc.rename(temporary, path) }
        } catch {
            _ = unsafe Glibc.unlink(temporary)
            throw error
        }
    }

    /// Maps `length` bytes of `fd` shared at exactly `address`, failing
    /// with `EEXIST` when anything occupies the range
    /// (`MAP_FIXED_NOREPLACE`) — or replacing a reservation of the
    /// caller's (`MAP_FIXED`) when `replacing` is set. Populated.
    /// The corresponding C function is `mmap(2)`.
    static func mapShared(_ fd: FileDescriptor, length: Int, at address: UInt, replacing: Bool) throws(SystemCallError) -> UnsafeMutableRawPointer {
        let flags: MapFlags = [.shared, .populate, replacing ? .fixed : .fixedNoReplace]
        let result = try unsafe mmap(length: length, protection: .readWrite, flags: flags, fd: fd, at: UnsafeMutableRawPointer(bitPattern: address))
        if UInt(bitPattern: result) != address {
            // Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat it as a hint.
            try? unsafe munmap(result, length: length)
            throw SystemCallError(call: "mmap", errno: .fileExists, detail: "at \(String(address, radix: 16))")
        }
        return unsafe result
    }

    /// Reserves `length` bytes of address space at `address` (or where the
    /// kernel chooses, for nil): `PROT_NONE`, no memory behind it,
    /// `MAP_FIXED_NOREPLACE`. The corresponding C function is `mmap(2)`.
    static func reserveAddressRange(length: Int, at address: UInt?) throws(SystemCallError) -> UnsafeMutableRawPointer {
        var flags: MapFlags = [.private, .anonymous, .noReserve]
        if address != nil { flags.insert(.fixedNoReplace) }
        let result = try unsafe mmap(length: length, protection: .none, flags: flags, at: UnsafeMutableRawPointer(bitPattern: address ?? 0))
        if let address, UInt(bitPattern: result) != address {
            try? unsafe munmap(result, length: length)
            throw SystemCallError(call: "mmap", errno: .fileExists, detail: "at \(String(address, radix: 16))")
        }
        return unsafe result
    }

    /// Turns `[address, address + length)`, a range of the caller's own,
    /// back into a bare reservation: `PROT_NONE`, no memory, in place
    /// (`MAP_FIXED` replaces whatever the caller had mapped there in one
    /// step, so no other thread's mapping can slip into a gap). The
    /// corresponding C function is `mmap(2)`.
    static func restoreReservation(at address: UInt, length: Int) throws(SystemCallError) {
        let flags: MapFlags = [.private, .anonymous, .noReserve, .fixed]
        _ = try unsafe mmap(length: length, protection: .none, flags: flags, at: UnsafeMutableRawPointer(bitPattern: address))
    }

    /// Unmaps a range the sharing layer mapped. The corresponding C function is `munmap(2)`.
    static func unmapShared(_ address: UnsafeMutableRawPointer, length: Int) {
        try? unsafe munmap(address, length: length)
    }

    /// The size of an open file. The corresponding C function is `fstat(2)`.
    static func fileSize(_ fd: FileDescriptor) throws(SystemCallError) -> Int {
        try fileStatus(of: fd).size
    }

    /// Creates a hugetlb memfd of `length` bytes of `pageBytes` pages.
    /// The corresponding C functions are `memfd_create(2)` and `ftruncate(2)`.
    static func hugetlbMemfd(name: String, length: Int, pageBytes: Int) throws(SystemCallError) -> FileDescriptor {
        let fd = try memfdCreate(name: name, hugePageSize: pageBytes > basePageSize ? pageBytes : nil)
        do { try ftruncate(fd, length: length) } catch {
            close(fd)
            throw error
        }
        return fd
    }
}

extension Sys {
    /// A thread the sharing layer runs (its listener and watcher).
    package struct ThreadHandle: @unchecked Sendable {
        let thread: pthread_t
    }

    private final class ThreadBody {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts `body` on a new thread. The corresponding C function is `pthread_create(3)`.
    static func startThread(_ body: @escaping @Sendable () -> Void) throws(SystemCallError) -> ThreadHandle {
        let box = unsafe Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var thread = pthread_t()
        let rc = unsafe pthread_create(&thread, nil, { argument in
            let body = unsafe Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue()
            body.body()
            return nil
        }, box)
        if rc != 0 {
            unsafe Unmanaged<ThreadBody>.fromOpaque(box).release()
            throw SystemCallError(call: "pthread_create", errno: Errno(rawValue: rc))
        }
        return ThreadHandle(thread: thread)
    }

    /// Waits for a thread to end. The corresponding C function is
    /// `pthread_join(3)`. Called on that thread itself (the last reference
    /// to what it serves dropped there, in the middle of its work), it
    /// detaches it instead (`pthread_detach(3)`): a thread cannot join
    /// itself, and one neither joined nor detached is never freed.
    static func joinThread(_ handle: ThreadHandle) {
        if pthread_equal(handle.thread, pthread_self()) != 0 {
            _ = pthread_detach(handle.thread)
        } else {
            _ = pthread_join(handle.thread, nil)
        }
    }

    /// A pipe whose read end wakes a `poll(2)` when written (close-on-exec,
    /// non-blocking). The corresponding C function is `pipe2(2)`.
    static func wakePipe() throws(SystemCallError) -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        _ = try retryingInterrupts("pipe2") { unsafe ha_share_pipe(&fds) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    /// Writes one byte to a wake pipe. The corresponding C function is `write(2)`.
    static func wake(_ fd: FileDescriptor) {
        var byte: UInt8 = 1
        _ = unsafe Glibc.write(fd.rawValue, &byte, 1)
    }
}

extension Sys {
    /// Runs `handler` when the process exits through `exit(3)`.
    /// The corresponding C function is `atexit(3)`.
    static func onExit(_ handler: @escaping @convention(c) () -> Void) {
        _ = Glibc.atexit(handler)
    }
}

extension Sys {
    /// Whether ThreadSanitizer's runtime is in the process (`__tsan_init`
    /// found by `dlsym(3)`): it stops the process when `mmap(2)` returns an
    /// address outside the ranges it shadows, so fixed placements far from
    /// them must not be tried.
    static let runsUnderThreadSanitizer: Bool = unsafe dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__tsan_init") != nil
}
