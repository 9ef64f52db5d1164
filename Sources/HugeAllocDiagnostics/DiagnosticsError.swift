import HugeAlloc

/// What went wrong while reading or changing the machine's memory state
/// for diagnostics, and how to fix it.
package enum DiagnosticsError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No process with this ID exists (or it exited while being read).
    case noSuchProcess(pid: Int32)
    /// A file in /proc or /sys could not be read.
    case unreadable(UnreadableFile)
    /// A file in /proc or /sys was read but did not have the expected format.
    case malformed(MalformedFile)
    /// The kernel does not offer this hugepage size.
    case unsupportedPageSize(UnsupportedPageSize)
    /// The NUMA node does not exist.
    case noSuchNode(UnknownNode)
    /// A virtual address that is not a hexadecimal number.
    case malformedAddress(String)
    /// A write to a kernel knob or a file system operation failed.
    case systemCall(SystemCallError)
    /// A file that a process has open or mapped, which diagnostics never remove.
    case fileInUse(path: String)
    /// Reading a process's pagemap failed.
    case pagemap(PagemapError)
    /// The process lacks a capability the operation needs.
    case needsCapability(MissingCapability)

    package init(_ error: KernelFileError) {
        switch error {
        case .unreadable(let file): self = .unreadable(file)
        case .malformed(let file): self = .malformed(file)
        }
    }

    package var description: String {
        switch self {
        case .noSuchProcess(let pid):
            return "no process with PID \(pid) (it does not exist or has exited); list processes with `ps -e`"
        case .unreadable(let file):
            return file.description
        case .malformed(let file):
            return file.description
        case .unsupportedPageSize(let payload):
            return payload.description
        case .noSuchNode(let unknown):
            return unknown.description
        case .malformedAddress(let text):
            return "malformed address \"\(text)\": expected a hexadecimal address such as 0x7f0000000000"
        case .systemCall(let error):
            return error.description
        case .fileInUse(let path):
            return "\(path) is open or mapped by a process; not removed"
        case .pagemap(let error):
            return error.description
        case .needsCapability(let missing):
            return missing.description
        }
    }
}

/// A capability the process lacks, what it is needed for, and how to get it.
package struct MissingCapability: Equatable, Sendable, CustomStringConvertible {
    /// "CAP_SYS_ADMIN".
    package var capability: String
    /// What the capability is needed for ("read /proc/kpageflags").
    package var purpose: String
    /// How to run with it.
    package var fix: String

    package init(capability: String, purpose: String, fix: String) {
        self.capability = capability
        self.purpose = purpose
        self.fix = fix
    }

    package var description: String { "needs \(capability) to \(purpose); \(fix)" }
}
