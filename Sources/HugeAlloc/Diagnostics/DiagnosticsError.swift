/// What went wrong while reading or changing the machine's memory state
/// for diagnostics, and how to fix it.
public enum DiagnosticsError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No process with this ID exists (or it exited while being read).
    case noSuchProcess(pid: Int32)
    /// A file in /proc or /sys could not be read.
    case unreadable(path: String, SystemCallError)
    /// A file in /proc or /sys was read but did not have the expected format.
    case malformed(path: String, detail: String)
    /// The kernel does not offer this hugepage size.
    case unsupportedPageSize(bytes: Int, available: [Int])
    /// The NUMA node does not exist.
    case noSuchNode(Int, available: [Int])
    /// A virtual address that is not a hexadecimal number.
    case malformedAddress(String)
    /// A write to a kernel knob or a file system operation failed.
    case operationFailed(what: String, SystemCallError)
    /// A file that a process has open or mapped, which diagnostics never remove.
    case fileInUse(path: String)
    /// Reading a process's pagemap failed.
    case pagemap(PagemapError)

    public var description: String {
        switch self {
        case .noSuchProcess(let pid):
            return "no process with PID \(pid) (it does not exist or has exited); list processes with `ps -e`"
        case .unreadable(let path, let error):
            let hint = error.errno == .permissionDenied || error.errno == .notPermitted
                ? "; run as root (sudo) to read it" : ""
            return "cannot read \(path): \(error.errno) (errno \(error.errno.rawValue))\(hint)"
        case .malformed(let path, let detail):
            return "unexpected format in \(path): \(detail)"
        case .unsupportedPageSize(let bytes, let available):
            let list = available.map { PageSize(rawValue: $0)?.description ?? "\($0)" }.joined(separator: ", ")
            return "page size \(ByteCount.format(bytes)) is not supported by this kernel; available: \(list.isEmpty ? "none" : list)"
        case .noSuchNode(let node, let available):
            return "NUMA node \(node) does not exist; nodes: \(available.map(String.init).joined(separator: ", "))"
        case .malformedAddress(let text):
            return "malformed address \"\(text)\": expected a hexadecimal address such as 0x7f0000000000"
        case .operationFailed(let what, let error):
            return "\(what) failed: \(error.errno) (errno \(error.errno.rawValue))"
        case .fileInUse(let path):
            return "\(path) is open or mapped by a process; not removed"
        case .pagemap(let error):
            return error.description
        }
    }
}
