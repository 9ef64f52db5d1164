import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Synchronization
import Testing

/// Frees from other threads than the allocating one: while the owner is
/// alive (remote frees), after it exited (abandoned spans), and many threads
/// mixing; afterwards the statistics show nothing live and, after trim and
/// thread exit, no more mapped than the retention.
@Suite(.usesHugepagePool) struct HeapThreadTests {
    /// One of each kind: small classes, one-object classes, direct granules, large blocks.
    static let sizes = [64, 100, 1000, 5000, 8192, 20_000, 100_000, 300_000, twoMiB, 3 << 20]

    /// Pointers handed between threads, as bit patterns. Guarded by an
    /// `NSLock` (a pthread mutex, which ThreadSanitizer sees): the hand-off
    /// is what orders one thread's allocation before another's free, and
    /// TSan does not see `Synchronization.Mutex` take its lock
    /// (docs/testing.md).
    final class Shelf: @unchecked Sendable {
        private let lock = NSLock()
        private var items: [(address: UInt, size: Int, fill: UInt8)] = []
        func put(_ p: UnsafeMutableRawPointer, _ size: Int, _ fill: UInt8) {
            lock.withLock { items.append((UInt(bitPattern: p), size, fill)) }
        }
        func take(at random: Int) -> (pointer: UnsafeMutableRawPointer, size: Int, fill: UInt8)? {
            lock.withLock {
                guard !items.isEmpty else { return nil }
                let item = items.remove(at: random % items.count)
                return (UnsafeMutableRawPointer(bitPattern: item.address)!, item.size, item.fill)
            }
        }
        func takeAll() -> [(pointer: UnsafeMutableRawPointer, size: Int, fill: UInt8)] {
            lock.withLock {
                defer { items = [] }
                return items.map { (UnsafeMutableRawPointer(bitPattern: $0.address)!, $0.size, $0.fill) }
            }
        }
    }

    func expectEmpty(_ heap: DMAHeap, retention: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        heap.trim()
        let statistics = heap.statistics
        #expect(statistics.liveBytes == 0, "live bytes after every free: \(statistics.liveBytes)", sourceLocation: sourceLocation)
        for c in statistics.sizeClasses {
            #expect(c.allocations == c.frees, "class \(c.size): \(c.allocations) allocations, \(c.frees) frees",
                    sourceLocation: sourceLocation)
        }
        for node in statistics.nodes {
            #expect(node.mappedBytes <= retention && node.largeBlocks == 0 && node.directBytes == 0,
                    "node \(node.node) keeps \(node.mappedBytes) bytes mapped (retention \(retention))",
                    sourceLocation: sourceLocation)
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func allocatedOnAnExitedThreadFreedOnAnother() throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests())
            let shelf = Shelf()
            runOnThreads(1) { _ in
                for (i, size) in (Self.sizes + Self.sizes.filter { $0 <= twoMiB } + Array(repeating: 64, count: 200)).enumerated() {
                    guard let p = allocateOrRecord(heap, size) else { continue }
                    memset(p, Int32(i % 250 + 1), size)
                    shelf.put(p, size, UInt8(i % 250 + 1))
                }
            }
            #expect(heap.statistics.threads.isEmpty, "the allocating thread exited")
            runOnThreads(1) { _ in
                for item in shelf.takeAll() {
                    #expect(allBytes(item.pointer, item.size, are: item.fill))
                    heap.free(item.pointer)
                }
            }
            expectEmpty(heap, retention: 0)
        }
    }

    /// The owner stays alive while another thread frees its objects, then
    /// allocates again (collecting the remote frees) and exits.
    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func allocatedOnALiveThreadFreedOnAnother() throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests())
            let shelf = Shelf()
            let allocated = DispatchSemaphore(value: 0)
            let freed = DispatchSemaphore(value: 0)
            runOnThreads(2) { thread in
                if thread == 0 {
                    for round in 0..<3 {
                        let sizes = round == 0 ? Self.sizes : Self.sizes.filter { $0 <= twoMiB }
                        for (i, size) in (sizes + Array(repeating: 64, count: 300)).enumerated() {
                            guard let p = allocateOrRecord(heap, size) else { continue }
                            memset(p, Int32((i + round) % 250 + 1), size)
                            shelf.put(p, size, UInt8((i + round) % 250 + 1))
                        }
                        allocated.signal()
                        freed.wait()
                    }
                } else {
                    for _ in 0..<3 {
                        allocated.wait()
                        #expect(heap.statistics.threads.count >= 1)
                        for item in shelf.takeAll() {
                            #expect(allBytes(item.pointer, item.size, are: item.fill), "changed before its remote free")
                            heap.free(item.pointer)
                        }
                        freed.signal()
                    }
                }
            }
            expectEmpty(heap, retention: 0)
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason), arguments: [0, twoMiB])
    func manyThreadsAllocatingAndFreedEachOthers(retention: Int) throws {
        try expectNoLeak {
            let baseline = processHugetlbBytes()
            let heap = try DMAHeap(.init(retentionBytes: retention))
            let shelf = Shelf()
            let overwritten = Atomic<Int>(0)
            let failures = Mutex<[DMAHeapError]>([])
            runOnThreads(4) { thread in
                var random = TestRNG(seed: 0xF00D + UInt64(thread))
                for step in 0..<2500 {
                    if Int.random(in: 0..<2, using: &random) == 0 {
                        // Two threads take a large block at about the same time (each is a contiguous search).
                        let size = step == 1000 && thread < 2 ? 3 << 20 : logUniformSize(upTo: 512 << 10, using: &random)
                        let fill = UInt8(truncatingIfNeeded: step % 250 + 1)
                        let p: UnsafeMutableRawPointer
                        do { p = try heap.allocate(size) } catch let error as DMAHeapError {
                            failures.withLock { $0.append(error) }
                            continue
                        } catch {
                            Issue.record("not a DMAHeapError: \(error)")
                            continue
                        }
                        memset(p, Int32(fill), size)
                        shelf.put(p, size, fill)
                    } else if let item = shelf.take(at: Int.random(in: 0..<Int.max, using: &random)) {
                        if !allBytes(item.pointer, item.size, are: item.fill) { overwritten.add(1, ordering: .relaxed) }
                        heap.free(item.pointer)
                    }
                }
            }
            #expect(overwritten.load(ordering: .relaxed) == 0, "allocations overwritten by others while live")
            // Large blocks look for a run within a bounded budget, one look at
            // a time: no allocation may fail for want of pages while thousands
            // are free. Only a pool too scattered to hold a run is the machine's.
            let errors = failures.withLock { $0 }
            #expect(errors.allSatisfy { if case .noContiguousRun = $0 { true } else { false } },
                    "\(errors.count) allocations failed: \(errors.prefix(3).map(\.description))")
            for item in shelf.takeAll() {
                #expect(allBytes(item.pointer, item.size, are: item.fill))
                heap.free(item.pointer)
            }
            expectEmpty(heap, retention: retention)
            let statistics = heap.statistics
            #expect(statistics.threads.count <= 1, "only this thread's cache is left")
            #expect(statistics.sizeClasses.reduce(0) { $0 + $1.allocations } > 1000)
            #expect(hugetlbBytesSince(baseline) == statistics.mappedBytes, "the process maps what the heap counts")
        }
    }
}
