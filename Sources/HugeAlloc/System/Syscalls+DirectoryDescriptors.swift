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

    /// Opens an unnamed file in an open directory (`O_TMPFILE`).
    /// The corresponding C function is `openat(2)` with `O_TMPFILE`.
    static func openTemporaryFile(in directory: FileDescriptor, detail: String) throws(SystemCallError) -> FileDescriptor {
        let fd = try retryingInterrupts("open", detail: "\(detail), O_TMPFILE") {
            unsafe openat(directory.rawValue, ".", HA_O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600)
        }
        return FileDescriptor(rawValue: fd)
    }
}
