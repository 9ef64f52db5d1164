import HugeAlloc
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A file on a hugetlbfs mount that no process has open or mapped.
package struct StaleHugepageFile: Equatable, Sendable {
    /// The file's path on the machine.
    package var path: String
    /// Bytes of hugepages the file pins (`st_blocks * 512`).
    package var bytes: Int
    /// The mount point the file was found under (a prefix of ``path``).
    package var mount: String
    /// The device and inode the walk found; the clean removes the file only
    /// while its path still leads to them.
    package var device: UInt64
    package var inode: UInt64

    package init(path: String, bytes: Int, mount: String, device: UInt64, inode: UInt64) {
        self.path = path
        self.bytes = bytes
        self.mount = mount
        self.device = device
        self.inode = inode
    }

    /// The path's components below ``mount``; nil when ``path`` is not below it.
    var componentsBelowMount: [String]? {
        let prefix = mount.hasSuffix("/") ? mount : mount + "/"
        guard path.hasPrefix(prefix) else { return nil }
        let components = path.dropFirst(prefix.count).split(separator: "/").map(String.init)
        guard !components.isEmpty, !components.contains(".."), !components.contains(".") else { return nil }
        return components
    }
}

/// What ``StaleHugepageFiles/search(in:mountPoint:)`` found.
package struct StaleFileSearch: Equatable, Sendable {
    /// The stale files, by path.
    package var files: [StaleHugepageFile] = []
    /// What the walk did not enter, and why: a mount point that is now
    /// another file system (a tmpfs mounted over it), a directory or file
    /// of another file system mounted inside it.
    package var skipped: [SkippedPath] = []
    /// Why some of the files cannot be proven unused (some process could
    /// not be read and the kernel granted no lease), or nil.
    /// ``StaleHugepageFiles/clean(_:in:)`` removes such a file only if the
    /// kernel grants it a lease then.
    package var unproven: String?

    package init() {}
}

/// A path the stale-file walk did not enter, with the reason.
package struct SkippedPath: Equatable, Sendable {
    package var path: String
    package var reason: String
}

/// What ``StaleHugepageFiles/clean(_:in:)`` did with each file it was given.
package struct CleanReport: Equatable, Sendable {
    /// The files removed.
    package var removed: [StaleHugepageFile] = []
    /// The files left in place, each with the reason.
    package var notRemoved: [NotRemovedFile] = []

    package init() {}

    /// Whether a file that should have been removed was not (exit status 1).
    package var hasFailures: Bool { notRemoved.contains { $0.reason.isFailure } }
}

/// A stale file that was not removed, and why.
package struct NotRemovedFile: Equatable, Sendable {
    package var file: StaleHugepageFile
    package var reason: Reason

    package init(file: StaleHugepageFile, reason: Reason) {
        self.file = file
        self.reason = reason
    }

    /// Why a stale file was left in place.
    package enum Reason: Equatable, Sendable, CustomStringConvertible {
        /// A process opened or mapped it since it was found: it is not stale.
        case inUse(pid: Int32, command: String?)
        /// The kernel refused an exclusive lease: another open file of it
        /// exists, in a process this tool could not see (`unseen` says why
        /// some are invisible, when known).
        case inUseUnseen(String?)
        /// Another open file holds a `flock(2)` lock on it (DPDK processes
        /// hold `LOCK_SH` on the hugepage files they use): it is in use.
        case locked
        /// It no longer exists (another process removed it).
        case gone
        /// Its path now leads to another file (or no regular file).
        case replaced
        /// The path to it cannot be followed safely any more: a directory on
        /// the way was renamed or replaced by a symbolic link, or another
        /// file system was mounted on the way, since the file was found.
        /// Nothing is removed through such a path.
        case pathChanged(String)
        /// Removing it failed.
        case failed(SystemCallError)
        /// It could not be proven unused: some process's open files or
        /// mappings could not be read, and the kernel would not grant the
        /// lease that proves it otherwise (the reason says which and the fix).
        case unproven(String)

        /// Whether the file should have been removed: a file in use or gone
        /// is left correctly, a failed removal is a failure.
        package var isFailure: Bool {
            switch self {
            case .inUse, .inUseUnseen, .locked, .gone, .replaced: false
            case .failed, .pathChanged, .unproven: true
            }
        }

        package var description: String {
            switch self {
            case let .inUse(pid, command):
                return "in use: open or mapped by PID \(pid)" + (command.map { " (\($0))" } ?? "")
            case let .inUseUnseen(unseen):
                return "in use: another process has it open or mapped (the kernel refused an exclusive lease)"
                    + (unseen.map { "; that process is not visible here: \($0)" } ?? "")
            case .locked:
                return "in use: another process holds a lock on it (flock), as DPDK processes do on the hugepage files they use"
            case .gone:
                return "no longer exists (removed by another process)"
            case let .unproven(reason):
                return "not proven unused: \(reason)"
            case .replaced:
                return "the path now leads to another file than the one found"
            case let .pathChanged(detail):
                return "the path to it no longer leads through the hugetlbfs it was found on (\(detail)); nothing "
                    + "was removed through it. Check who can write to the directories above the mount and what is "
                    + "mounted there (/proc/mounts)"
            case let .failed(error):
                let hint = switch error.errno {
                case .resourceBusy: "; something is mounted on it (see /proc/mounts): unmount it first"
                case .readOnlyFileSystem: "; the mount is read-only: remount it read-write"
                case .permissionDenied, .notPermitted: "; run as root"
                default: ""
                }
                return "\(error.call) failed: \(error.errno) (errno \(error.errno.rawValue))" + hint
            }
        }
    }
}

/// Files left on hugetlbfs mounts by processes that are gone (what a crashed
/// DPDK application leaves behind): they keep their hugepages until removed.
package enum StaleHugepageFiles {
    /// The hugetlbfs mounts listed in /proc/mounts below `fs`'s root (the
    /// inventory's reader); empty when /proc/mounts cannot be read.
    package static func mounts(in fs: KernelFiles = .live) -> [HugetlbfsMount] {
        SystemInventory.hugetlbfsMounts(in: fs)
    }

    /// The files some process has open (/proc/*/fd links) or mapped
    /// (/proc/*/maps), by path and by device and inode number, so a file
    /// reached through another path (a bind mount, another mount namespace)
    /// still counts as in use; each with a process that uses it.
    package struct FilesInUse: Sendable {
        var paths: [String: Int32] = [:]
        var inodes: [FileIdentity: Int32] = [:]
        /// Why some process's files could not be seen (a /proc/PID that
        /// could not be read, another PID namespace, hidden processes). When
        /// not empty, /proc alone proves no file unused.
        package var blindSpots: [String] = []

        struct FileIdentity: Hashable, Sendable {
            var device: UInt64
            var inode: UInt64
        }

        /// Why a file that no visible process uses may still be in use, or
        /// nil when every process was read.
        package var unproven: String? {
            blindSpots.isEmpty ? nil : blindSpots.joined(separator: "; ")
        }

        /// A process that has a file with this path or identity open or mapped, or nil.
        func holder(path: String, device: UInt64, inode: UInt64) -> Int32? {
            paths[path] ?? inodes[FileIdentity(device: device, inode: inode)]
        }

        /// Whether a file with this path or identity is in use.
        func contains(path: String, device: UInt64, inode: UInt64) -> Bool {
            holder(path: path, device: device, inode: inode) != nil
        }
    }

    /// Reads every process's open descriptors and mappings below `fs`'s root
    /// (except `ignoredPID`'s: the cleaner's own, which holds the files it
    /// locked open).
    ///
    /// A process that exited while being read (`ENOENT`, `ESRCH`) is left
    /// out; any other failure to read /proc/PID/fd, its links or
    /// /proc/PID/maps is a blind spot. So, on the live machine, are a PID
    /// namespace other than the initial one (/proc/self/ns/pid) and a /proc
    /// mounted with `hidepid=invisible` without `CAP_SYS_PTRACE`: processes
    /// this one cannot see may use any file.
    package static func filesInUse(in fs: KernelFiles = .live, ignoring ignoredPID: Int32? = nil) -> FilesInUse {
        var used = FilesInUse()
        if fs.isLive { used.blindSpots = visibilityBlindSpots(in: fs) }
        var unreadable: [(pid: Int32, errno: Errno)] = []
        func gone(_ errno: Errno) -> Bool { errno == .noSuchFileOrDirectory || errno == .noSuchProcess }
        for pid in fs.processIDs() where pid != ignoredPID {
            var failure: Errno? = nil
            do {
                for fd in try Sys.directoryEntries(atPath: fs.path("/proc/\(pid)/fd")) {
                    let link = fs.path("/proc/\(pid)/fd/\(fd)")
                    do {
                        let target = try Sys.readLink(link)
                        used.paths[target] = used.paths[target] ?? pid
                    } catch {
                        if !gone(error.errno) { failure = failure ?? error.errno }
                        continue
                    }
                    do {
                        let status = try Sys.fileStatus(link)
                        let identity = FilesInUse.FileIdentity(device: status.device, inode: status.inode)
                        used.inodes[identity] = used.inodes[identity] ?? pid
                    } catch {
                        // A link to a path in a fixture tree, or a descriptor closed meanwhile.
                        if !gone(error.errno) { failure = failure ?? error.errno }
                    }
                }
            } catch {
                if !gone(error.errno) { failure = failure ?? error.errno }
            }
            do {
                let maps = try fs.text("/proc/\(pid)/maps")
                for line in maps.split(separator: "\n") {
                    let f = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
                    guard f.count >= 5 else { continue }
                    if f.count == 6 {
                        let path = String(f[5].trimmingWhitespace())
                        used.paths[path] = used.paths[path] ?? pid
                    }
                    if let inode = UInt64(f[4]), inode != 0, let device = deviceNumber(f[3]) {
                        let identity = FilesInUse.FileIdentity(device: device, inode: inode)
                        used.inodes[identity] = used.inodes[identity] ?? pid
                    }
                }
            } catch .unreadable(let file) {
                if !gone(file.errno) { failure = failure ?? file.errno }
            } catch {
                failure = failure ?? .ioError
            }
            if let failure { unreadable.append((pid, failure)) }
        }
        if !unreadable.isEmpty {
            let shown = unreadable.prefix(5).map { "\($0.pid)" }.joined(separator: ", ") + (unreadable.count > 5 ? ", …" : "")
            used.blindSpots.append(
                "could not read the open files or mappings of \(unreadable.count) process(es) "
                + "(PID \(shown): \(unreadable[0].errno)), so any of them may use it; run as root "
                + "in the host's PID namespace")
        }
        return used
    }

    /// `PROC_PID_INIT_INO`: the inode number of the initial PID namespace
    /// (/proc/self/ns/pid reads "pid:[4026531836]" there).
    static let initialPIDNamespace = "pid:[4026531836]"

    /// Whether this process may see fewer processes than exist: another PID
    /// namespace (with its own /proc, even /proc/1 is inside it), or a /proc
    /// mounted with `hidepid=invisible` (2) while it lacks `CAP_SYS_PTRACE`.
    /// Reads /proc/self/ns/pid, /proc/mounts and /proc/self/status.
    static func visibilityBlindSpots(in fs: KernelFiles) -> [String] {
        var spots: [String] = []
        do {
            let namespace = try Sys.readLink(fs.path("/proc/self/ns/pid"))
            if namespace != initialPIDNamespace {
                spots.append("this process runs in a PID namespace (\(namespace)) that is not the initial one "
                             + "(\(initialPIDNamespace)), so processes outside it are invisible; run it in the host's "
                             + "PID namespace (e.g. nsenter --target 1 --pid --mount inspect-memory ...)")
            }
        } catch {
            spots.append("cannot tell which PID namespace this process is in (/proc/self/ns/pid: \(error.errno)), "
                         + "so processes outside it may be invisible; run it in the host's PID namespace")
        }
        let mounts = fs.textIfReadable("/proc/mounts") ?? ""
        for line in mounts.split(separator: "\n") {
            guard let entry = KernelText.mountEntry(line), entry.mountPoint == "/proc", entry.type == "proc" else { continue }
            guard entry.options.contains("hidepid=2") || entry.options.contains("hidepid=invisible") else { continue }
            let ptrace = ((try? MemlockCheck.effectiveCapabilities(in: fs)) ?? 0) & (1 << 19) != 0
            if !ptrace {
                spots.append("/proc is mounted with hidepid=invisible and this process lacks CAP_SYS_PTRACE, so other "
                             + "users' processes are hidden from it; run as root")
            }
        }
        return spots
    }

    /// "00:2f" (hex major:minor, as /proc/PID/maps prints it) → `dev_t` as
    /// glibc's `makedev` encodes it.
    static func deviceNumber(_ text: Substring) -> UInt64? {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let major = UInt64(parts[0], radix: 16), let minor = UInt64(parts[1], radix: 16) else { return nil }
        return ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
    }

    /// Every file on every hugetlbfs mount that pins hugepages while no process
    /// has it open or mapped (``search(in:mountPoint:)``'s files).
    package static func find(in fs: KernelFiles = .live, mountPoint: String? = nil) -> [StaleHugepageFile] {
        search(in: fs, mountPoint: mountPoint).files
    }

    /// Every file on every hugetlbfs mount that pins hugepages while no process
    /// has it open or mapped. Walks the mounts below `fs`'s root and compares
    /// against /proc/*/fd and /proc/*/maps. `mountPoint` limits the search
    /// to one mount.
    ///
    /// The walk never resolves a path twice: each mount point is opened one
    /// component at a time with `O_NOFOLLOW`, and everything below it is read
    /// relative to directory descriptors (`fstatat(AT_SYMLINK_NOFOLLOW)`,
    /// `openat(O_DIRECTORY | O_NOFOLLOW)`), so a symbolic link swapped in on
    /// the way is never followed. It stays on the mount's file system: the
    /// mount point must be hugetlbfs (`fstatfs` `f_type` `HUGETLBFS_MAGIC`;
    /// a fixture root's own type for fixture trees), and anything with
    /// another `st_dev` (a directory or file of another file system mounted
    /// inside) is skipped.
    package static func search(in fs: KernelFiles = .live, mountPoint: String? = nil) -> StaleFileSearch {
        let used = filesInUse(in: fs)
        var search = StaleFileSearch()
        var seen = Set<FilesInUse.FileIdentity>()
        var unproven = false
        Sys.ignoringLeaseBreaks {
            for mount in mounts(in: fs) where mountPoint == nil || mount.path == mountPoint {
                let root: FileDescriptor, device: UInt64
                switch Result(catching: { () throws(MountRootError) in try openMountRoot(mount.path, in: fs) }) {
                case .success(let opened): (root, device) = opened
                case .failure(let error):
                    search.skipped.append(SkippedPath(path: mount.path, reason: error.reason))
                    continue
                }
                defer { Sys.close(root) }
                let type = expectedFileSystem(in: fs)?.type ?? Sys.hugetlbfsMagic
                walk(root, path: mount.path, device: device, type: type, skipped: &search.skipped) { path, status, directory, name in
                    guard status.allocatedBytes > 0,
                          seen.insert(.init(device: status.device, inode: status.inode)).inserted,
                          !used.contains(path: path, device: status.device, inode: status.inode) else { return }
                    if used.unproven != nil {
                        // Some process could not be read: ask the kernel instead.
                        switch leaseProbe(name, in: directory, device: status.device, inode: status.inode) {
                        case .unused: break
                        case .inUse: return
                        case .unknown: unproven = true
                        }
                    }
                    search.files.append(StaleHugepageFile(path: path, bytes: status.allocatedBytes, mount: mount.path,
                                                          device: status.device, inode: status.inode))
                }
            }
        }
        search.unproven = unproven ? used.unproven : nil
        search.files.sort { $0.path < $1.path }
        return search
    }

    /// What an exclusive write lease says about a file.
    enum LeaseProbe {
        /// Granted: no other open file description exists.
        case unused
        /// Refused: another exists (a process has it open or mapped).
        case inUse
        /// Not available (not the owner and no `CAP_LEASE`, no lease support,
        /// the name changed): nothing is known.
        case unknown
    }

    /// Opens `name` in `directory`, checks it is `device`/`inode`, and asks
    /// for an exclusive write lease, released at once.
    static func leaseProbe(_ name: String, in directory: FileDescriptor, device: UInt64, inode: UInt64) -> LeaseProbe {
        guard let fd = try? Sys.openFile(name, in: directory) else { return .unknown }
        defer { Sys.close(fd) }
        guard let status = try? Sys.fileStatus(of: fd), status.device == device, status.inode == inode,
              let granted = try? Sys.takeWriteLease(fd) else { return .unknown }
        return granted ? .unused : .inUse
    }

    /// Why a mount point cannot be walked or cleaned.
    struct MountRootError: Error {
        var reason: String
    }

    /// The file-system type every walked directory must have: hugetlbfs on
    /// the live machine, the root's own type for a fixture tree.
    static func expectedFileSystem(in fs: KernelFiles) -> Sys.FileSystemStatus? {
        if fs.isLive { return Sys.FileSystemStatus(type: Sys.hugetlbfsMagic, blockSize: 0) }
        return try? Sys.fileSystemStatus(atPath: fs.root)
    }

    /// Opens a mount point below `fs`'s root without following any symbolic
    /// link, and checks it is (still) the hugetlbfs: `fstatfs` `f_type`.
    /// Returns the descriptor and the mount's device (`st_dev`).
    static func openMountRoot(_ path: String, in fs: KernelFiles) throws(MountRootError) -> (FileDescriptor, UInt64) {
        let root: FileDescriptor
        do {
            root = try Sys.openDirectoryWithoutLinks(path, below: fs.root)
        } catch {
            throw MountRootError(reason: "cannot open the mount point without following a symbolic link: \(error.errno)")
        }
        do {
            let type = try Sys.fileSystemStatus(of: root)
            guard let expected = expectedFileSystem(in: fs), type.type == expected.type else {
                Sys.close(root)
                throw MountRootError(reason: "the mount point is \(type.typeName) now, not hugetlbfs "
                                     + "(another file system is mounted over it)")
            }
            return (root, try Sys.fileStatus(of: root).device)
        } catch let error as MountRootError {
            throw error
        } catch {
            Sys.close(root)
            throw MountRootError(reason: "\(error)")
        }
    }

    /// Removes the given stale files, each only after checking again that it
    /// is unused: DPDK's protocol first (an exclusive, non-blocking
    /// `flock(2)`: a file another process has locked is in use), then, with
    /// the lock held, every process's descriptors and mappings read afresh,
    /// just before the unlink. Every file is accounted for: removed, or not
    /// removed with the reason; one failed `unlink(2)` does not stop the
    /// others.
    ///
    /// The path is followed again from the root without following any
    /// symbolic link (`openat(O_NOFOLLOW)` per component, each directory on
    /// the file's device), the name is checked with
    /// `fstatat(AT_SYMLINK_NOFOLLOW)` to still be the device and inode that
    /// was found, and removed with `unlinkat(2)` relative to the directory
    /// that was checked. Files are locked and checked in batches of
    /// ``batchSize``, so /proc is read once per batch.
    package static func clean(_ files: [StaleHugepageFile], in fs: KernelFiles = .live) -> CleanReport {
        Sys.ignoringLeaseBreaks { cleanHoldingLeases(files, in: fs) }
    }

    private static func cleanHoldingLeases(_ files: [StaleHugepageFile], in fs: KernelFiles) -> CleanReport {
        var reasons = [NotRemovedFile.Reason?](repeating: nil, count: files.count)
        var start = 0
        while start < files.count {
            let batch = start..<min(start + batchSize, files.count)
            start = batch.upperBound
            var held: [(index: Int, file: HeldFile)] = []
            for index in batch {
                switch hold(files[index], in: fs) {
                case .success(let file): held.append((index, file))
                case .failure(let reason): reasons[index] = reason.reason
                }
            }
            // Read after the locks were taken: a process that opened or mapped
            // a file before this point is seen; this process's own descriptors are not counted.
            let used = filesInUse(in: fs, ignoring: fs.isLive ? getpid() : nil)
            for (index, file) in held {
                reasons[index] = remove(file, found: files[index], in: fs, unless: used)
                file.close()
            }
        }
        var report = CleanReport()
        for (file, reason) in zip(files, reasons) {
            if let reason {
                report.notRemoved.append(NotRemovedFile(file: file, reason: reason))
            } else {
                report.removed.append(file)
            }
        }
        return report
    }

    /// Files locked and checked together by ``clean(_:in:)``.
    static let batchSize = 64

    /// A stale file opened and locked for removal: its directory, its name
    /// there, and the file itself (holding `LOCK_EX`, and a write lease
    /// when the kernel granted one).
    struct HeldFile {
        var directory: FileDescriptor
        var name: String
        var file: FileDescriptor
        var lease: Lease = .held

        enum Lease {
            /// Held: no other open file of it exists, in any process.
            case held
            /// Refused: another open file of it exists.
            case refused
            /// Not available; only the /proc scan can prove it unused.
            case unavailable(SystemCallError)
        }

        func close() {
            Sys.close(file)
            Sys.close(directory)
        }
    }

    struct NotHeld: Error {
        var reason: NotRemovedFile.Reason
    }

    /// Follows the path of `file` safely to its directory, opens it there
    /// (`O_NOFOLLOW | O_NONBLOCK`), checks it is the device and inode that
    /// was found, and takes `LOCK_EX | LOCK_NB`.
    private static func hold(_ file: StaleHugepageFile, in fs: KernelFiles) -> Result<HeldFile, NotHeld> {
        guard let components = file.componentsBelowMount, let name = components.last else {
            return .failure(NotHeld(reason: .pathChanged("\(file.path) is not below the mount \(file.mount)")))
        }
        var directory: FileDescriptor
        do {
            let device: UInt64
            (directory, device) = try openMountRoot(file.mount, in: fs)
            guard device == file.device else {
                Sys.close(directory)
                return .failure(NotHeld(reason: .pathChanged("\(file.mount) is another file system than the one the file was found on")))
            }
        } catch {
            return .failure(NotHeld(reason: .pathChanged(error.reason)))
        }
        for component in components.dropLast() {
            do {
                let next = try Sys.openDirectory(component, in: directory)
                Sys.close(directory)
                directory = next
                guard try Sys.fileStatus(of: directory).device == file.device else {
                    Sys.close(directory)
                    return .failure(NotHeld(reason: .pathChanged("\(component) is on another file system")))
                }
            } catch {
                Sys.close(directory)
                return .failure(NotHeld(reason: error.errno == .noSuchFileOrDirectory ? .gone : .pathChanged("\(component): \(error.errno)")))
            }
        }
        let opened: FileDescriptor
        do {
            let status = try Sys.fileStatus(name, in: directory)
            guard status.isRegular, status.device == file.device, status.inode == file.inode else {
                Sys.close(directory)
                return .failure(NotHeld(reason: .replaced))
            }
            opened = try Sys.openFile(name, in: directory)
        } catch {
            Sys.close(directory)
            return .failure(NotHeld(reason: error.errno == .noSuchFileOrDirectory ? .gone : .failed(error)))
        }
        var held = HeldFile(directory: directory, name: name, file: opened)
        do {
            let status = try Sys.fileStatus(of: opened)
            guard status.device == file.device, status.inode == file.inode else {
                held.close()
                return .failure(NotHeld(reason: .replaced))
            }
            guard try Sys.lock(opened, .exclusive, wait: false) else {
                held.close()
                return .failure(NotHeld(reason: .locked))
            }
        } catch {
            held.close()
            return .failure(NotHeld(reason: .failed(error)))
        }
        do {
            held.lease = try Sys.takeWriteLease(opened) ? .held : .refused
        } catch {
            held.lease = .unavailable(error)
        }
        return .success(held)
    }

    /// Removes a held file unless a process uses it: one `used` shows, or,
    /// by the lease, one it could not see; returns why it was not removed,
    /// or nil. Without a lease, only a complete `used` proves it unused.
    private static func remove(_ held: HeldFile, found file: StaleHugepageFile, in fs: KernelFiles, unless used: FilesInUse) -> NotRemovedFile.Reason? {
        // Checked again, by identity and path, just before the unlink.
        do {
            let status = try Sys.fileStatus(held.name, in: held.directory)
            guard status.isRegular, status.device == file.device, status.inode == file.inode else { return .replaced }
        } catch {
            return error.errno == .noSuchFileOrDirectory ? .gone : .failed(error)
        }
        if let pid = used.holder(path: file.path, device: file.device, inode: file.inode) {
            return .inUse(pid: pid, command: fs.command(of: pid))
        }
        switch held.lease {
        case .held:
            break  // the kernel's word: no other open file of it exists
        case .refused:
            return .inUseUnseen(used.unproven)
        case .unavailable(let error):
            if let unproven = used.unproven {
                return .unproven(unproven + " (and the kernel would not grant the exclusive lease that would prove it "
                                 + "unused: \(error.errno))")
            }
        }
        do {
            try Sys.unlink(held.name, in: held.directory)
        } catch {
            return error.errno == .noSuchFileOrDirectory ? .gone : .failed(error)
        }
        return nil
    }

    /// Visits every regular file below `directory` (whose path is `path`) on
    /// the file system `device` of type `type`, reading each directory
    /// through its descriptor; 16 levels at most. Anything on another device
    /// is recorded in `skipped`, never entered or visited.
    private static func walk(
        _ directory: FileDescriptor, path: String, device: UInt64, type: Int, depth: Int = 0,
        skipped: inout [SkippedPath], _ visit: (_ path: String, Sys.FileStatus, _ directory: FileDescriptor, _ name: String) -> Void
    ) {
        guard depth < 16, let names = try? Sys.directoryEntries(of: directory) else { return }
        for name in names.sorted() {
            let child = path == "/" ? "/" + name : path + "/" + name
            guard let status = try? Sys.fileStatus(name, in: directory) else { continue }
            guard status.device == device else {
                if status.isDirectory || status.isRegular {
                    skipped.append(SkippedPath(path: child, reason: "another file system is mounted here"))
                }
                continue
            }
            if status.isDirectory {
                guard let sub = try? Sys.openDirectory(name, in: directory) else { continue }
                defer { Sys.close(sub) }
                // The directory opened must be the one examined, on the same file system.
                guard let opened = try? Sys.fileStatus(of: sub), opened.device == status.device, opened.inode == status.inode,
                      (try? Sys.fileSystemStatus(of: sub))?.type == type
                else { continue }
                walk(sub, path: child, device: device, type: type, depth: depth + 1, skipped: &skipped, visit)
            } else if status.isRegular {
                visit(child, status, directory, name)
            }
        }
    }
}
