import SystemPackage

/// A system call that failed: which call, on what, and the kernel's `errno`.
///
/// Every wrapper in the internal `Sys` namespace throws this type; layers above translate the
/// cases they can explain (too few hugepages, memlock limit) into their own
/// typed errors and let the rest through unchanged.
public struct SystemCallError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The C name of the call, for example `"mmap"` or `"pread"`.
    public var call: String
    /// The error number the kernel returned.
    public var errno: Errno
    /// What the call was made on (a path, a size), when that helps.
    public var detail: String?

    public init(call: String, errno: Errno, detail: String? = nil) {
        self.call = call
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        if let detail {
            return "\(call)(\(detail)) failed: \(errno) (errno \(errno.rawValue))"
        }
        return "\(call) failed: \(errno) (errno \(errno.rawValue))"
    }
}
