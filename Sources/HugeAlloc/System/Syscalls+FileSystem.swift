import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// File-system calls used by the diagnostics layer beyond the inventory's
/// reads: stat, readlink, unlink, mkdir and rmdir, sysfs writes, hugetlbfs
/// mounts and unmounts.
extension Sys {
    /// What ``fileStatus(_:followLinks:)`` reports about a path.
    package struct FileStatus {
        package var isRegular: Bool
        package var isDirectory: Bool
        package var size: Int
        /// Bytes the file occupies (`st_blocks * 512`); on hugetlbfs, the hugepages it pins.
        package var allocatedBytes: Int
        package var device: UInt64
        package var inode: UInt64
    }

    /// The corresponding C function is `stat(2)` (or `lstat(2)` when not following links).
    package static func fileStatus(_ path: String, followLinks: Bool = true) throws(SystemCallError) -> FileStatus {
        let st: Stat
        do {
            st = try Stat(FilePath(path), followTargetSymlink: followLinks)
        } catch {
            throw SystemCallError(call: followLinks ? "stat" : "lstat", errno: error, detail: path)
        }
        return FileStatus(
            isRegular: st.type == .regular, isDirectory: st.type == .directory,
            size: Int(st.size), allocatedBytes: Int(st.blocksAllocated) * 512,
            device: UInt64(st.deviceID.rawValue), inode: UInt64(st.inode.rawValue))
    }

    /// The target of a symbolic link. The corresponding C function is `readlink(2)`.
    package static func readLink(_ path: String) throws(SystemCallError) -> String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = try retryingInterrupts("readlink", detail: path) {
            unsafe buffer.withUnsafeMutableBufferPointer { b in
                unsafe Glibc.readlink(path, b.baseAddress!, b.count)
            }
        }
        return String(decoding: buffer[..<count], as: UTF8.self)
    }

    /// Opens a file for reading. The corresponding C function is `open(2)`.
    package static func openReadOnly(_ path: String) throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingInterrupts("open", detail: path) {
            unsafe Glibc.open(path, O_RDONLY | O_CLOEXEC)
        })
    }

    /// Writes `text` to an existing file in one `write(2)`, as /sys knobs need.
    /// The corresponding C functions are `open(2)` and `write(2)`.
    package static func writeFile(_ path: String, _ text: String) throws(SystemCallError) {
        let fd = FileDescriptor(rawValue: try retryingInterrupts("open", detail: path) {
            unsafe Glibc.open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
        })
        defer { close(fd) }
        do {
            _ = try fd.writeAll(Array(text.utf8))
        } catch {
            throw SystemCallError(call: "write", errno: error as? Errno ?? .ioError, detail: path)
        }
    }

    /// The corresponding C function is `unlink(2)`.
    package static func unlink(_ path: String) throws(SystemCallError) {
        _ = try retryingInterrupts("unlink", detail: path) { unsafe Glibc.unlink(path) }
    }

    /// Creates a directory; an existing one is fine. The corresponding C function is `mkdir(2)`.
    package static func makeDirectory(_ path: String) throws(SystemCallError) {
        if unsafe Glibc.mkdir(path, 0o755) == 0 { return }
        let code = lastErrno
        if code == .fileExists { return }
        throw SystemCallError(call: "mkdir", errno: code, detail: path)
    }

    /// Mounts a hugetlbfs with the given page size at `path`.
    /// The corresponding C function is `mount(2)` with type `hugetlbfs`.
    package static func mountHugetlbfs(at path: String, pageSize: Int) throws(SystemCallError) {
        let options = "pagesize=\(pageSize >> 10)K"
        _ = try retryingInterrupts("mount", detail: "hugetlbfs at \(path), \(options)") {
            unsafe Glibc.mount("nodev", path, "hugetlbfs", 0, options)
        }
    }

    /// Removes an empty directory. The corresponding C function is `rmdir(2)`.
    package static func removeDirectory(_ path: String) throws(SystemCallError) {
        _ = try retryingInterrupts("rmdir", detail: path) { unsafe Glibc.rmdir(path) }
    }

    /// Unmounts the file system mounted at `path`. The corresponding C function is `umount2(2)`.
    package static func unmount(_ path: String) throws(SystemCallError) {
        _ = try retryingInterrupts("umount2", detail: path) { unsafe Glibc.umount2(path, 0) }
    }

    /// The absolute path of `path` with every symbolic link, ".", ".." and
    /// repeated "/" resolved; the path must exist. The corresponding C
    /// function is `realpath(3)`.
    package static func realPath(_ path: String) throws(SystemCallError) -> String {
        guard let resolved = unsafe Glibc.realpath(path, nil) else {
            throw SystemCallError(call: "realpath", errno: lastErrno, detail: path)
        }
        defer { unsafe free(resolved) }
        return unsafe String(cString: resolved)
    }
}
