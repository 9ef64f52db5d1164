/// A mounted hugetlbfs, as /proc/mounts lists it.
public struct HugetlbfsMountPoint: Equatable, Sendable {
    /// The mount point.
    public var path: String
    /// The `pagesize=` mount option in bytes; nil when absent (the default size).
    public var pageSize: Int?
}

/// A file on a hugetlbfs mount that no process has open or mapped.
public struct StaleHugepageFile: Equatable, Sendable {
    /// The file's path on the machine.
    public var path: String
    /// Bytes of hugepages the file pins (`st_blocks * 512`).
    public var bytes: Int

    public init(path: String, bytes: Int) {
        self.path = path
        self.bytes = bytes
    }
}

/// Files left on hugetlbfs mounts by processes that are gone (what a crashed
/// DPDK application leaves behind): they keep their hugepages until removed.
public enum StaleHugepageFiles {
    /// The hugetlbfs mounts listed in /proc/mounts.
    public static func mounts(in fs: ProcFileSystem = .live) -> [HugetlbfsMountPoint] {
        guard let text = fs.textIfPresent("/proc/mounts") else { return [] }
        var result: [HugetlbfsMountPoint] = []
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            guard f.count >= 4, f[2] == "hugetlbfs" else { continue }
            var size: Int?
            for option in f[3].split(separator: ",") where option.hasPrefix("pagesize=") {
                size = ByteCount.parse(String(option.dropFirst("pagesize=".count)))
            }
            result.append(HugetlbfsMountPoint(path: unescapeMountPath(f[1]), pageSize: size))
        }
        return result
    }

    /// Paths that some process has open (/proc/*/fd links) or mapped (/proc/*/maps).
    public static func pathsInUse(in fs: ProcFileSystem = .live) -> Set<String> {
        var used: Set<String> = []
        for pid in fs.processIDs() {
            for fd in fs.list("/proc/\(pid)/fd") {
                if let target = try? Sys.readLink(fs.path("/proc/\(pid)/fd/\(fd)")) { used.insert(target) }
            }
            guard let maps = fs.textIfPresent("/proc/\(pid)/maps") else { continue }
            for line in maps.split(separator: "\n") {
                let f = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
                if f.count == 6 { used.insert(String(f[5].trimmingWhitespace())) }
            }
        }
        return used
    }

    /// Every file on every hugetlbfs mount that pins hugepages while no process
    /// has it open or mapped. Walks the mounts below `fs`'s root and compares
    /// against /proc/*/fd and /proc/*/maps. `mountPoint` limits the search
    /// to one mount.
    public static func find(in fs: ProcFileSystem = .live, mountPoint: String? = nil) -> [StaleHugepageFile] {
        let used = pathsInUse(in: fs)
        var result: [StaleHugepageFile] = []
        for mount in mounts(in: fs) where mountPoint == nil || mount.path == mountPoint {
            walk(mount.path, fs: fs) { path, status in
                if status.allocatedBytes > 0, !used.contains(path) {
                    result.append(StaleHugepageFile(path: path, bytes: status.allocatedBytes))
                }
            }
        }
        return result.sorted { $0.path < $1.path }
    }

    /// Removes the given stale files, each only after checking again that no
    /// process has it open or mapped. Returns the files removed; a file that
    /// became busy is skipped, a failed `unlink(2)` throws.
    public static func clean(_ files: [StaleHugepageFile], in fs: ProcFileSystem = .live) throws(DiagnosticsError) -> [StaleHugepageFile] {
        let used = pathsInUse(in: fs)
        var removed: [StaleHugepageFile] = []
        for file in files where !used.contains(file.path) {
            do {
                try Sys.unlink(fs.path(file.path))
            } catch {
                if error.errno == .noSuchFileOrDirectory { continue }
                throw .operationFailed(what: "removing \(file.path)", error)
            }
            removed.append(file)
        }
        return removed
    }

    private static func walk(_ directory: String, fs: ProcFileSystem, depth: Int = 0, _ visit: (String, Sys.FileStatus) -> Void) {
        guard depth < 16 else { return }
        for name in fs.list(directory).sorted() {
            let path = directory == "/" ? "/" + name : directory + "/" + name
            guard let status = try? Sys.fileStatus(fs.path(path), followLinks: false) else { continue }
            if status.isDirectory {
                walk(path, fs: fs, depth: depth + 1, visit)
            } else if status.isRegular {
                visit(path, status)
            }
        }
    }

    /// /proc/mounts writes space, tab, newline and backslash as octal escapes.
    static func unescapeMountPath(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        let utf8 = Array(text.utf8)
        var i = 0
        while i < utf8.count {
            if utf8[i] == UInt8(ascii: "\\"), i + 4 <= utf8.count,
               let code = UInt8(String(decoding: utf8[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                bytes.append(code)
                i += 4
            } else {
                bytes.append(utf8[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
