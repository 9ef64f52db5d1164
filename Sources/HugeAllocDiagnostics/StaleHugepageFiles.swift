import HugeAlloc

/// A file on a hugetlbfs mount that no process has open or mapped.
package struct StaleHugepageFile: Equatable, Sendable {
    /// The file's path on the machine.
    package var path: String
    /// Bytes of hugepages the file pins (`st_blocks * 512`).
    package var bytes: Int

    package init(path: String, bytes: Int) {
        self.path = path
        self.bytes = bytes
    }
}

/// Files left on hugetlbfs mounts by processes that are gone (what a crashed
/// DPDK application leaves behind): they keep their hugepages until removed.
package enum StaleHugepageFiles {
    /// The hugetlbfs mounts listed in /proc/mounts below `fs`'s root (the
    /// inventory's reader); empty when /proc/mounts cannot be read.
    package static func mounts(in fs: KernelFiles = .live) -> [HugetlbfsMount] {
        (try? SystemInventory.readMounts(fs, defaultSize: (try? HugepagePoolDirectory.defaultSize(in: fs)) ?? nil)) ?? []
    }

    /// The files some process has open (/proc/*/fd links) or mapped
    /// (/proc/*/maps), by path and by device and inode number, so a file
    /// reached through another path (a bind mount, another mount namespace)
    /// still counts as in use.
    package struct FilesInUse: Sendable {
        package var paths: Set<String> = []
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
    package static func filesInUse(in fs: KernelFiles = .live) -> FilesInUse {
        var used = FilesInUse()
        for pid in fs.processIDs() {
            for fd in fs.entries("/proc/\(pid)/fd") {
                let link = fs.path("/proc/\(pid)/fd/\(fd)")
                if let target = try? Sys.readLink(link) { used.paths.insert(target) }
                if let status = try? Sys.fileStatus(link) {
                    used.inodes.insert(.init(device: status.device, inode: status.inode))
                }
            }
            guard let maps = fs.textIfReadable("/proc/\(pid)/maps") else { continue }
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
    package static func find(in fs: KernelFiles = .live, mountPoint: String? = nil) -> [StaleHugepageFile] {
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
    package static func clean(_ files: [StaleHugepageFile], in fs: KernelFiles = .live) throws(DiagnosticsError) -> [StaleHugepageFile] {
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
                throw .systemCall(error)
            }
            removed.append(file)
        }
        return removed
    }

    private static func walk(_ directory: String, fs: KernelFiles, depth: Int = 0, _ visit: (String, Sys.FileStatus) -> Void) {
        guard depth < 16 else { return }
        for name in fs.entries(directory).sorted() {
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
