import SystemPackage

/// Reads small text files from /proc and /sys whole.
enum SysfsFile {
    /// The file's contents as UTF-8. The corresponding C calls are `open(2)`
    /// and `read(2)`; /proc files report size 0, so it reads until EOF.
    static func read(_ path: String) throws(SystemCallError) -> String {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
        } catch {
            throw SystemCallError(call: "open", errno: error as? Errno ?? .ioError, detail: path)
        }
        defer { Sys.close(fd) }
        var bytes: [UInt8] = []
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 16384, alignment: 8)
        defer { unsafe chunk.deallocate() }
        while true {
            let n: Int
            do {
                n = try unsafe Sys.read(fd, into: chunk)
            } catch {
                throw SystemCallError(call: "read", errno: error.errno, detail: path)
            }
            if n == 0 { break }
            unsafe bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
