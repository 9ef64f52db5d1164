import ArgumentParser
import HugeAlloc

/// Time from nothing (no memory mapped) to a ready packet pool: hugepages
/// mapped and prefaulted in parallel, physical addresses read, every
/// buffer's metadata written and every buffer in the pool. The DPDK
/// counterpart is EAL init + `rte_pktmbuf_pool_create`. Prints the time
/// last as `create_ms=X` (and before it `rate_persec=N`, buffers made ready
/// per second, for tools/compare-dpdk).
struct CreateBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Time to create a packet pool from nothing; last line create_ms=X."
    )

    @Option(help: "Buffers in the pool.") var buffers = 262143
    @Option(help: "Per-thread cache size.") var cache = 512
    @Option(help: "Data room bytes.") var dataRoom = 2048
    @Option(help: "Threads that prefault the pages (0: one per online CPU).") var prefaultThreads = 0
    @Option(help: "Page size: 2M or 1G.") var pageSize = "2M"

    func validate() throws {
        guard buffers > 0 else { throw ValidationError("--buffers must be positive") }
        guard PageSize(parsing: pageSize) != nil else { throw ValidationError("--page-size \(pageSize) is not a size") }
    }

    func run() throws {
        let options = MappingOptions(pageSize: PageSize(parsing: pageSize)!, prefaultThreads: prefaultThreads)
        let start = Bench.now()
        let pool: PacketPool
        do {
            pool = try PacketPool(
                configuration: PacketPoolConfiguration(count: buffers, dataRoom: dataRoom, cacheSize: cache),
                mapping: options)
        } catch {
            throw ValidationError("\(error)")
        }
        let seconds = Bench.now() - start
        // Ready means usable: every buffer has its physical address.
        guard let first = pool.buffer(at: 0), let last = pool.buffer(at: buffers - 1),
              first.dataPhysicalAddress != nil, last.dataPhysicalAddress != nil
        else { throw ValidationError("the pool's buffers have no physical addresses (run as root)") }
        print("create buffers=\(buffers) data_room=\(dataRoom) page_size=\(pageSize) bytes=\(pool.mempool.length) "
            + "prefault_threads=\(prefaultThreads)")
        print("rate_persec=\(Int(Double(buffers) / seconds))")
        print("create_ms=\(Double(Int(seconds * 1e5)) / 100)")
    }
}
