import CHugeAllocShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Calls made relative to an open directory, so that a path is resolved
/// once: a directory that is renamed or replaced by a symbolic link after it
/// was opened cannot redirect a later `fstatat`, `openat` or `unlinkat`.
/// Used where a privileged process must stay on one file system (the
/// stale-file clean, the hugetlbfs backing check).
extension Sys {
    /// `f_type` of hugetlbfs in `statfs(2)`: `HUGETLBFS_MAGIC` of `<linux/magic.h>`.
    package static let hugetlbfsMagic = 0x9584_58f6

    /// What `statfs(2)` reports about the file system holding a file.
    package struct FileSystemStatus: Sendable, Equatable {
        /// `f_type`, the file system's magic number.
        package var type: Int
        /// `f_bsize`; on hugetlbfs, the page size of the mount.
        package var blockSize: Int

        package init(type: Int, blockSize: Int) {
            self.type = type
            self.blockSize = blockSize
        }

        package var isHugetlbfs: Bool { type == Sys.hugetlbfsMagic }

        /// The file system's name for the magic numbers people meet
        /// ("ext4", "tmpfs"), else "file system type 0x…".
        package var typeName: String {
            switch type {
            case Sys.hugetlbfsMagic: "hugetlbfs"
            case 0xEF53: "ext4"
            case 0x0102_1994: "tmpfs"
            case 0x8584_58f6: "ramfs"
            case 0x5846_5342: "xfs"
            case 0x9123_683E: "btrfs"
            case 0x794C_7630: "overlayfs"
            case 0x6969: "nfs"
            case 0x2FC1_2FC1: "zfs"
            case 0x9FA0: "proc"
            case 0x6265_6572: "sysfs"
            default: "file system type 0x" + String(type, radix: 16)
            }
        }
    }

    /// The file system holding an open file. The corresponding C function is `fstatfs(2)`.
    package static func fileSystemStatus(of fd: FileDescriptor) throws(SystemCallError) -> FileSystemStatus {
        var buffer = statfs()
        _ = try retryingInterrupts("fstatfs", detail: "descriptor \(fd.rawValue)") { unsafe fstatfs(fd.rawValue, &buffer) }
        return FileSystemStatus(type: Int(buffer.f_type), blockSize: Int(buffer.f_bsize))
    }

    /// The file system holding `path`. The corresponding C function is `statfs(2)`.
    package static func fileSystemStatus(atPath path: String) throws(SystemCallError) -> FileSystemStatus {
        var buffer = statfs()
        _ = try retryingInterrupts("statfs", detail: path) { unsafe statfs(path, &buffer) }
        return FileSystemStatus(type: Int(buffer.f_type), blockSize: Int(buffer.f_bsize))
    }

    /// Opens a directory: `name` relative to `directory`, or a path
    /// relative to the working directory when `directory` is nil. Unless
    /// `followLinks`, a symbolic link as the last component fails (`ELOOP`)
    /// instead of being followed.
    /// The corresponding C function is `openat(2)` with `O_DIRECTORY` (and `O_NOFOLLOW`).
    package static func openDirectory(_ name: String, in directory: FileDescriptor? = nil, followLinks: Bool = false) throws(SystemCallError) -> FileDescriptor {
        let flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC | (followLinks ? 0 : O_NOFOLLOW)
        let fd = try retryingInterrupts("openat", detail: followLinks ? "\(name), O_DIRECTORY" : "\(name), O_DIRECTORY|O_NOFOLLOW") {
            unsafe openat(directory?.rawValue ?? AT_FDCWD, name, flags)
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Opens the directory `path` below `root` one component at a time, each
    /// with `O_NOFOLLOW`: a symbolic link anywhere below `root` fails with
    /// `ELOOP` or `ENOTDIR` instead of being followed. `root` itself is
    /// opened as given. ".." is refused (`EINVAL`).
    /// The corresponding C function is `openat(2)` with `O_DIRECTORY | O_NOFOLLOW`.
    package static func openDirectoryWithoutLinks(_ path: String, below root: String = "/") throws(SystemCallError) -> FileDescriptor {
        var current = try retryingInterrupts("open", detail: root) {
            unsafe Glibc.open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        }
        for component in path.split(separator: "/") where component != "." {
            guard component != ".." else {
                _ = Glibc.close(current)
                throw SystemCallError(call: "openat", errno: .invalidArgument, detail: "\(path): \"..\" component")
            }
            let next = unsafe openat(current, String(component), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let code = lastErrno
            _ = Glibc.close(current)
            guard next >= 0 else {
                throw SystemCallError(call: "openat", errno: code, detail: "\(component) of \(path), O_DIRECTORY|O_NOFOLLOW")
            }
            current = next
        }
        return FileDescriptor(rawValue: current)
    }

    /// Opens the regular file `name` in `directory` read-only, without
    /// following a symbolic link and without blocking on a FIFO (for a lock).
    /// The corresponding C function is `openat(2)` with `O_NOFOLLOW | O_NONBLOCK`.
    package static func openFile(_ name: String, in directory: FileDescriptor) throws(SystemCallError) -> FileDescriptor {
        let fd = try retryingInterrupts("openat", detail: "\(name), O_RDONLY|O_NOFOLLOW") {
            unsafe openat(directory.rawValue, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
        }
        return FileDescriptor(rawValue: fd)
    }

    /// Opens an unnamed file in an open directory (`O_TMPFILE`).
    /// The corresponding C function is `openat(2)` with `O_TMPFILE`.
    static func openTemporaryFile(in directory: FileDescriptor, detail: String) throws(SystemCallError) -> FileDescriptor {
        let fd = try retryingInterrupts("open", detail: "\(detail), O_TMPFILE") {
            unsafe openat(directory.rawValue, ".", HA_O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600)
        }
        return FileDescriptor(rawValue: fd)
    }

    /// What an open file is. The corresponding C function is `fstat(2)`.
    package static func fileStatus(of fd: FileDescriptor) throws(SystemCallError) -> FileStatus {
        var st = stat()
        _ = try retryingInterrupts("fstat", detail: "descriptor \(fd.rawValue)") { unsafe fstat(fd.rawValue, &st) }
        return FileStatus(st)
    }

    /// What `name` in `directory` is, without following a symbolic link.
    /// The corresponding C function is `fstatat(2)` with `AT_SYMLINK_NOFOLLOW`.
    package static func fileStatus(_ name: String, in directory: FileDescriptor) throws(SystemCallError) -> FileStatus {
        var st = stat()
        _ = try retryingInterrupts("fstatat", detail: name) {
            unsafe fstatat(directory.rawValue, name, &st, AT_SYMLINK_NOFOLLOW)
        }
        return FileStatus(st)
    }

    /// The names in an open directory, without "." and "..", unsorted.
    /// The corresponding C functions are `dup(2)`, `fdopendir(3)` and `readdir(3)`.
    package static func directoryEntries(of directory: FileDescriptor) throws(SystemCallError) -> [String] {
        let copy = try retryingInterrupts("dup") { Glibc.dup(directory.rawValue) }
        guard let stream = unsafe fdopendir(copy) else {
            let code = lastErrno
            _ = Glibc.close(copy)
            throw SystemCallError(call: "fdopendir", errno: code)
        }
        defer { _ = unsafe closedir(stream) }
        unsafe rewinddir(stream)
        var names: [String] = []
        while let entry = unsafe readdir(stream) {
            let name = unsafe withUnsafeBytes(of: entry.pointee.d_name) { raw in
                unsafe String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Removes the name `name` from `directory` (never a directory).
    /// The corresponding C function is `unlinkat(2)`.
    package static func unlink(_ name: String, in directory: FileDescriptor) throws(SystemCallError) {
        _ = try retryingInterrupts("unlinkat", detail: name) { unsafe unlinkat(directory.rawValue, name, 0) }
    }

    /// A whole-file advisory lock for ``lock(_:_:wait:)``.
    package enum LockKind: Sendable {
        /// `LOCK_SH`: held by every user of a file (HugeAlloc's named hugetlbfs files).
        case shared
        /// `LOCK_EX`: taken by a cleaner before it removes a file (DPDK's convention).
        case exclusive
    }

    /// Locks an open file. Without `wait`, returns false when another open
    /// file holds a conflicting lock (`EWOULDBLOCK`).
    /// The corresponding C function is `flock(2)` (`LOCK_NB` without `wait`).
    @discardableResult
    package static func lock(_ fd: FileDescriptor, _ kind: LockKind, wait: Bool = true) throws(SystemCallError) -> Bool {
        let operation = (kind == .shared ? LOCK_SH : LOCK_EX) | (wait ? 0 : LOCK_NB)
        while true {
            if flock(fd.rawValue, operation) == 0 { return true }
            let code = lastErrno
            if code == .interrupted { continue }
            if !wait, code == .wouldBlock { return false }
            throw SystemCallError(call: "flock", errno: code, detail: kind == .shared ? "LOCK_SH" : "LOCK_EX")
        }
    }

    /// Asks for an exclusive write lease on an open file (opened read-only).
    /// The kernel grants it only while no other open file description of
    /// the inode exists: no process, in any PID or mount namespace, has the
    /// file open or mapped. Returns false when one exists (`EAGAIN`). While
    /// the lease is held, another process's `open(2)` of the file waits
    /// (and this process is sent `SIGIO`; see ``ignoringLeaseBreaks(_:)``)
    /// until the descriptor is closed. Fails with `EACCES` for a file this
    /// user neither owns nor has `CAP_LEASE` for, `EINVAL` where the file
    /// system has no leases.
    /// The corresponding C function is `fcntl(2)` with `F_SETLEASE` and `F_WRLCK`.
    package static func takeWriteLease(_ fd: FileDescriptor) throws(SystemCallError) -> Bool {
        while true {
            if fcntl(fd.rawValue, HA_F_SETLEASE, Int32(F_WRLCK)) == 0 { return true }
            let code = lastErrno
            if code == .interrupted { continue }
            if code == .resourceTemporarilyUnavailable || code == .resourceBusy { return false }
            throw SystemCallError(call: "fcntl", errno: code, detail: "F_SETLEASE F_WRLCK")
        }
    }

    /// Runs `body` with `SIGIO` ignored: the signal a lease holder is sent
    /// when another process opens the leased file, which would otherwise
    /// end this process. The corresponding C function is `signal(2)`.
    package static func ignoringLeaseBreaks<T>(_ body: () -> T) -> T {
        let previous = signal(SIGIO, SIG_IGN)
        defer { _ = signal(SIGIO, previous) }
        return body()
    }
}

extension Sys.FileStatus {
    /// The fields of a `struct stat`.
    init(_ st: stat) {
        let type = st.st_mode & S_IFMT
        self.init(isRegular: type == S_IFREG, isDirectory: type == S_IFDIR,
                  size: Int(st.st_size), allocatedBytes: Int(st.st_blocks) * 512,
                  device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
    }
}
