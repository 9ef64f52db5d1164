import SystemPackage

/// The one reader of kernel files: /proc, /sys and /dev under one
/// file-system root, read as text.
///
/// The live machine is root "/"; tests pass a fixture tree laid out the same
/// way (`<root>/proc/meminfo`, `<root>/sys/kernel/mm/hugepages/...`). Paths
/// are given as the kernel names them ("/proc/meminfo"; a leading slash is
/// optional) and are read below the root. Reads go through `Sys.readFile`,
/// which reads to end of file (sysfs sizes lie).
package struct KernelFiles: Sendable {
    /// The root with no trailing slash ("" for the live root "/").
    package let prefix: String

    package init(root: String = "/") {
        var trimmed = Substring(root)
        while trimmed.hasSuffix("/") { trimmed.removeLast() }
        prefix = String(trimmed)
    }

    /// The running machine.
    package static let live = KernelFiles()

    /// Whether this is the running machine (root "/"), so libraries and
    /// system calls may be consulted as well as files.
    package var isLive: Bool { prefix.isEmpty }

    /// The root as given to ``init(root:)``, "/" for the live machine.
    package var root: String { prefix.isEmpty ? "/" : prefix }

    /// The full path of `kernelPath` ("/proc/meminfo" or "proc/meminfo") under the root.
    package func path(_ kernelPath: String) -> String {
        kernelPath.hasPrefix("/") ? prefix + kernelPath : prefix + "/" + kernelPath
    }

    /// The whole text of a file that must exist.
    package func text(_ kernelPath: String) throws(KernelFileError) -> String {
        let full = path(kernelPath)
        do {
            return String(decoding: try Sys.readFile(atPath: full), as: UTF8.self)
        } catch {
            throw .unreadable(UnreadableFile(path: full, errno: error.errno))
        }
    }

    /// The text of a file, or nil if it does not exist (the feature is absent).
    package func textIfPresent(_ kernelPath: String) throws(KernelFileError) -> String? {
        do {
            return try text(kernelPath)
        } catch .unreadable(let file) where file.errno == .noSuchFileOrDirectory {
            return nil
        }
    }

    /// The text of a file, or nil when it cannot be read for any reason (a
    /// process that exited, a file this user may not read).
    package func textIfReadable(_ kernelPath: String) -> String? {
        try? text(kernelPath)
    }

    /// The names in a directory, sorted, or nil if it does not exist.
    package func entriesIfPresent(_ kernelPath: String) throws(KernelFileError) -> [String]? {
        let full = path(kernelPath)
        do {
            return try Sys.directoryEntries(atPath: full).sorted()
        } catch where error.errno == .noSuchFileOrDirectory || error.errno == .notDirectory {
            return nil
        } catch {
            throw .unreadable(UnreadableFile(path: full, errno: error.errno))
        }
    }

    /// The names in a directory, sorted; empty when it cannot be read.
    package func entries(_ kernelPath: String) -> [String] {
        ((try? entriesIfPresent(kernelPath)) ?? nil) ?? []
    }

    /// Whether anything exists at the path below the root.
    package func exists(_ kernelPath: String) -> Bool { Sys.fileExists(atPath: path(kernelPath)) }

    /// A file holding one non-negative decimal integer (sysfs counters).
    package func integer(_ kernelPath: String) throws(KernelFileError) -> Int {
        let content = try text(kernelPath)
        let line = content.split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
        guard let value = Int(line.trimmingWhitespace()), value >= 0 else {
            throw .malformed(path: path(kernelPath), line: 1, text: String(line),
                             expected: "one non-negative decimal integer")
        }
        return value
    }

    /// A kernel counter file (sysfs `resv_hugepages` and the like), read as
    /// the kernel's own type: an unsigned long that the kernel can briefly
    /// drive below zero (after a process that registered pool memory with
    /// io_uring or AF_XDP exits, `resv_hugepages` has read
    /// 18446744073709551608, that is -8). Such a value is clamped to 0 and
    /// `clamped` says so; anything that is not a number is malformed.
    package func counter(_ kernelPath: String) throws(KernelFileError) -> (value: Int, clamped: Bool) {
        let content = try text(kernelPath)
        let line = content.split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
        let digits = line.trimmingWhitespace()
        if let value = Int(digits), value >= 0 { return (value, false) }
        if let unsigned = UInt64(digits) { return (max(0, Int(Int64(bitPattern: unsigned))), true) }
        throw .malformed(path: path(kernelPath), line: 1, text: String(line),
                         expected: "one non-negative decimal integer")
    }

    /// The value of `key` in a "Key: N kB" file (/proc/meminfo, /proc/PID/status),
    /// in bytes; nil when the file or the key is absent or unreadable.
    package func kilobyteField(_ kernelPath: String, key: String) -> Int? {
        guard let text = textIfReadable(kernelPath) else { return nil }
        return (try? KernelText.meminfoValue(text, key: key, path: path(kernelPath))) ?? nil
    }
}
