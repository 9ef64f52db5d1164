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
    /// The hugetlbfs mounts listed in /proc/mounts below `fs`'s root (the
    /// inventory's reader); empty when /proc/mounts cannot be read.
    public static func mounts(in fs: ProcFileSystem = .live) -> [HugetlbfsMount] {
        let files = SystemFiles(root: fs.root)
        let meminfo = try? files.text("proc/meminfo")
        let defaultBytes = meminfo.flatMap { try? InventoryParse.meminfoValue($0, key: "Hugepagesize", path: "proc/meminfo") }
        return (try? SystemInventory.readMounts(files, defaultSize: defaultBytes.flatMap { PageSize(rawValue: $0) })) ?? []
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
}
