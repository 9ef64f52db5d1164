import CHugeAllocShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The one place that calls the kernel's memory-management system calls.
///
/// No other file calls `mmap`, `mlock`, `madvise`, `mremap` or
/// `memfd_create` directly. Every wrapper turns `-1`/`errno` into a
/// ``SystemCallError`` and retries `EINTR` in ``retryingInterrupts(_:)``.
/// NUMA calls live in `Syscalls+NUMA.swift`.
package enum Sys {
    /// Runs `body` until it returns something other than `-1` with `EINTR`.
    @inline(__always)
    static func retryingInterrupts<T: BinaryInteger>(
        _ call: String, detail: @autoclosure () -> String? = nil, _ body: () -> T
    ) throws(SystemCallError) -> T {
        while true {
            let result = body()
            if result != -1 { return result }
            let code = Sys.lastErrno
            if code == .interrupted { continue }
            throw SystemCallError(call: call, errno: code, detail: detail())
        }
    }

    /// The calling thread's `errno`, typed.
    static var lastErrno: Errno { Errno(rawValue: Glibc.errno) }

    /// The kernel's base page size. The corresponding C call is `sysconf(_SC_PAGESIZE)`.
    package static let basePageSize: Int = Int(sysconf(Int32(_SC_PAGESIZE)))

    // MARK: - mmap family

    /// Memory protection for ``mmap(length:protection:flags:fd:offset:at:)``.
    struct Protection: OptionSet {
        let rawValue: Int32
        static let read = Protection(rawValue: PROT_READ)
        static let write = Protection(rawValue: PROT_WRITE)
        static let none: Protection = []
        static let readWrite: Protection = [.read, .write]
    }

    /// `mmap` flags, named.
    struct MapFlags: OptionSet {
        let rawValue: Int32
        static let shared = MapFlags(rawValue: MAP_SHARED)
        static let `private` = MapFlags(rawValue: MAP_PRIVATE)
        static let anonymous = MapFlags(rawValue: MAP_ANONYMOUS)
        static let fixed = MapFlags(rawValue: MAP_FIXED)
        static let fixedNoReplace = MapFlags(rawValue: HA_MAP_FIXED_NOREPLACE)
        static let hugeTLB = MapFlags(rawValue: HA_MAP_HUGETLB)
        static let populate = MapFlags(rawValue: HA_MAP_POPULATE)
        static let locked = MapFlags(rawValue: HA_MAP_LOCKED)
        static let noReserve = MapFlags(rawValue: HA_MAP_NORESERVE)

        /// `MAP_HUGE_*` bits selecting a hugepage size (log2 in bits 26..31).
        static func hugePageSize(_ bytes: Int) -> MapFlags {
            MapFlags(rawValue: Int32(bytes.trailingZeroBitCount) << HA_MAP_HUGE_SHIFT)
        }
    }

    /// Maps memory. The corresponding C function is `mmap(2)`.
    static func mmap(
        length: Int, protection: Protection, flags: MapFlags,
        fd: FileDescriptor? = nil, offset: Int = 0,
        at address: UnsafeMutableRawPointer? = nil
    ) throws(SystemCallError) -> UnsafeMutableRawPointer {
        while true {
            let result = unsafe Glibc.mmap(
                address, length, protection.rawValue, flags.rawValue,
                fd?.rawValue ?? -1, off_t(offset))
            if let result = unsafe result, unsafe result != MAP_FAILED {
                return unsafe result
            }
            let code = Sys.lastErrno
            if code == .interrupted { continue }
            throw SystemCallError(call: "mmap", errno: code, detail: "length \(length)")
        }
    }

    /// Unmaps memory. The corresponding C function is `munmap(2)`.
    static func munmap(_ address: UnsafeMutableRawPointer, length: Int) throws(SystemCallError) {
        _ = try retryingInterrupts("munmap", detail: "length \(length)") {
            unsafe Glibc.munmap(address, length)
        }
    }

    /// Moves or resizes a mapping to an exact address.
    /// The corresponding C function is `mremap(2)` with `MREMAP_MAYMOVE | MREMAP_FIXED`.
    static func mremapFixed(
        _ old: UnsafeMutableRawPointer, length: Int, to new: UnsafeMutableRawPointer
    ) throws(SystemCallError) {
        while true {
            let result = unsafe ha_mremap_fixed(
                old, length, length, HA_MREMAP_MAYMOVE | HA_MREMAP_FIXED, new)
            if unsafe result != MAP_FAILED { return }
            let code = Sys.lastErrno
            if code == .interrupted { continue }
            throw SystemCallError(call: "mremap", errno: code, detail: "length \(length)")
        }
    }

    /// Advice for ``madvise(_:length:_:)``.
    enum Advice {
        case dontFork, doFork, populateWrite, dontNeed, hugePage
        var rawValue: Int32 {
            switch self {
            case .dontFork: HA_MADV_DONTFORK
            case .doFork: HA_MADV_DOFORK
            case .populateWrite: HA_MADV_POPULATE_WRITE
            case .dontNeed: MADV_DONTNEED
            case .hugePage: 14  // MADV_HUGEPAGE
            }
        }
    }

    /// The corresponding C function is `madvise(2)`.
    static func madvise(
        _ address: UnsafeMutableRawPointer, length: Int, _ advice: Advice
    ) throws(SystemCallError) {
        _ = try retryingInterrupts("madvise", detail: "length \(length)") {
            unsafe Glibc.madvise(address, length, advice.rawValue)
        }
    }

    /// Locks pages in memory. `onFault` uses `mlock2(MLOCK_ONFAULT)`, which
    /// locks pages as they are touched instead of faulting them all in now.
    /// The corresponding C functions are `mlock(2)` and `mlock2(2)`.
    static func mlock(
        _ address: UnsafeRawPointer, length: Int, onFault: Bool = false
    ) throws(SystemCallError) {
        if onFault {
            _ = try retryingInterrupts("mlock2", detail: "length \(length)") {
                unsafe ha_mlock2(address, length, UInt32(HA_MLOCK_ONFAULT))
            }
        } else {
            _ = try retryingInterrupts("mlock", detail: "length \(length)") {
                unsafe Glibc.mlock(address, length)
            }
        }
    }

    /// The corresponding C function is `munlock(2)`.
    static func munlock(_ address: UnsafeRawPointer, length: Int) throws(SystemCallError) {
        _ = try retryingInterrupts("munlock", detail: "length \(length)") {
            unsafe Glibc.munlock(address, length)
        }
    }

    // MARK: - files

    /// Creates an anonymous file. The corresponding C function is `memfd_create(2)`;
    /// `hugePageSize` adds `MFD_HUGETLB` with the size's `MFD_HUGE_*` bits.
    static func memfdCreate(name: String, hugePageSize: Int?) throws(SystemCallError) -> FileDescriptor {
        var flags = UInt32(HA_MFD_CLOEXEC)
        if let hugePageSize {
            flags |= UInt32(HA_MFD_HUGETLB)
                | (UInt32(hugePageSize.trailingZeroBitCount) << UInt32(HA_MFD_HUGE_SHIFT))
        }
        let fd = try retryingInterrupts("memfd_create", detail: name) {
            unsafe ha_memfd_create(name, flags)
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Creates a uniquely named file in `directory`, takes a shared lock on
    /// it, and unlinks it at once. The lock (which the descriptor keeps)
    /// tells a cleaner that takes an exclusive lock before removing a file
    /// (DPDK's convention; `inspect-memory hugepages --clean`) that the file
    /// is in use during the moment it has a name.
    /// The corresponding C functions are `mkstemp(3)`, `flock(2)` with `LOCK_SH`, and `unlink(2)`.
    static func openUnlinkedFile(inDirectory directory: String, prefix: String) throws(SystemCallError) -> FileDescriptor {
        var template = Array("\(directory)/\(prefix)XXXXXX".utf8CString)
        let fd = try retryingInterrupts("mkostemp", detail: directory) {
            unsafe template.withUnsafeMutableBufferPointer { unsafe mkstemp($0.baseAddress!) }
        }
        do {
            try lock(FileDescriptor(rawValue: fd), .shared)
        } catch {
            _ = unsafe template.withUnsafeBufferPointer { unsafe Glibc.unlink($0.baseAddress!) }
            _ = Glibc.close(fd)
            throw error
        }
        let unlinked = unsafe template.withUnsafeBufferPointer { unsafe Glibc.unlink($0.baseAddress!) }
        if unlinked != 0 {
            let code = Sys.lastErrno
            _ = Glibc.close(fd)
            throw SystemCallError(call: "unlink", errno: code, detail: directory)
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Sets a file's size. The corresponding C function is `ftruncate(2)`.
    static func ftruncate(_ fd: FileDescriptor, length: Int) throws(SystemCallError) {
        _ = try retryingInterrupts("ftruncate", detail: "length \(length)") {
            Glibc.ftruncate(fd.rawValue, off_t(length))
        }
    }

    /// Frees the pages behind `[offset, offset + length)` of a memfd or
    /// hugetlbfs file at once, keeping the file size.
    /// The corresponding C function is `fallocate(2)` with `FALLOC_FL_PUNCH_HOLE`.
    static func punchHole(_ fd: FileDescriptor, offset: Int, length: Int) throws(SystemCallError) {
        _ = try retryingInterrupts("fallocate", detail: "punch hole at \(offset), length \(length)") {
            ha_punch_hole(fd.rawValue, off_t(offset), off_t(length))
        }
    }

    /// Closes a descriptor, ignoring errors (the descriptor is gone either way).
    /// The corresponding C function is `close(2)`.
    package static func close(_ fd: FileDescriptor) {
        _ = Glibc.close(fd.rawValue)
    }

    /// Reads up to `buffer.count` bytes at `offset`, retrying short reads
    /// until end of file. Returns the byte count read.
    /// The corresponding C function is `pread(2)`.
    package static func pread(
        _ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, offset: Int
    ) throws(SystemCallError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = try retryingInterrupts("pread", detail: "offset \(offset + done)") {
                unsafe Glibc.pread(
                    fd.rawValue, buffer.baseAddress! + done, buffer.count - done,
                    off_t(offset + done))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Reads up to `buffer.count` bytes at the file position.
    /// The corresponding C function is `read(2)`.
    static func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) throws(SystemCallError) -> Int {
        try retryingInterrupts("read") { unsafe Glibc.read(fd.rawValue, buffer.baseAddress, buffer.count) }
    }

    // MARK: - process facts

    /// Lets another thread run while a spin lock is held elsewhere.
    /// The corresponding C function is `sched_yield(2)`.
    static func yieldProcessor() {
        _ = sched_yield()
    }

    /// The CPU and NUMA node the calling thread runs on.
    /// The corresponding C function is `getcpu(2)`.
    static func getcpu() throws(SystemCallError) -> (cpu: Int, node: Int) {
        var cpu: UInt32 = 0
        var node: UInt32 = 0
        _ = try retryingInterrupts("getcpu") { unsafe ha_getcpu(&cpu, &node) }
        return (Int(cpu), Int(node))
    }

    /// `RLIMIT_MEMLOCK`, soft and hard; `nil` is unlimited.
    /// The corresponding C function is `getrlimit(2)`.
    static func memlockLimit() throws(SystemCallError) -> (soft: Int?, hard: Int?) {
        var limit = rlimit()
        _ = try retryingInterrupts("getrlimit", detail: "RLIMIT_MEMLOCK") {
            unsafe getrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &limit)
        }
        func value(_ v: rlim_t) -> Int? { v == rlim_t.max ? nil : Int(clamping: v) }
        return (value(limit.rlim_cur), value(limit.rlim_max))
    }

    /// Touches every `stride`-th byte of a range, in `threads` threads,
    /// turning a SIGBUS (hugetlb quota or cgroup limit) into an error.
    /// Returns `nil` on success, or the offset of the first faulting byte.
    /// The corresponding C function is `ha_parallel_guarded_touch` (CHugeAllocShims).
    static func guardedTouch(
        _ address: UnsafeMutableRawPointer, length: Int, stride: Int, threads: Int
    ) throws(SystemCallError) -> Int? {
        var fault = 0
        let rc = unsafe ha_parallel_guarded_touch(
            address, length, stride, 1, UInt32(max(1, threads)), &fault)
        switch rc {
        case 0: return nil
        case -1: return fault
        default: throw SystemCallError(call: "pthread_create", errno: Sys.lastErrno)
        }
    }

    /// Whether a forked child would see `[address, address+length)` mapped.
    /// The corresponding C function is `ha_child_sees_mapping` (fork + `mincore(2)`).
    static func childSeesMapping(_ address: UnsafeMutableRawPointer, length: Int) throws(SystemCallError) -> Bool {
        let rc = unsafe ha_child_sees_mapping(address, length)
        if rc < 0 { throw SystemCallError(call: "fork", errno: Sys.lastErrno) }
        return rc == 1
    }

    /// Raises or drops `capability` (a `CAP_*` number) in the calling
    /// thread's effective set and returns whether it was effective before.
    /// The corresponding system calls are `capget(2)` and `capset(2)`.
    package static func setThreadCapability(_ capability: Int32, effective: Bool) throws(SystemCallError) -> Bool {
        try retryingInterrupts("capset", detail: "capability \(capability)") {
            ha_thread_capability(capability, effective ? 1 : 0)
        } == 1
    }
}
