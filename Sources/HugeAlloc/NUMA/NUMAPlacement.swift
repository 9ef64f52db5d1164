import SystemPackage

/// Sets, reads and checks where the pages of a mapping live.
///
/// The order of use: ``checkFreeHugepages(node:pageSize:needed:root:)``
/// before mapping, ``apply(_:to:length:)`` on the reserved range before any
/// page faults in, then ``nodes(of:length:pageSize:)`` and
/// ``verify(_:nodes:)`` once the pages are in.
public enum NUMAPlacement {
    /// Sets the policy on a reserved, not-yet-faulted range. Pages already
    /// faulted in keep their node.
    ///
    /// `.any` makes no call. `.bind`, `.preferred` and `.interleave` check
    /// their nodes against the nodes this process may use first, so an
    /// unknown node is ``NUMAError/noSuchNode(_:)``.
    /// Calls `mbind(2)` with `MPOL_BIND`, `MPOL_PREFERRED`, `MPOL_INTERLEAVE`
    /// or `MPOL_LOCAL`.
    public static func apply(
        _ policy: NUMAPolicy, to address: UnsafeMutableRawPointer, length: Int
    ) throws(NUMAError) {
        try unsafe checkRange(address, length: length)
        let mode: Sys.MemoryPolicyMode
        switch policy {
        case .any: return
        case .local: mode = .local
        case .bind: mode = .bind
        case .preferred: mode = .preferred
        case .interleave(let nodes):
            if nodes.isEmpty { throw .emptyNodeList }
            mode = .interleave
        }
        try checkNodes(policy.nodes)
        do {
            try unsafe Sys.mbind(address, length: length, mode: mode, nodes: policy.nodes)
        } catch {
            throw .systemCall(error)
        }
    }

    /// The node of every page of `[address, address+length)`, one entry per
    /// `pageSize` stride, after the pages are faulted in.
    ///
    /// Calls `move_pages(2)` with a null node list (which only reports);
    /// when that call is unavailable, or fails for a page for a reason other
    /// than "not present", falls back to `get_mempolicy(2)` with
    /// `MPOL_F_NODE | MPOL_F_ADDR` for those pages. A page not faulted in is
    /// ``NUMAError/pageNotPresent(page:)``.
    public static func nodes(
        of address: UnsafeMutableRawPointer, length: Int, pageSize size: PageSize
    ) throws(NUMAError) -> [Int] {
        try unsafe checkRange(address, length: length)
        let pageSize = size.bytes
        let count = (length + pageSize - 1) / pageSize
        let pages: [UnsafeMutableRawPointer?] = unsafe (0..<count).map { unsafe address + $0 * pageSize }
        var status: [Int32]
        do {
            status = try unsafe Sys.pageNodes(pages)
        } catch {
            // No move_pages (ENOSYS, seccomp): ask page by page below.
            status = [Int32](repeating: -1, count: count)
        }
        var nodes = [Int](repeating: -1, count: count)
        for index in 0..<count {
            let code = status[index]
            if code >= 0 {
                nodes[index] = Int(code)
            } else if code == -Errno.noSuchFileOrDirectory.rawValue {
                throw .pageNotPresent(page: index)
            } else {
                do {
                    nodes[index] = try unsafe Sys.nodeOfPage(pages[index]!)
                } catch {
                    throw .systemCall(error)
                }
            }
        }
        return nodes
    }

    /// Checks page nodes from ``nodes(of:length:pageSize:)`` against a policy.
    ///
    /// `.bind(n)` requires every page on `n`; `.interleave(list)` requires
    /// every page on a node of `list`. `.any`, `.local` and `.preferred` may
    /// fall back to any node by definition and always pass. Throws
    /// ``NUMAError/misplaced(policy:firstPage:foundNode:misplacedPages:totalPages:)``
    /// naming the first page that is elsewhere.
    public static func verify(_ policy: NUMAPolicy, nodes: [Int]) throws(NUMAError) {
        let allowed: Set<Int>
        switch policy {
        case .any, .local, .preferred: return
        case .bind(let node): allowed = [node]
        case .interleave(let list): allowed = Set(list)
        }
        var first: (page: Int, node: Int)?
        var misplaced = 0
        for (page, node) in nodes.enumerated() where !allowed.contains(node) {
            if first == nil { first = (page, node) }
            misplaced += 1
        }
        if let first {
            throw .misplaced(
                policy: policy, firstPage: first.page, foundNode: first.node,
                misplacedPages: misplaced, totalPages: nodes.count)
        }
    }

    /// Checks, before mapping, that `node` has at least `needed` free
    /// hugepages of `pageSize`. The error names the node, the size, needed
    /// and free, and the command that reserves enough on that node.
    ///
    /// Reads `/sys/devices/system/node/nodeN/hugepages/hugepages-<size>kB/free_hugepages`
    /// and `nr_hugepages` under `root`. The count is a snapshot: other
    /// processes may take pages between this check and the fault.
    public static func checkFreeHugepages(
        node: Int, pageSize: PageSize, needed: Int, root: String = "/"
    ) throws(NUMAError) {
        guard needed > 0 else { return }
        let files = KernelFiles(root: root)
        let directory = HugepagePoolDirectory(pageSize, node: node)
        guard let counters = try? directory.counters(in: files) else {
            throw .noHugepagePool(node: node, pageSize: pageSize, path: files.path(directory.kernelPath))
        }
        if counters.free < needed {
            throw .notEnoughHugepages(HugepageShortage(
                pageSize: pageSize, node: node, needed: needed, free: counters.free, total: counters.total))
        }
    }

    /// The node of the CPU the calling thread runs on. Calls `getcpu(2)`.
    public static func currentNode() throws(NUMAError) -> Int {
        do {
            return try Sys.getcpu().node
        } catch {
            throw .systemCall(error)
        }
    }

    /// The nodes this process may allocate on (its cpuset's memory nodes).
    /// Calls `get_mempolicy(2)` with `MPOL_F_MEMS_ALLOWED`.
    public static func allowedNodes() throws(NUMAError) -> [Int] {
        do {
            return try Sys.allowedNodes()
        } catch {
            throw .systemCall(error)
        }
    }

    /// The policy the kernel holds for the range containing `address`, as
    /// set by ``apply(_:to:length:)`` (`MPOL_DEFAULT` reads back as `.any`).
    /// Calls `get_mempolicy(2)` with `MPOL_F_ADDR`.
    public static func policy(of address: UnsafeMutableRawPointer) throws(NUMAError) -> NUMAPolicy {
        let policy: (mode: Int32, nodes: [Int])
        do {
            policy = try unsafe Sys.memoryPolicy(of: address)
        } catch {
            throw .systemCall(error)
        }
        switch policy.mode {
        case Sys.MemoryPolicyMode.bind.rawValue where policy.nodes.count == 1:
            return .bind(policy.nodes[0])
        case Sys.MemoryPolicyMode.preferred.rawValue where policy.nodes.count == 1:
            return .preferred(policy.nodes[0])
        case Sys.MemoryPolicyMode.preferred.rawValue where policy.nodes.isEmpty,
             Sys.MemoryPolicyMode.local.rawValue:
            return .local
        case Sys.MemoryPolicyMode.interleave.rawValue:
            return .interleave(policy.nodes)
        case 0:
            return .any
        default:
            throw .unexpressiblePolicy(mode: Int(policy.mode), nodes: policy.nodes)
        }
    }

    /// How many pages each node holds, from ``nodes(of:length:pageSize:)``.
    public static func pageCounts(_ nodes: [Int]) -> [Int: Int] {
        nodes.reduce(into: [:]) { $0[$1, default: 0] += 1 }
    }

    // MARK: - helpers

    private static func checkRange(_ address: UnsafeMutableRawPointer, length: Int) throws(NUMAError) {
        guard length > 0 else { throw .invalidRange("length \(length) must be positive") }
        let misalignment = Int(bitPattern: address) & (Sys.basePageSize - 1)
        guard misalignment == 0 else {
            throw .invalidRange("address is not aligned to the \(Sys.basePageSize)-byte base page")
        }
    }

    private static func checkNodes(_ nodes: [Int]) throws(NUMAError) {
        let allowed: [Int]
        do {
            allowed = try Sys.allowedNodes()
        } catch {
            throw .systemCall(error)
        }
        if let bad = nodes.first(where: { !allowed.contains($0) }) {
            throw .noSuchNode(UnknownNode(node: bad, available: allowed))
        }
    }
}

extension NUMAPlacement {
    /// Pins the calling thread to `cpus`, so that `.local` placement and a
    /// ``PerNodePoolSet`` follow those CPUs' node. Calls `sched_setaffinity(2)`.
    public static func pinCurrentThread(toCPUs cpus: [Int]) throws(NUMAError) {
        guard !cpus.isEmpty, cpus.allSatisfy({ $0 >= 0 }) else {
            throw .invalidRange("CPU list \(cpus) must be non-empty and non-negative")
        }
        do {
            try Sys.setAffinity(cpus: cpus)
        } catch {
            throw .systemCall(error)
        }
    }

    /// The CPUs the calling thread may run on. Calls `sched_getaffinity(2)`.
    public static func currentThreadCPUs() throws(NUMAError) -> [Int] {
        do {
            return try Sys.affinity()
        } catch {
            throw .systemCall(error)
        }
    }
}
