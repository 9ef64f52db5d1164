import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// File-system reads for the inventory layer: whole /proc and /sys files and
/// directory listings.
extension Sys {
    /// Reads a whole file, until end of file. Files under /proc and /sys
    /// report a size of 0 or 4096 whatever they hold, so the size from `stat`
    /// is never trusted. The corresponding C functions are `open(2)` and `read(2)`.
    package static func readFile(atPath path: String) throws(SystemCallError) -> [UInt8] {
        let fd = try openReadOnly(path)
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = try retryingInterrupts("read", detail: path) {
                unsafe chunk.withUnsafeMutableBytes { unsafe Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[..<count])
        }
        return bytes
    }

    /// The names in a directory, without "." and "..", unsorted.
    /// The corresponding C functions are `opendir(3)` and `readdir(3)`.
    package static func directoryEntries(atPath path: String) throws(SystemCallError) -> [String] {
        guard let directory = unsafe opendir(path) else {
            throw SystemCallError(call: "opendir", errno: lastErrno, detail: path)
        }
        defer { _ = unsafe closedir(directory) }
        var names: [String] = []
        while let entry = unsafe readdir(directory) {
            let name = unsafe withUnsafeBytes(of: entry.pointee.d_name) { raw in
                unsafe String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Whether anything exists at `path` (a dangling symbolic link does not count).
    /// The corresponding C function is `access(2)` with `F_OK`.
    package static func fileExists(atPath path: String) -> Bool {
        unsafe Glibc.access(path, F_OK) == 0
    }
}
