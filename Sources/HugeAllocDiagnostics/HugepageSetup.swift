import HugeAlloc

/// A request for a hugepage pool of one size: "2M:512".
package struct HugepageRequest: Equatable, Sendable {
    package var pageSize: Int
    package var count: Int

    package init(pageSize: Int, count: Int) {
        self.pageSize = pageSize
        self.count = count
    }
}

/// What the kernel granted for one ``HugepageRequest``.
package struct HugepageGrant: Equatable, Sendable {
    package var pageSize: Int
    /// The node the pool belongs to, nil for the system-wide pool.
    package var node: Int?
    /// The pool size before the change.
    package var previous: Int
    package var requested: Int
    /// The pool size the kernel reports after the change.
    package var granted: Int

    package var isComplete: Bool { granted >= requested }
}

/// Sizing the hugepage pools through sysfs and mounting hugetlbfs, like
/// `dpdk-hugepages.py --setup`.
package enum HugepageSetup {
    /// The hugepage sizes this kernel offers (/sys/kernel/mm/hugepages, read
    /// by the inventory), ascending.
    package static func availableSizes(in fs: KernelFiles = .live) -> [Int] {
        HugepagePoolDirectory.offeredSizes(in: fs).map(\.bytes)
    }

    /// The NUMA nodes (the inventory's topology), ascending.
    package static func nodes(in fs: KernelFiles = .live) -> [Int] {
        ((try? NUMATopology.read(root: fs.root))?.nodes.map(\.id) ?? []).sorted()
    }

    /// Reads one counter of a pool ("nr_hugepages", "free_hugepages", "surplus_hugepages", ...).
    package static func counter(_ name: String, pageSize: Int, node: Int?, in fs: KernelFiles = .live) throws(DiagnosticsError) -> Int {
        guard let size = PageSize(rawValue: pageSize) else {
            throw .unsupportedPageSize(UnsupportedPageSize(requested: pageSize, offered: HugepagePoolDirectory.offeredSizes(in: fs)))
        }
        do {
            return try fs.integer(HugepagePoolDirectory(size, node: node).kernelPath + "/" + name)
        } catch {
            throw DiagnosticsError(error)
        }
    }

    /// Parses "2M:512,1G:2": each size must be one this kernel offers, each
    /// count a positive number whose pages fit in the machine's memory
    /// (MemTotal of /proc/meminfo).
    package static func parseRequests(_ text: String, in fs: KernelFiles = .live) throws(HugepageRequestError) -> [HugepageRequest] {
        let sizes = availableSizes(in: fs)
        let memTotal = memoryTotal(in: fs)
        var result: [HugepageRequest] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw .malformed(String(item)) }
            guard let size = ByteCount.parse(String(parts[0])), sizes.contains(size) else {
                throw .unsupportedSize(String(parts[0]), available: sizes)
            }
            guard let count = Int(parts[1].trimmingWhitespace()) else { throw .badCount(String(parts[1]), reason: "not a number") }
            guard count > 0 else { throw .badCount(String(parts[1]), reason: "must be at least 1") }
            if let memTotal {
                let (bytes, overflow) = count.multipliedReportingOverflow(by: size)
                if overflow || bytes > memTotal {
                    throw .badCount(String(parts[1]), reason: "\(count) × \(ByteCount.format(size)) exceeds this machine's \(memTotal >> 20) MiB of memory")
                }
            }
            guard !result.contains(where: { $0.pageSize == size }) else { throw .malformed("\(item) (size given twice)") }
            result.append(HugepageRequest(pageSize: size, count: count))
        }
        return result
    }

    /// MemTotal from /proc/meminfo in bytes.
    static func memoryTotal(in fs: KernelFiles) -> Int? {
        meminfoValue("MemTotal", in: fs)
    }

    static func meminfoValue(_ key: String, in fs: KernelFiles) -> Int? {
        fs.kilobyteField("/proc/meminfo", key: key)
    }

    /// Sets the pool of `request.pageSize` (on `node`, or system-wide) to
    /// `request.count` pages by writing `nr_hugepages` in sysfs, and reads
    /// back what the kernel granted.
    package static func reserve(_ request: HugepageRequest, node: Int?, in fs: KernelFiles = .live) throws(DiagnosticsError) -> HugepageGrant {
        if let node, !nodes(in: fs).contains(node) { throw .noSuchNode(UnknownNode(node: node, available: nodes(in: fs))) }
        let offered = HugepagePoolDirectory.offeredSizes(in: fs)
        guard let size = PageSize(rawValue: request.pageSize), offered.contains(size) else {
            throw .unsupportedPageSize(UnsupportedPageSize(requested: request.pageSize, offered: offered))
        }
        let previous = try counter("nr_hugepages", pageSize: request.pageSize, node: node, in: fs)
        do {
            try Sys.writeFile(fs.path(HugepagePoolDirectory(size, node: node).countFile), "\(request.count)\n")
        } catch {
            // The kernel answers a partial grant with success; a failure is a refusal.
            throw .systemCall(error)
        }
        let granted = try counter("nr_hugepages", pageSize: request.pageSize, node: node, in: fs)
        return HugepageGrant(pageSize: request.pageSize, node: node, previous: previous,
                             requested: request.count, granted: granted)
    }

    /// Whether a hugetlbfs of `pageSize` is mounted at `path`: a mount of
    /// /proc/mounts with that size whose path is `path`'s canonical form
    /// (``canonicalPath(_:in:)``), or whose root is the directory `path`
    /// leads to (same device and inode).
    static func isMounted(at path: String, pageSize: Int, in fs: KernelFiles) -> Bool {
        let canonical = canonicalPath(path, in: fs)
        let identity = try? Sys.fileStatus(fs.path(path))
        return StaleHugepageFiles.mounts(in: fs).contains { mount in
            guard mount.pageSize.bytes == pageSize else { return false }
            if mount.path == canonical { return true }
            guard let identity, let root = try? Sys.fileStatus(fs.path(mount.path)) else { return false }
            return root.device == identity.device && root.inode == identity.inode
        }
    }

    /// The hugetlbfs mount of another page size at `path`, if any.
    static func otherHugetlbfs(at path: String, pageSize: Int, in fs: KernelFiles) -> HugetlbfsMount? {
        let canonical = canonicalPath(path, in: fs)
        let mounts = StaleHugepageFiles.mounts(in: fs)
        guard !mounts.contains(where: { $0.path == canonical && $0.pageSize.bytes == pageSize }) else { return nil }
        return mounts.last { $0.path == canonical }
    }

    /// `path` as /proc/mounts shows a mount point: absolute, with symbolic
    /// links, ".", ".." and repeated or trailing "/" resolved. The part that
    /// exists is resolved by `realpath(3)` below `fs`'s root; a missing rest
    /// is appended as written (without "." and "").
    package static func canonicalPath(_ path: String, in fs: KernelFiles = .live) -> String {
        var components: [String] = []
        for component in path.split(separator: "/") where component != "." {
            if component == ".." { _ = components.popLast() } else { components.append(String(component)) }
        }
        let rootReal = (try? Sys.realPath(fs.root)) ?? fs.root
        var missing: [String] = []
        while true {
            let candidate = "/" + components.joined(separator: "/")
            if let real = try? Sys.realPath(fs.path(candidate)) {
                var inside = fs.isLive ? real : String(real.dropFirst(rootReal.count))
                if inside.isEmpty { inside = "/" }
                if missing.isEmpty { return inside }
                return (inside == "/" ? "" : inside) + "/" + missing.reversed().joined(separator: "/")
            }
            guard let last = components.popLast() else { return "/" + missing.reversed().joined(separator: "/") }
            missing.append(last)
        }
    }

    /// Checks, before anything changes, that hugetlbfs can be mounted at
    /// `path` (below `fs`'s root): it is a directory, or does not exist and
    /// its nearest existing ancestor is a directory. Returns the directories
    /// that must be created, outermost first. Calls `stat(2)`.
    package static func checkMountPoint(_ path: String, in fs: KernelFiles = .live) throws(MountPointError) -> [String] {
        var missing: [String] = []
        var current = path
        while true {
            do {
                let status = try Sys.fileStatus(fs.path(current))
                guard status.isDirectory else {
                    throw MountPointError.notADirectory(path, blocker: current, kind: status.isRegular ? "a regular file" : "something else")
                }
                return missing.reversed()
            } catch let error as MountPointError {
                throw error
            } catch let error as SystemCallError where error.errno == .noSuchFileOrDirectory {
                missing.append(current)
                let parent = parentDirectory(of: current)
                guard parent != current else { return missing.reversed() }
                current = parent
            } catch let error as SystemCallError where error.errno == .notDirectory {
                // A file on the way: found as the walk goes up.
                let parent = parentDirectory(of: current)
                guard parent != current else { throw MountPointError.notADirectory(path, blocker: current, kind: "something else") }
                missing.removeAll()
                current = parent
            } catch {
                throw MountPointError(path: path, problem: "\(current) cannot be examined: \(error)")
            }
        }
    }

    /// "/a/b" → "/a"; "/a" → "/".
    static func parentDirectory(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "/" }
        return slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
    }

    /// The mount points `setup --mount PATH` uses: PATH itself for one
    /// size, PATH/<size> (PATH/2M, PATH/1G) for several.
    package static func mountPoints(_ path: String, for requests: [HugepageRequest]) -> [(path: String, pageSize: Int)] {
        if requests.count == 1 { return [(path, requests[0].pageSize)] }
        let base = path.hasSuffix("/") ? String(path.dropLast()) : path
        return requests.map { (base + "/" + ByteCount.format($0.pageSize), $0.pageSize) }
    }

    /// What ``apply(_:node:mount:in:)`` did: the grants and the mounts.
    package struct Applied: Sendable {
        package var grants: [HugepageGrant] = []
        package var mounts: [(path: String, pageSize: Int, mounted: Bool)] = []
    }

    /// Sets the pools and mounts hugetlbfs, all checked first
    /// (``checkMountPoint(_:in:)`` for every mount point) so a bad path
    /// changes nothing. If a step still fails (a refused write, a refused
    /// mount), everything done so far is undone, newest first: mounts made
    /// are unmounted, directories created are removed, and every pool
    /// written is set back to its previous size. The error says what failed
    /// and what was undone, or exactly what is left changed and how to
    /// restore it. Writes `nr_hugepages`; calls `mkdir(2)`, `mount(2)`, and
    /// `umount2(2)`, `rmdir(2)` to roll back.
    package static func apply(
        _ requests: [HugepageRequest], node: Int?, mount: String?, in fs: KernelFiles = .live
    ) throws(SetupError) -> Applied {
        let points = mount.map { mountPoints(canonicalPath($0, in: fs), for: requests) } ?? []
        var toCreate: [[String]] = []
        for point in points {
            do {
                toCreate.append(try checkMountPoint(point.path, in: fs))
            } catch {
                throw .invalidMountPoint(error)
            }
            if let other = otherHugetlbfs(at: point.path, pageSize: point.pageSize, in: fs) {
                throw .invalidMountPoint(MountPointError(
                    path: point.path,
                    problem: "a hugetlbfs of \(other.pageSize) pages is mounted there; choose another path or unmount it first "
                        + "(umount \(point.path))"))
            }
        }
        var progress = Progress()
        do {
            try applySteps(requests, node: node, mountPoints: Array(zip(points, toCreate)), in: fs, progress: &progress)
        } catch {
            throw .failed(error, rollBack(grants: progress.applied.grants, mounted: progress.mounted,
                                          created: progress.created, node: node, in: fs))
        }
        return progress.applied
    }

    /// What ``applySteps(_:node:mountPoints:in:progress:)`` has done so far.
    struct Progress {
        var applied = Applied()
        var created: [String] = []
        var mounted: [String] = []
    }

    private static func applySteps(
        _ requests: [HugepageRequest], node: Int?, mountPoints: [((path: String, pageSize: Int), [String])],
        in fs: KernelFiles, progress: inout Progress
    ) throws(DiagnosticsError) {
        for request in requests {
            progress.applied.grants.append(try reserve(request, node: node, in: fs))
        }
        for (point, directories) in mountPoints {
            if isMounted(at: point.path, pageSize: point.pageSize, in: fs) {
                progress.applied.mounts.append((point.path, point.pageSize, false))
                continue
            }
            for directory in directories where !progress.created.contains(directory) {
                do { try Sys.makeDirectory(fs.path(directory)) } catch { throw .systemCall(error) }
                progress.created.append(directory)
            }
            do { try Sys.mountHugetlbfs(at: fs.path(point.path), pageSize: point.pageSize) } catch { throw .systemCall(error) }
            progress.mounted.append(point.path)
            progress.applied.mounts.append((point.path, point.pageSize, true))
        }
    }

    /// Undoes `setup`'s changes, newest first; returns what was undone and
    /// what could not be.
    static func rollBack(grants: [HugepageGrant], mounted: [String], created: [String], node: Int?, in fs: KernelFiles) -> SetupRollback {
        var rollback = SetupRollback()
        for path in mounted.reversed() {
            do {
                try Sys.unmount(fs.path(path))
                rollback.undone.append("unmounted \(path)")
            } catch {
                rollback.left.append("hugetlbfs is still mounted at \(path) (\(error.errno)): umount \(path)")
            }
        }
        for path in created.reversed() {
            do {
                try Sys.removeDirectory(fs.path(path))
                rollback.undone.append("removed \(path)")
            } catch {
                rollback.left.append("the directory \(path) was created (\(error.errno)): rmdir \(path)")
            }
        }
        for grant in grants.reversed() {
            let scope = grant.node.map { "on node \($0)" } ?? "system-wide"
            let size = ByteCount.format(grant.pageSize)
            guard let pageSize = PageSize(rawValue: grant.pageSize) else { continue }
            let file = HugepagePoolDirectory(pageSize, node: grant.node).countFile
            let now = (try? counter("nr_hugepages", pageSize: grant.pageSize, node: grant.node, in: fs)) ?? grant.granted
            if now == grant.previous { continue }
            do {
                try Sys.writeFile(fs.path(file), "\(grant.previous)\n")
                let back = (try? counter("nr_hugepages", pageSize: grant.pageSize, node: grant.node, in: fs)) ?? -1
                if back == grant.previous {
                    rollback.undone.append("\(size) pool \(scope) set back to \(grant.previous) (it was \(now))")
                } else {
                    rollback.left.append("the \(size) pool \(scope) is \(back), not \(grant.previous) as before: "
                                         + "echo \(grant.previous) > \(file)")
                }
            } catch {
                rollback.left.append("the \(size) pool \(scope) is now \(now) (was \(grant.previous); \(error.errno)): "
                                     + "echo \(grant.previous) > \(file)")
            }
        }
        return rollback
    }
}

/// Why `setup --mount PATH` cannot mount at PATH (a usage error, found
/// before anything changes).
package struct MountPointError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The mount point asked for.
    package var path: String
    /// What is wrong with it, and what to do.
    package var problem: String

    /// `blocker` (PATH itself or an ancestor) exists and is `kind` ("a
    /// regular file"), not a directory.
    package static func notADirectory(_ path: String, blocker: String, kind: String) -> MountPointError {
        MountPointError(path: path, problem: "\(blocker) is \(kind), not a directory; give a directory (it is created if missing)")
    }

    package var description: String { "cannot mount hugetlbfs at \(path): \(problem)" }
}

/// What `setup` undid after a failed step, and what it could not undo.
package struct SetupRollback: Equatable, Sendable {
    package var undone: [String] = []
    package var left: [String] = []
}

/// Why `setup` failed.
package enum SetupError: Error, Sendable, CustomStringConvertible {
    /// A mount point that cannot be used; nothing was changed.
    case invalidMountPoint(MountPointError)
    /// A step failed after others had changed the system; the rollback says
    /// what was undone and what is left changed.
    case failed(DiagnosticsError, SetupRollback)

    package var description: String {
        switch self {
        case .invalidMountPoint(let error):
            return error.description
        case let .failed(error, rollback):
            var text = "\(error)"
            if rollback.left.isEmpty {
                text += rollback.undone.isEmpty ? "; nothing had been changed" : "; rolled back: " + rollback.undone.joined(separator: ", ")
            } else {
                if !rollback.undone.isEmpty { text += "; rolled back: " + rollback.undone.joined(separator: ", ") }
                text += "; NOT rolled back: " + rollback.left.joined(separator: "; ")
            }
            return text
        }
    }
}

/// Why a "2M:512,1G:2" page request was rejected (a usage error).
package enum HugepageRequestError: Error, Equatable, Sendable, CustomStringConvertible {
    case malformed(String)
    case unsupportedSize(String, available: [Int])
    case badCount(String, reason: String)

    package var description: String {
        switch self {
        case .malformed(let item):
            return "malformed page request \"\(item)\": expected SIZE:COUNT such as 2M:512 or 1G:2"
        case .unsupportedSize(let size, let available):
            let list = available.map { ByteCount.format($0) }.joined(separator: ", ")
            return "unknown or unsupported page size \"\(size)\"; this kernel offers \(list.isEmpty ? "none" : list)"
        case .badCount(let count, let reason):
            return "bad page count \"\(count)\": \(reason)"
        }
    }
}
