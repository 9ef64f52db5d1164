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

    /// The files some process has open (/proc/*/fd links) or mapped
    /// (/proc/*/maps), by path and by device and inode number, so a file
    /// reached through another path (a bind mount, another mount namespace)
    /// still counts as in use.
    public struct FilesInUse: Sendable {
        public var paths: Set<String> = []
        var inodes: Set<FileIdentity> = []

        struct FileIdentity: Hashable, Sendable {
            var device: UInt64
            var inode: UInt64
        }

        /// Whether a file with this path or identity is in use.
        func contains(path: String, device: UInt64, inode: UInt64) -> Bool {
            paths.contains(path) || inodes.contains(FileIdentity(device: device, inode: inode))
        }
    }

    /// Reads every process's open descriptors and mappings below `fs`'s root.
    public static func filesInUse(in fs: ProcFileSystem = .live) -> FilesInUse {
        var used = FilesInUse()
        for pid in fs.processIDs() {
            for fd in fs.list("/proc/\(pid)/fd") {
                let link = fs.path("/proc/\(pid)/fd/\(fd)")
                if let target = try? Sys.readLink(link) { used.paths.insert(target) }
                if let status = try? Sys.fileStatus(link) {
                    used.inodes.insert(.init(device: status.device, inode: status.inode))
                }
            }
            guard let maps = fs.textIfPresent("/proc/\(pid)/maps") else { continue }
            for line in maps.split(separator: "\n") {
                let f = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
                guard f.count >= 5 else { continue }
                if f.count == 6 { used.paths.insert(String(f[5].trimmingWhitespace())) }
                if let inode = UInt64(f[4]), inode != 0, let device = deviceNumber(f[3]) {
                    used.inodes.insert(.init(device: device, inode: inode))
                }
            }
        }
        return used
    }

    /// "00:2f" (hex major:minor, as /proc/PID/maps prints it) → `dev_t` as
    /// glibc's `makedev` encodes it.
    static func deviceNumber(_ text: Substring) -> UInt64? {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let major = UInt64(parts[0], radix: 16), let minor = UInt64(parts[1], radix: 16) else { return nil }
        return ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
    }

    /// Every file on every hugetlbfs mount that pins hugepages while no process
    /// has it open or mapped. Walks the mounts below `fs`'s root and compares
    /// against /proc/*/fd and /proc/*/maps. `mountPoint` limits the search
    /// to one mount.
    public static func find(in fs: ProcFileSystem = .live, mountPoint: String? = nil) -> [StaleHugepageFile] {
        let used = filesInUse(in: fs)
        var result: [StaleHugepageFile] = []
        for mount in mounts(in: fs) where mountPoint == nil || mount.path == mountPoint {
            walk(mount.path, fs: fs) { path, status in
                if status.allocatedBytes > 0, !used.contains(path: path, device: status.device, inode: status.inode) {
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
        let used = filesInUse(in: fs)
        var removed: [StaleHugepageFile] = []
        for file in files {
            // Checked again, by path and identity, just before the unlink.
            guard let status = try? Sys.fileStatus(fs.path(file.path), followLinks: false), status.isRegular,
                  !used.contains(path: file.path, device: status.device, inode: status.inode) else { continue }
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
