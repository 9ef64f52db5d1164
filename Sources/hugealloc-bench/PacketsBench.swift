import ArgumentParser
import HugeAlloc

/// Packet buffer allocation rate: allocate `batch` buffers, set each one's
/// length, free them all, repeat for `seconds` (what a forwarding loop does
/// per burst, and what DPDK's `rte_pktmbuf_alloc_bulk` /
/// `rte_pktmbuf_free_bulk` pair is measured with). Prints packets per second
/// last as `rate_persec=N`.
struct PacketsBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "packets",
        abstract: "Packet buffer alloc + set length + free rate; last line rate_persec=N."
    )

    @Option(help: "Buffers per allocation and per free.") var batch = 32
    @Option(help: "Seconds to run.") var seconds = 2.0
    @Option(help: "Buffers in the pool.") var count = 16383
    @Option(help: "Per-thread cache size.") var cache = 512
    @Option(help: "Headroom bytes.") var headroom = 128
    @Option(help: "Data room bytes.") var dataRoom = 2048
    @Option(help: "Threads (pinned to CPUs 0, 1, ...).") var threads = 1
    @Flag(help: "Measure metadata inside the buffer against a separate metadata array instead.")
    var layoutExperiment = false

    func validate() throws {
        guard batch > 0, batch * threads <= count else {
            throw ValidationError("--batch × --threads (\(batch * threads)) must be between 1 and --count (\(count))")
        }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        if layoutExperiment {
            try MetadataLayoutExperiment.run(seconds: seconds)
            return
        }
        let pool: PacketPool
        do {
            pool = try PacketPool(configuration: PacketPoolConfiguration(
                count: count, headroom: headroom, dataRoom: dataRoom, cacheSize: cache))
        } catch {
            throw ValidationError("\(error)")
        }
        print("packets batch=\(batch) count=\(count) cache=\(cache) headroom=\(headroom) data_room=\(dataRoom) "
            + "threads=\(threads) stride=\(pool.bufferStride)")
        let (batch, seconds) = (self.batch, self.seconds)
        let results = Bench.onThreads(threads) { _ in
            PacketsLoop.run(pool: pool, batch: batch, seconds: seconds)
        }
        var total = 0.0
        for (i, r) in results.enumerated() {
            print("thread \(i): \(r.objects) packets in \(r.seconds) s")
            total += Double(r.objects) / r.seconds
        }
        print("rate_persec=\(Int(total))")
    }
}

enum PacketsLoop {
    static func run(pool: PacketPool, batch: Int, seconds: Double) -> Bench.Sample {
        let table = UnsafeMutablePointer<PacketBuffer>.allocate(capacity: batch)
        defer { unsafe table.deallocate() }
        _ = unsafe rounds(pool, table, batch: batch, count: 1024)
        let start = Bench.now()
        var packets = 0
        var elapsed = 0.0
        repeat {
            if batch == 32 {
                packets += unsafe rounds32(pool, table, count: 8192)
            } else {
                packets += unsafe rounds(pool, table, batch: batch, count: 8192)
            }
            elapsed = Bench.now() - start
        } while elapsed < seconds
        return Bench.Sample(objects: packets, seconds: elapsed)
    }

    /// The batch of 32 as a constant, as the C benchmark has it.
    @inline(never)
    static func rounds32(_ pool: PacketPool, _ table: UnsafeMutablePointer<PacketBuffer>, count: Int) -> Int {
        for _ in 0..<count {
            guard unsafe pool.allocate(into: table, count: 32) else { fatalError("packet pool empty") }
            for i in 0..<32 { unsafe table[i].length = 64 }
            unsafe pool.free(table, count: 32)
        }
        return count * 32
    }

    @inline(never)
    static func rounds(_ pool: PacketPool, _ table: UnsafeMutablePointer<PacketBuffer>, batch: Int, count: Int) -> Int {
        for _ in 0..<count {
            guard unsafe pool.allocate(into: table, count: batch) else { fatalError("packet pool empty") }
            for i in 0..<batch { unsafe table[i].length = 64 }
            unsafe pool.free(table, count: batch)
        }
        return count * batch
    }
}
