import ArgumentParser
import Foundation
import HugeAlloc

/// `hugealloc-bench contiguous`: what physically contiguous memory costs.
/// - time to produce a block of `--bytes` from 2 MiB pages, against mapping
///   the same number of pages (same run);
/// - the largest run in the whole free 2 MiB pool (what DPDK's legacy memory
///   mode can find in the same pool);
/// - success rates of base-page runs of 2, 4, 8 and 16 pages, by one
///   transparent hugepage and by the trial technique alone.
struct ContiguousBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "contiguous",
        abstract: "Contiguous block cost, largest run in the pool, base-page run success rates."
    )

    @Option(help: "Block size from 2 MiB pages (K/M/G suffixes).") var bytes: String = "64M"
    @Option(help: "Rounds of the block measurement; the best is reported.") var iterations: Int = 5
    @Option(help: "Trials per base-page run length.") var trials: Int = 20
    @Option(name: .customLong("trial-budget"), help: "Memory budget per trial-technique attempt (K/M/G).")
    var trialBudget: String = "64M"

    func validate() throws {
        guard let b = ByteCount.parse(bytes), b > 0, b % (2 << 20) == 0 else { throw ValidationError("--bytes must be a positive multiple of 2M") }
        guard ByteCount.parse(trialBudget) != nil else { throw ValidationError("bad --trial-budget") }
        guard iterations > 0, trials > 0 else { throw ValidationError("--iterations and --trials must be positive") }
    }

    func run() throws {
        let block = ByteCount.parse(bytes)!
        var mapOnly = Double.infinity, contiguous = Double.infinity
        var stats = ContiguousStatistics()
        for _ in 0..<iterations {
            mapOnly = min(mapOnly, try seconds {
                let m = try MemoryMapping(length: block, options: MappingOptions(backing: .memfd))
                try m.unmap()
            })
            contiguous = min(contiguous, try seconds {
                let m = try ContiguousMemory.allocate(ContiguousRequest(bytes: block)) { stats = $0 }
                try m.unmap()
            })
        }
        print("block_bytes=\(block)")
        print("map_pages_ms=\(ms(mapOnly))")
        print("contiguous_block_ms=\(ms(contiguous)) (attempts \(stats.attempts), examined \(stats.bytesExamined) bytes)")
        print("ratio_vs_map=\(String(format: "%.3f", contiguous / mapOnly))")

        // The whole free pool, as DPDK's legacy mode sees it.
        let free = try InventoryFree.free2M()
        let pool = try MemoryMapping(length: free * (2 << 20), options: MappingOptions(backing: .memfd))
        let report = FragmentationReport(pool)
        try pool.unmap()
        print("pool_free_pages=\(free) pool_runs=\(report.runs.count) pool_largest_run_bytes=\(report.largestRunBytes)")
        print("pool_histogram=" + report.histogram.map { "\($0.pages):\($0.runs)" }.joined(separator: ","))

        let budget = ByteCount.parse(trialBudget)!
        for pages in [2, 4, 8, 16] {
            var thp = 0, trial = 0, trialAttempts = 0
            for _ in 0..<trials {
                if let m = try? ContiguousMemory.allocate(ContiguousRequest(bytes: pages * 4096, pageSize: .base)) {
                    thp += 1
                    try m.unmap()
                }
                var s = ContiguousStatistics()
                if let m = try? ContiguousMemory.allocate(ContiguousRequest(
                    bytes: pages * 4096, pageSize: .base, budgetBytes: budget, useTransparentHugepage: false), statistics: { s = $0 }) {
                    trial += 1
                    try m.unmap()
                }
                trialAttempts += s.attempts
            }
            print("base_run_pages=\(pages) success_default=\(thp)/\(trials) success_trial_only=\(trial)/\(trials) "
                  + "trial_attempts_avg=\(String(format: "%.1f", Double(trialAttempts) / Double(trials))) trial_budget=\(budget)")
        }
    }
}

/// Free 2 MiB pages, read from sysfs.
enum InventoryFree {
    static func free2M() throws -> Int {
        let inventory = try SystemInventory.read()
        guard let pool = inventory.hugepagePools.first(where: { $0.pageSize == .huge2M }) else { return 0 }
        return pool.free - pool.reserved
    }
}
