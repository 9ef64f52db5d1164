import ArgumentParser
import HugeAlloc

/// DPDK's mempool_perf loop on a ``Mempool``: each thread gets `keep` objects
/// in bulks of `bulk`, puts them back in bulks of `bulk`, and repeats for
/// `seconds`. The rate is objects round-tripped per second, summed over
/// threads, printed last as `rate_persec=N`.
struct MempoolBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mempool",
        abstract: "Mempool get/put rate (DPDK mempool_perf loop); last line rate_persec=N."
    )

    @Option(help: "Bytes per object.") var objectSize = 2048
    @Option(help: "Objects in the pool.") var count = 16383
    @Option(help: "Per-thread cache size (0: no cache).") var cache = 512
    @Option(help: "Objects per get and per put call.") var bulk = 32
    @Option(help: "Objects each thread holds per round.") var keep = 128
    @Option(help: "Seconds to run.") var seconds = 2.0
    @Option(help: "Threads (pinned to CPUs 0, 1, ...).") var threads = 1
    @Option(help: "Shared backend: ring or stack.") var backend = "ring"
    @Option(help: "Page size: 2M or 1G (or 4K).") var pageSize = "2M"
    @Option(help: "Memory channels to spread object starts over (0: no spreading).") var channels = 4
    @Flag(help: "Checked mode (guard cookies, double-free detection).") var checked = false
    @Flag(help: "Collect per-thread statistics.") var statistics = false
    @Flag(help: "Single-thread pool (no atomics; requires --threads 1).") var singleThread = false

    func validate() throws {
        guard bulk > 0, keep > 0, keep % bulk == 0 else {
            throw ValidationError("--keep (\(keep)) must be a positive multiple of --bulk (\(bulk))")
        }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard keep * threads <= count else {
            throw ValidationError("--keep × --threads (\(keep * threads)) exceeds --count (\(count))")
        }
        guard backend == "ring" || backend == "stack" else { throw ValidationError("--backend is ring or stack") }
        guard PageSize(parsing: pageSize) != nil else { throw ValidationError("--page-size \(pageSize) is not a size") }
        guard !singleThread || threads == 1 else { throw ValidationError("--single-thread needs --threads 1") }
    }

    func run() throws {
        let configuration = MempoolConfiguration(
            count: count, objectSize: objectSize, cacheSize: cache,
            backend: backend == "ring" ? .ring : .stack,
            threading: singleThread ? .singleThread : .shared,
            checked: checked, statistics: statistics,
            memoryChannels: channels > 1 ? channels : nil)
        let pool: Mempool
        do {
            pool = try Mempool(configuration: configuration, mapping: MappingOptions(pageSize: PageSize(parsing: pageSize)!))
        } catch {
            throw ValidationError("\(error)")
        }
        print("mempool object_size=\(objectSize) count=\(count) cache=\(cache) bulk=\(bulk) keep=\(keep) "
            + "threads=\(threads) backend=\(backend) page_size=\(pageSize) stride=\(pool.elementStride) checked=\(checked)")
        let (keep, bulk, seconds) = (self.keep, self.bulk, self.seconds)
        let results = Bench.onThreads(threads) { _ in
            MempoolLoop.run(pool: pool, keep: keep, bulk: bulk, seconds: seconds)
        }
        var total = 0.0
        for (i, r) in results.enumerated() {
            print("thread \(i): \(r.objects) objects in \(String(format3(r.seconds))) s")
            total += Double(r.objects) / r.seconds
        }
        if statistics { print("statistics: \(pool.statistics)") }
        print("rate_persec=\(Int(total))")
    }

    private func format3(_ x: Double) -> String {
        let scaled = Int((x * 1000).rounded())
        return "\(scaled / 1000).\(String(1000 + scaled % 1000).dropFirst())"
    }
}

enum MempoolLoop {
    static func run(pool: Mempool, keep: Int, bulk: Int, seconds: Double) -> Bench.Sample {
        let table = UnsafeMutablePointer<UnsafeMutableRawPointer>.allocate(capacity: keep)
        defer { unsafe table.deallocate() }
        // Warm up (fills this thread's cache) before the clock starts.
        _ = unsafe rounds(pool, table, keep: keep, bulk: bulk, count: 1024)
        let start = Bench.now()
        var objects = 0
        var elapsed = 0.0
        repeat {
            switch bulk {
            case 1: objects += unsafe rounds(pool, table, keep: keep, bulk: Bulk1.self, count: 4096)
            case 32: objects += unsafe rounds(pool, table, keep: keep, bulk: Bulk32.self, count: 4096)
            default: objects += unsafe rounds(pool, table, keep: keep, bulk: bulk, count: 4096)
            }
            elapsed = Bench.now() - start
        } while elapsed < seconds
        return Bench.Sample(objects: objects, seconds: elapsed)
    }

    /// A bulk size known at compile time, so the copy loops of the inlined
    /// get and put collapse (the C benchmark does the same with constants).
    protocol BulkSize { static var n: Int { get } }
    enum Bulk1: BulkSize { static var n: Int { 1 } }
    enum Bulk32: BulkSize { static var n: Int { 32 } }

    @inline(never)
    static func rounds<B: BulkSize>(
        _ pool: Mempool, _ table: UnsafeMutablePointer<UnsafeMutableRawPointer>,
        keep: Int, bulk: B.Type, count: Int
    ) -> Int {
        for _ in 0..<count {
            unsafe getPhase(pool, table, keep: keep, bulk: bulk)
            unsafe putPhase(pool, table, keep: keep, bulk: bulk)
        }
        return count * keep
    }

    /// Get `keep` objects, `B.n` at a time (one function per phase keeps
    /// each small enough for the inliner to take the pool's hot path whole).
    @inline(never)
    static func getPhase<B: BulkSize>(
        _ pool: Mempool, _ table: UnsafeMutablePointer<UnsafeMutableRawPointer>, keep: Int, bulk: B.Type
    ) {
        var i = 0
        while i < keep {
            if unsafe !pool.get(into: table + i, count: B.n) {
                fatalError("mempool empty: \(pool.availableCount) available")
            }
            i &+= B.n
        }
    }

    @inline(never)
    static func putPhase<B: BulkSize>(
        _ pool: Mempool, _ table: UnsafeMutablePointer<UnsafeMutableRawPointer>, keep: Int, bulk: B.Type
    ) {
        var i = 0
        while i < keep {
            unsafe pool.put(from: table + i, count: B.n)
            i &+= B.n
        }
    }

    /// `count` rounds of: get `keep` objects `bulk` at a time, put them back
    /// `bulk` at a time.
    @inline(never)
    static func rounds(
        _ pool: Mempool, _ table: UnsafeMutablePointer<UnsafeMutableRawPointer>,
        keep: Int, bulk: Int, count: Int
    ) -> Int {
        for _ in 0..<count {
            var i = 0
            while i < keep {
                if unsafe !pool.get(into: table + i, count: bulk) {
                    fatalError("mempool empty: \(pool.availableCount) available")
                }
                i &+= bulk
            }
            i = 0
            while i < keep {
                unsafe pool.put(from: table + i, count: bulk)
                i &+= bulk
            }
        }
        return count * keep
    }
}
