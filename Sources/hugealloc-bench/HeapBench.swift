import ArgumentParser
import HugeAlloc
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `hugealloc-bench heap`: the DMA heap under a malloc workload. Each thread
/// keeps `--live` allocations; each step frees a random one and allocates a
/// new one, its size log-uniform in [min, max], alignment 64, and writes its
/// first and last byte. The random choices are the ones
/// tools/dpdk-bench/heap_bench.c makes for `rte_malloc_socket` and
/// `aligned_alloc` (xorshift64* per thread, sizes from one 4096-entry table).
struct HeapBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "heap",
        abstract: "Allocate/free pairs per second of the DMA heap (random sizes, random frees).")

    @Option(help: "Smallest size in bytes.") var min = 64
    @Option(help: "Largest size in bytes.") var max = 65536
    @Option(help: "Allocations each thread keeps live.") var live = 1024
    @Option(help: "Seconds to run.") var seconds = 2.0
    @Option(help: "Threads (pinned to CPUs 0, 1, ...).") var threads = 1
    @Option(help: "Empty-page bytes the heap keeps mapped.") var retention = 0
    @Flag(help: "Checked mode.") var checked = false

    func validate() throws {
        guard min >= 1, max >= min else { throw ValidationError("need 1 <= --min <= --max (got \(min), \(max))") }
        guard live >= 1, live <= 1 << 24 else { throw ValidationError("--live must be 1 to 16777216 (got \(live))") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
    }

    func run() throws {
        let heap: DMAHeap
        do { heap = try DMAHeap(DMAHeap.Options(retentionBytes: retention, checked: checked)) } catch {
            throw ValidationError("\(error)")
        }
        print("heap min=\(min) max=\(max) live=\(live) threads=\(threads) alignment=64 checked=\(checked)")
        let sizes = HeapWorkload.sizes(min: min, max: max)
        let (liveCount, seconds) = (self.live, self.seconds)
        let live = HeapWorkload.LiveBytes(threads: threads)
        let mappedAtEnd = Atomic<Int>(0)
        let endStatistics = Mutex<DMAHeapStatistics?>(nil)
        let finished = Atomic<Int>(0)
        let threadCount = threads
        let results = Bench.onThreads(threads) { index in
            let sample = HeapWorkload.run(heap: heap, sizes: sizes, live: liveCount, seconds: seconds, thread: index,
                                          liveBytes: live) {
                // Every thread has stopped allocating: read the footprint once, then free.
                if finished.add(1, ordering: .acquiringAndReleasing).newValue == threadCount {
                    let statistics = heap.statistics
                    endStatistics.withLock { $0 = statistics }
                    mappedAtEnd.store(statistics.mappedBytes, ordering: .releasing)
                }
                while finished.load(ordering: .acquiring) < threadCount {}
                while mappedAtEnd.load(ordering: .acquiring) == 0 && threadCount > 0 {}
            }
            heap.trim()
            return sample
        }
        var total = 0.0
        for (i, r) in results.enumerated() {
            print("thread \(i): \(r.objects) pairs in \(String(format: "%.3f", r.seconds)) s")
            total += Double(r.objects) / r.seconds
        }
        heap.trim()
        let stats = heap.statistics
        let peakLive = live.peak
        let end = mappedAtEnd.load(ordering: .acquiring)
        print("peak_live_bytes=\(peakLive)")
        print("mapped_bytes_end=\(end)")
        print("mapped_bytes_peak=\(stats.peakMappedBytes)")
        if let atEnd = endStatistics.withLock({ $0 }) {
            // Where the mapped bytes went at the end of the timed part.
            print("heap_live_bytes_end=\(atEnd.liveBytes) free_granule_bytes_end=\(atEnd.nodes.reduce(0) { $0 + $1.freeGranuleBytes })")
        }
        print("mapped_bytes_after_free=\(stats.mappedBytes)")
        print(String(format: "footprint_ratio=%.3f", Double(end) / Double(Swift.max(1, peakLive))))
        print("rate_persec=\(Int(total))")
    }
}

/// The loop of `hugealloc-bench heap`, shared with its C twin.
enum HeapWorkload {
    /// An allocation, or the heap's error on standard error and exit status 1
    /// (another process may take the free hugepages mid-run).
    @inline(__always)
    static func allocateOrExit(_ heap: DMAHeap, _ size: Int) -> UnsafeMutableRawPointer {
        do { return try heap.allocate(size, alignment: 64) } catch { fail(error) }
    }

    @inline(never)
    static func fail(_ error: DMAHeapError) -> Never {
        let line = Array("hugealloc-bench heap: \(error)\n".utf8)
        _ = unsafe line.withUnsafeBytes { unsafe write(2, $0.baseAddress, $0.count) }
        exit(1)
    }

    /// 4096 sizes spread log-uniformly over [min, max]: entry i is
    /// min · (max/min)^((i + 0.5) / 4096), rounded down.
    static func sizes(min: Int, max: Int) -> [Int] {
        (0..<4096).map { i in
            let u = (Double(i) + 0.5) / 4096
            return Swift.max(min, Swift.min(max, Int(Double(min) * pow(Double(max) / Double(min), u))))
        }
    }

    /// The requested bytes every thread holds, published every 1024 steps,
    /// and the largest sum seen: the peak of the bytes all threads held at
    /// once (sampled, so never above the true peak).
    final class LiveBytes: Sendable {
        let state: Mutex<(perThread: [Int], peak: Int)>

        init(threads: Int) { state = Mutex((Array(repeating: 0, count: threads), 0)) }

        var peak: Int { state.withLock { $0.peak } }

        func publish(_ bytes: Int, thread: Int) {
            state.withLock { s in
                s.perThread[thread] = bytes
                s.peak = Swift.max(s.peak, s.perThread.reduce(0, +))
            }
        }
    }

    /// Runs the loop; returns the pairs done. `stopped` runs after the timed
    /// part, before everything is freed.
    static func run(heap: DMAHeap, sizes: [Int], live: Int, seconds: Double, thread: Int,
                    liveBytes shared: LiveBytes, stopped: () -> Void) -> Bench.Sample {
        let pointers = UnsafeMutablePointer<UnsafeMutableRawPointer>.allocate(capacity: live)
        let held = UnsafeMutablePointer<Int>.allocate(capacity: live)
        let table = UnsafeMutablePointer<Int>.allocate(capacity: sizes.count)
        defer {
            unsafe pointers.deallocate()
            unsafe held.deallocate()
            unsafe table.deallocate()
        }
        for (i, s) in sizes.enumerated() { unsafe table[i] = s }
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15 &* UInt64(thread + 1)
        @inline(__always) func next() -> UInt64 {
            state ^= state >> 12
            state ^= state << 25
            state ^= state >> 27
            return state &* 0x2545_F491_4F6C_DD1D
        }
        var liveBytes = 0
        /// Allocates `size` bytes into slot `i`, writing their first and last byte.
        @inline(__always) func place(_ size: Int, at i: Int) {
            let p = allocateOrExit(heap, size)
            unsafe p.storeBytes(of: 1, as: UInt8.self)
            unsafe p.storeBytes(of: 1, toByteOffset: size - 1, as: UInt8.self)
            unsafe pointers[i] = p
            unsafe held[i] = size
            liveBytes += size
        }
        for i in 0..<live { place(unsafe table[Int(next() & 4095)], at: i) }
        shared.publish(liveBytes, thread: thread)
        var pairs = 0
        let start = Bench.now()
        var elapsed = 0.0
        while true {
            for _ in 0..<1024 {
                let r = next()
                let victim = Int(((r >> 32) &* UInt64(live)) >> 32)
                let size = unsafe table[Int(r & 4095)]
                unsafe heap.free(pointers[victim])
                liveBytes -= unsafe held[victim]
                place(size, at: victim)
            }
            pairs += 1024
            shared.publish(liveBytes, thread: thread)
            elapsed = Bench.now() - start
            if elapsed >= seconds { break }
        }
        stopped()
        for i in 0..<live { unsafe heap.free(pointers[i]) }
        return Bench.Sample(objects: pairs, seconds: elapsed)
    }
}
