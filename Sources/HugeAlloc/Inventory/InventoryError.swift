/// Why the system inventory could not be read.
///
/// Missing hugepage, hugetlbfs or NUMA support is not an error: the inventory
/// then reports no sizes, no mounts or no nodes. These cases are for files
/// that exist (or must exist) but cannot be read or do not say what the
/// kernel documents.
public enum InventoryError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A file or directory that must be readable could not be read.
    case unreadable(UnreadableFile)
    /// A line of a file is not in the kernel's documented format.
    case malformed(MalformedFile)
    /// A system call the inventory needs failed (for example `getrlimit`).
    case systemCall(SystemCallError)

    init(_ error: KernelFileError) {
        switch error {
        case .unreadable(let file): self = .unreadable(file)
        case .malformed(let file): self = .malformed(file)
        }
    }

    /// The file the error is about, if any.
    public var path: String? {
        switch self {
        case .unreadable(let file): file.path
        case .malformed(let file): file.path
        case .systemCall: nil
        }
    }

    public var description: String {
        switch self {
        case .unreadable(let file): file.description
        case .malformed(let file): file.description
        case .systemCall(let error): error.description
        }
    }
}
