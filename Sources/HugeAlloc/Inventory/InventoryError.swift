import SystemPackage

/// Why the system inventory could not be read.
///
/// Missing hugepage, hugetlbfs or NUMA support is not an error: the inventory
/// then reports no sizes, no mounts or no nodes. These cases are for files
/// that exist (or must exist) but cannot be read or do not say what the
/// kernel documents.
public enum InventoryError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A file or directory that must be readable could not be read.
    case unreadable(path: String, errno: Errno)
    /// A line of a file is not in the kernel's documented format.
    /// `line` counts from 1; `text` is the offending line (or file name when
    /// the name itself is wrong, with `line` 0); `expected` says what was wanted.
    case malformed(path: String, line: Int, text: String, expected: String)
    /// A system call the inventory needs failed (for example `getrlimit`).
    case systemCall(SystemCallError)

    /// The file the error is about, if any.
    public var path: String? {
        switch self {
        case .unreadable(let path, _), .malformed(let path, _, _, _): path
        case .systemCall: nil
        }
    }

    public var description: String {
        switch self {
        case .unreadable(let path, let errno):
            return "cannot read \(path): \(errno) (errno \(errno.rawValue)); "
                + "check that /proc and /sys are mounted and readable by this user"
        case .malformed(let path, let line, let text, let expected):
            let shown = text.count > 80 ? String(text.prefix(80)) + "…" : text
            let place = line > 0 ? "\(path):\(line)" : path
            return "malformed \(place): found \"\(shown)\", expected \(expected)"
        case .systemCall(let error):
            return "\(error)"
        }
    }
}
