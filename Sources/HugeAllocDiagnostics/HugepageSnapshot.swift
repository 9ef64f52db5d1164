import HugeAlloc

/// The machine's hugepage and DMA-memory state at one moment, for
/// monitoring (`inspect-memory metrics`) and the live view
/// (`inspect-memory watch`): the pools per size and node, the hugetlbfs
/// mounts, the processes holding hugepages, stale files, the memlock limit
/// and, with CAP_SYS_ADMIN, how contiguous the free frames are.
package struct HugepageSnapshot: Sendable {
    /// One pool's counters on one node (sysfs `nodeN/hugepages`).
    package struct NodePool: Equatable, Sendable {
        package var node: Int
        package var counts: NodeHugepageCounts
    }

    /// The free frames of one size on one node, as runs.
    package struct Contiguity: Equatable, Sendable {
        package var node: Int
        package var pageSize: PageSize
        package var freeFrames: Int
        package var freeRuns: Int
        package var largestFreeRunBytes: Int
    }

    /// Stale files (nobody has them open or mapped) on one mount.
    package struct StaleFiles: Equatable, Sendable {
        package var mount: String
        package var files: Int
        package var bytes: Int
    }

    /// The system-wide pools (/sys/kernel/mm/hugepages).
    package var pools: [HugepagePool]
    package var nodePools: [NodePool]
    package var mounts: [HugetlbfsMount]
    package var holders: [HugepageHolder]
    /// Per mount, including mounts without stale files; empty unless asked for.
    package var staleFiles: [StaleFiles]
    package var memlock: MemlockLimit
    /// Per node and size; nil when not asked for or when the frame tables
    /// cannot be read (`contiguityError` says why).
    package var contiguity: [Contiguity]?
    package var contiguityError: String?

    /// Reads the snapshot below `fs`'s root: ``SystemInventory`` for pools,
    /// mounts and the memlock limit, ``HugepageHolders`` (/proc/*/smaps),
    /// and when asked ``StaleHugepageFiles`` (the mounts against
    /// /proc/*/fd and /proc/*/maps) and ``PhysicalHugepageMap``
    /// (/proc/kpageflags, /proc/kpagecount; needs CAP_SYS_ADMIN).
    package static func read(staleFiles: Bool = false, contiguity: Bool = false,
                             in fs: KernelFiles = .live) throws(DiagnosticsError) -> HugepageSnapshot {
        let inventory: SystemInventory
        do {
            inventory = try SystemInventory.read(root: fs.root)
        } catch {
            switch error {
            case .unreadable(let file): throw .unreadable(file)
            case .malformed(let file): throw .malformed(file)
            case .systemCall(let call): throw .systemCall(call)
            }
        }
        var snapshot = HugepageSnapshot(
            pools: inventory.hugepagePools,
            nodePools: inventory.hugepagePools.flatMap { pool in
                inventory.nodeCounts(for: pool.pageSize).map { NodePool(node: $0.node, counts: $0.counts) }
            },
            mounts: inventory.hugetlbfsMounts, holders: HugepageHolders.scan(in: fs), staleFiles: [],
            memlock: inventory.memlockLimit, contiguity: nil, contiguityError: nil)
        if staleFiles {
            let found = StaleHugepageFiles.search(in: fs).files
            snapshot.staleFiles = inventory.hugetlbfsMounts.map { mount in
                let here = found.filter { $0.mount == mount.path }
                return StaleFiles(mount: mount.path, files: here.count, bytes: here.reduce(0) { $0 + $1.bytes })
            }
        }
        if contiguity {
            do {
                let map = try PhysicalHugepageMap.read(in: fs)
                snapshot.contiguity = map.nodes.flatMap { node in
                    map.pageSizes.map { size in
                        let runs = node.freeRuns(of: size)
                        return Contiguity(node: node.node, pageSize: size, freeFrames: runs.reduce(0) { $0 + $1.frames },
                                          freeRuns: runs.count, largestFreeRunBytes: runs.map(\.bytes).max() ?? 0)
                    }
                }
            } catch {
                snapshot.contiguityError = error.description
            }
        }
        return snapshot
    }
}
