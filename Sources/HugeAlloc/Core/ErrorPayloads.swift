import SystemPackage

// Payloads shared by the domain errors of every layer. A shortage, a file
// that cannot be read, an unknown node is described once here, so every
// error that carries one says needed vs available and the fix the same way.

/// A file under /proc, /sys or /dev that exists (or must exist) but cannot be read.
public struct UnreadableFile: Error, Hashable, Sendable, CustomStringConvertible {
    /// The full path that was read (under the root for fixture trees).
    public var path: String
    /// The kernel's error number.
    public var errno: Errno

    public init(path: String, errno: Errno) {
        self.path = path
        self.errno = errno
    }

    public var description: String {
        let hint = errno == .permissionDenied || errno == .notPermitted
            ? "run as root (sudo) to read it"
            : "check that /proc and /sys are mounted and readable by this user"
        return "cannot read \(path): \(errno) (errno \(errno.rawValue)); \(hint)"
    }
}

/// A line of a kernel file that is not in the format the kernel documents.
public struct MalformedFile: Error, Hashable, Sendable, CustomStringConvertible {
    /// The full path that was read.
    public var path: String
    /// The line, counting from 1; 0 when the file (or its name) as a whole is wrong.
    public var line: Int
    /// The offending line, or the file name when the name itself is wrong.
    public var text: String
    /// What was wanted.
    public var expected: String

    public init(path: String, line: Int, text: String, expected: String) {
        self.path = path
        self.line = line
        self.text = text
        self.expected = expected
    }

    public var description: String {
        let shown = text.count > 80 ? String(text.prefix(80)) + "…" : text
        let place = line > 0 ? "\(path):\(line)" : path
        return "malformed \(place): found \"\(shown)\", expected \(expected)"
    }
}

/// Why a kernel file could not be used: the one error of the kernel-file reader and
/// the line parsers.
public enum KernelFileError: Error, Hashable, Sendable, CustomStringConvertible {
    case unreadable(UnreadableFile)
    case malformed(MalformedFile)

    /// The file the error is about.
    public var path: String {
        switch self {
        case .unreadable(let file): file.path
        case .malformed(let file): file.path
        }
    }

    public var description: String {
        switch self {
        case .unreadable(let file): file.description
        case .malformed(let file): file.description
        }
    }

    static func malformed(path: String, line: Int, text: String, expected: String) -> KernelFileError {
        .malformed(MalformedFile(path: path, line: line, text: text, expected: expected))
    }
}

/// Too few free hugepages of one size, system-wide or on one NUMA node: how
/// many were needed, how many are free, and the command that reserves more.
public struct HugepageShortage: Hashable, Sendable, CustomStringConvertible {
    /// The hugepage size.
    public var pageSize: PageSize
    /// The NUMA node, or nil for the system-wide pool.
    public var node: Int?
    /// Pages needed.
    public var needed: Int
    /// Pages available (free and not promised to other mappings).
    public var free: Int
    /// Pages in the pool now (`nr_hugepages`).
    public var total: Int

    public init(pageSize: PageSize, node: Int?, needed: Int, free: Int, total: Int) {
        self.pageSize = pageSize
        self.node = node
        self.needed = needed
        self.free = free
        self.total = total
    }

    /// The command that raises the pool so that `needed` pages are free. It
    /// only ever raises `nr_hugepages`: the count is never below ``total``.
    public var command: String {
        HugepagePoolDirectory(pageSize, node: node).reserveCommand(needed: needed, free: free, total: total)
    }

    /// "on node N" or "system-wide".
    var place: String { node.map { "on node \($0)" } ?? "system-wide" }

    public var description: String {
        "not enough free \(pageSize) hugepages \(place): needed \(needed), free \(free). Reserve more with: \(command)"
    }
}

/// Locking or pinning `needed` more bytes would pass RLIMIT_MEMLOCK.
public struct MemlockShortage: Hashable, Sendable, CustomStringConvertible {
    /// Bytes the operation locks or pins.
    public var needed: Int
    /// Bytes this process has locked already (/proc/self/status VmLck).
    public var alreadyLocked: Int
    /// The soft RLIMIT_MEMLOCK, in bytes.
    public var limit: Int

    public init(needed: Int, alreadyLocked: Int, limit: Int) {
        self.needed = needed
        self.alreadyLocked = alreadyLocked
        self.limit = limit
    }

    /// How to raise the limit enough, in every way a process can get it.
    public var fix: String {
        let (total, overflow) = needed.addingReportingOverflow(alreadyLocked)
        let kilobytes = overflow ? "unlimited" : "\((total + 1023) / 1024)"
        return "Raise it with `ulimit -l \(kilobytes)` (kilobytes) or `ulimit -l unlimited` as root, "
            + "a memlock line in /etc/security/limits.conf, LimitMEMLOCK= for a systemd service, "
            + "or grant CAP_IPC_LOCK (`setcap cap_ipc_lock+ep BINARY`)."
    }

    public var description: String {
        "locking \(needed) bytes exceeds RLIMIT_MEMLOCK: limit \(limit) bytes, \(alreadyLocked) already locked. \(fix)"
    }
}

/// A page size the kernel does not offer.
public struct UnsupportedPageSize: Hashable, Sendable, CustomStringConvertible {
    /// The size asked for, in bytes (not always a power of two).
    public var requested: Int
    /// The sizes the kernel offers, ascending.
    public var offered: [PageSize]

    public init(requested: Int, offered: [PageSize]) {
        self.requested = requested
        self.offered = offered
    }

    public var description: String {
        let list = offered.map(\.description).joined(separator: ", ")
        return "this kernel offers no \(ByteCount.format(requested)) pages; offered: \(list.isEmpty ? "none" : list)"
    }
}

/// A NUMA node that does not exist or that this process may not use.
public struct UnknownNode: Hashable, Sendable, CustomStringConvertible {
    public var node: Int
    /// The nodes that may be used.
    public var available: [Int]

    public init(node: Int, available: [Int]) {
        self.node = node
        self.available = available
    }

    public var description: String {
        "NUMA node \(node) is not available to this process (allowed nodes: "
            + "\(available.map(String.init).joined(separator: ", "))); check /sys/devices/system/node/online and the cpuset"
    }
}
