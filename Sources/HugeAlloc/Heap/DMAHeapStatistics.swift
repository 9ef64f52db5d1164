import Synchronization

/// What a heap holds: live and mapped bytes, per size class, per thread,
/// per node, and how fragmented its pages are.
public struct DMAHeapStatistics: Sendable {
    /// One size class.
    public struct SizeClass: Sendable, Hashable {
        public var size: Int
        /// Bytes of a span of the class.
        public var spanBytes: Int
        public var allocations: Int
        public var frees: Int
        public var liveObjects: Int { allocations - frees }
        public var liveBytes: Int { liveObjects * size }
    }

    /// One thread's cache (live threads only; exited threads are summed into the classes).
    public struct ThreadCounters: Sendable, Hashable {
        public var allocations: Int
        public var frees: Int
    }

    /// One node.
    public struct Node: Sendable, Hashable {
        public var node: Int
        /// Hugepage bytes mapped now: pages in the heap's range and large blocks.
        public var mappedBytes: Int
        public var peakMappedBytes: Int
        /// Pages with nothing in them, kept (``DMAHeap/Options/retentionBytes``).
        public var emptyPages: Int
        /// Bytes of granules free inside mapped pages.
        public var freeGranuleBytes: Int
        /// The longest run of free granules in one page.
        public var largestFreeRunBytes: Int
        public var largeBlocks: Int
        public var largeBytes: Int
        public var directBytes: Int
        /// Pages mapped and given back since creation.
        public var grows: Int
        public var shrinks: Int
    }

    /// Per-class counters summed over threads (internal form).
    struct Counters: Sendable {
        var allocations: [Int] = []
        var frees: [Int] = []

        mutating func add(_ other: Counters) {
            if allocations.isEmpty {
                self = other
                return
            }
            for i in other.allocations.indices {
                allocations[i] += other.allocations[i]
                frees[i] += other.frees[i]
            }
        }
    }

    public var sizeClasses: [SizeClass]
    public var threads: [ThreadCounters]
    public var nodes: [Node]

    /// Usable bytes of live allocations: class sizes, direct granules, large blocks.
    public var liveBytes: Int {
        sizeClasses.reduce(0) { $0 + $1.liveBytes } + nodes.reduce(0) { $0 + $1.directBytes + $1.largeBytes }
    }
    public var mappedBytes: Int { nodes.reduce(0) { $0 + $1.mappedBytes } }
    /// The sum of each node's peak.
    public var peakMappedBytes: Int { nodes.reduce(0) { $0 + $1.peakMappedBytes } }
    /// The share of mapped bytes not holding live allocations (0 to 1).
    public var fragmentation: Double {
        mappedBytes == 0 ? 0 : max(0, 1 - Double(liveBytes) / Double(mappedBytes))
    }
}

extension DMAHeap {
    /// Reads every thread's counters and every node's pages (takes the
    /// registry lock and each node's lock).
    public var statistics: DMAHeapStatistics {
        let (live, retired): ([DMAHeapStatistics.Counters], DMAHeapStatistics.Counters) = HeapRegistry.state.withLock { s in
            guard let entry = s.entries[slot], entry.id == id else { return ([], .init()) }
            let caches = entry.caches.compactMap { HeapThreadCache(bits: $0) }.map { counters(of: $0) }
            return (caches, entry.retired)
        }
        var total = DMAHeapStatistics.Counters(allocations: Array(repeating: 0, count: classes.count),
                                              frees: Array(repeating: 0, count: classes.count))
        total.add(retired)
        for c in live { total.add(c) }
        let sizeClasses = (0..<classes.count).map { c in
            DMAHeapStatistics.SizeClass(size: unsafe classes.sizes[c],
                                        spanBytes: unsafe classes.spanGranules[c] << HeapSizeClasses.granuleShift,
                                        allocations: total.allocations[c], frees: total.frees[c])
        }
        let threads = live.map { DMAHeapStatistics.ThreadCounters(allocations: $0.allocations.reduce(0, +), frees: $0.frees.reduce(0, +)) }
        let nodeStats = nodes.map { node in
            node.state.withLock { s in
                var free = 0, largest = 0
                for page in s.mapped {
                    let meta = space.meta(page)
                    free += unsafe meta.header.pointee.freeGranules << HeapSizeClasses.granuleShift
                    largest = max(largest, meta.largestFreeRun << HeapSizeClasses.granuleShift)
                }
                return DMAHeapStatistics.Node(
                    node: node.node, mappedBytes: s.mappedBytes, peakMappedBytes: s.peakBytes, emptyPages: s.emptyPages,
                    freeGranuleBytes: free, largestFreeRunBytes: largest, largeBlocks: s.large.count,
                    largeBytes: s.large.values.reduce(0) { $0 + $1.length }, directBytes: s.directBytes,
                    grows: s.grows, shrinks: s.shrinks)
            }
        }
        return DMAHeapStatistics(sizeClasses: sizeClasses, threads: threads, nodes: nodeStats)
    }

    /// One cache's per-class counters.
    func counters(of cache: HeapThreadCache) -> DMAHeapStatistics.Counters {
        let base = unsafe cache.counters(at: countersOffset)
        var result = DMAHeapStatistics.Counters()
        result.allocations = (0..<classes.count).map { unsafe base[$0].load(ordering: .relaxed) }
        result.frees = (0..<classes.count).map { unsafe base[classes.count + $0].load(ordering: .relaxed) }
        return result
    }
}
