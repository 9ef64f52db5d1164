import Synchronization
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// A pool stand-in that counts how many instances are alive.
private struct CountedPool: ~Copyable {
    static let alive = Atomic<Int>(0)
    let node: Int
    init(node: Int) {
        self.node = node
        Self.alive.add(1, ordering: .relaxed)
    }
    deinit { Self.alive.subtract(1, ordering: .relaxed) }
}

private func isNil<T: ~Copyable>(_ value: consuming T?) -> Bool {
    switch consume value {
    case .none: true
    case .some: false
    }
}

private struct PoolCreationFailed: Error, Equatable {}

@Suite("PerNodePoolSet", .serialized)
struct PerNodePoolSetTests {
    @Test("on this one-node machine the calling thread gets node 0's pool")
    func localPoolIsNode0() throws {
        guard let set = PerNodePoolSet<String>(nodes: [0], makePool: { node in "pool of node \(node)" }) else {
            Issue.record("no pool set for node 0")
            return
        }
        #expect(set.nodes == [0])
        #expect(set.localNode == 0)
        #expect(set.local == "pool of node 0")
        #expect(set.withLocalPool { $0 } == "pool of node 0")
        #expect(set[node: 0] == "pool of node 0")
        #expect(set[node: 1] == nil)
    }

    @Test("a thread on a node without a pool gets the nearest pool; noncopyable pools are destroyed once")
    func noncopyablePoolsAndFallback() throws {
        let before = CountedPool.alive.load(ordering: .relaxed)
        do {
            guard let set = PerNodePoolSet<CountedPool>(nodes: [3, 0], makePool: { CountedPool(node: $0) }) else {
                Issue.record("no pool set for nodes [3, 0]")
                return
            }
            #expect(CountedPool.alive.load(ordering: .relaxed) == before + 2)
            #expect(set.withLocalPool { $0.node } == 0)
            #expect(set.withPool(forNode: 3) { $0.node } == 3)
            #expect(set.withPool(forNode: 1) { $0.node } == nil)
        }
        #expect(CountedPool.alive.load(ordering: .relaxed) == before)
    }

    @Test("a throwing pool maker destroys the pools already made")
    func makerThrows() throws {
        let before = CountedPool.alive.load(ordering: .relaxed)
        #expect(throws: PoolCreationFailed()) {
            _ = try PerNodePoolSet<CountedPool>(nodes: [0, 1, 2]) { node throws(PoolCreationFailed) in
                if node == 2 { throw PoolCreationFailed() }
                return CountedPool(node: node)
            }
        }
        #expect(CountedPool.alive.load(ordering: .relaxed) == before)
    }

    @Test("empty, duplicate or negative node lists make no set")
    func badNodeLists() {
        for nodes in [[], [0, 0], [-1]] {
            let refused = isNil(PerNodePoolSet<Int>(nodes: nodes) { $0 })
            #expect(refused, "nodes \(nodes)")
        }
    }
}
