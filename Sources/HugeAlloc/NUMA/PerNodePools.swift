/// One pool per NUMA node; each thread is handed the pool of the node it
/// runs on.
///
/// The pools are made once, by a closure given the node (typically a
/// mempool whose memory is bound to that node). `Pool` may be noncopyable:
/// access goes through ``withLocalPool(_:)`` and ``withPool(forNode:_:)``,
/// which lend the pool for the duration of a closure.
///
/// Finding the calling thread's node costs a `sched_getcpu(3)` (glibc reads
/// the CPU from the thread's rseq area, no system call) and a table lookup
/// built at creation from libnuma's CPU-to-node map. The node is not cached
/// per thread: the scheduler may move a thread to another node, and a cached
/// node would then hand out remote memory. When `sched_getcpu` fails, the
/// node comes from `getcpu(2)`.
///
/// A thread on a node without a pool gets the pool of the nearest node that
/// has one (smallest `numa_distance(3)`, then lowest node id).
@safe public struct PerNodePoolSet<Pool: ~Copyable>: ~Copyable {
    /// The nodes that have a pool, in the order given at creation.
    public let nodes: [Int]
    private let pools: UnsafeMutablePointer<Pool>
    /// Node id → index into `pools` (its own pool or the nearest node's).
    private let slotOfNode: [Int]
    /// CPU number → index into `pools`, or -1 when the CPU's node is unknown.
    private let slotOfCPU: [Int]

    /// Makes one pool per node of `nodes` with `makePool(node)`. When
    /// `makePool` throws, the pools made so far are destroyed and the error
    /// is rethrown. Returns nil, making no pool, when `nodes` is empty,
    /// holds a duplicate or a negative number.
    public init?<E: Error>(nodes: [Int], makePool: (Int) throws(E) -> Pool) throws(E) {
        guard !nodes.isEmpty, Set(nodes).count == nodes.count, nodes.allSatisfy({ $0 >= 0 }) else {
            return nil
        }
        let pools = UnsafeMutablePointer<Pool>.allocate(capacity: nodes.count)
        var made = 0
        do {
            for node in nodes {
                unsafe (pools + made).initialize(to: try makePool(node))
                made += 1
            }
        } catch {
            unsafe pools.deinitialize(count: made)
            unsafe pools.deallocate()
            throw error
        }
        unsafe self.pools = pools
        self.nodes = nodes

        // Nearest node with a pool, for every node up to the highest known one.
        let highestNode = max(Sys.highestNode, nodes.max()!)
        var slotOfNode = [Int](repeating: 0, count: highestNode + 1)
        for node in 0...highestNode {
            if let own = nodes.firstIndex(of: node) {
                slotOfNode[node] = own
                continue
            }
            var best = 0
            var bestDistance = Int.max
            for (slot, candidate) in nodes.enumerated() {
                let distance = Sys.nodeDistance(node, candidate) ?? Int.max - 1
                if distance < bestDistance || (distance == bestDistance && candidate < nodes[best]) {
                    best = slot
                    bestDistance = distance
                }
            }
            slotOfNode[node] = best
        }
        self.slotOfNode = slotOfNode
        self.slotOfCPU = (0..<max(1, Sys.configuredCPUCount)).map { cpu in
            guard let node = Sys.nodeOfCPU(cpu), node < slotOfNode.count else { return -1 }
            return slotOfNode[node]
        }
    }

    deinit {
        unsafe pools.deinitialize(count: nodes.count)
        unsafe pools.deallocate()
    }

    /// The node whose pool ``withLocalPool(_:)`` lends the calling thread now.
    public var localNode: Int { nodes[localSlot()] }

    /// Lends `body` the pool of the calling thread's node (or the nearest
    /// node with a pool).
    public func withLocalPool<R: ~Copyable, E: Error>(
        _ body: (borrowing Pool) throws(E) -> R
    ) throws(E) -> R {
        try unsafe body(pools[localSlot()])
    }

    /// Lends `body` the pool made for `node`; nil when `node` has no pool
    /// of its own.
    public func withPool<R, E: Error>(
        forNode node: Int, _ body: (borrowing Pool) throws(E) -> R
    ) throws(E) -> R? {
        guard let slot = nodes.firstIndex(of: node) else { return nil }
        return try unsafe body(pools[slot])
    }

    private func localSlot() -> Int {
        if let cpu = Sys.currentCPU(), cpu < slotOfCPU.count, slotOfCPU[cpu] >= 0 {
            return slotOfCPU[cpu]
        }
        if let node = try? Sys.getcpu().node, node >= 0, node < slotOfNode.count {
            return slotOfNode[node]
        }
        return 0
    }
}

extension PerNodePoolSet where Pool: Copyable {
    /// The pool of the calling thread's node (or the nearest node with a pool).
    public var local: Pool { unsafe pools[localSlot()] }

    /// The pool made for `node`, or nil when it has none.
    public subscript(node node: Int) -> Pool? {
        guard let slot = nodes.firstIndex(of: node) else { return nil }
        return unsafe pools[slot]
    }
}

extension PerNodePoolSet: @unchecked Sendable where Pool: Sendable & ~Copyable {}
