import ArgumentParser
import Foundation
import HugeAlloc

#if canImport(Glibc)
import Glibc
#endif

/// `hugealloc-bench mapping`: map + populate + translate against a bare
/// `mmap(MAP_HUGETLB | MAP_POPULATE)` of the same size in the same run, and
/// the cost of virtual→physical and physical→virtual lookups.
struct MappingBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mapping",
        abstract: "Map+populate+translate vs bare mmap(MAP_POPULATE); translation lookup cost."
    )

    @Option(help: "Bytes to map (K/M/G suffixes).") var size: String = "1G"
    @Option(name: .customLong("page-size"), help: "2M or 1G.") var pageSize: String = "2M"
    @Option(help: "Rounds of each measurement; the best is reported.") var iterations: Int = 5
    @Option(help: "Lookups per translation measurement.") var lookups: Int = 10_000_000

    func validate() throws {
        guard let bytes = ByteCount.parse(size), bytes > 0 else { throw ValidationError("bad --size '\(size)'") }
        guard let page = PageSize(parsing: pageSize), page.isHuge else { throw ValidationError("--page-size must be a hugepage size") }
        guard bytes % page.bytes == 0 else { throw ValidationError("--size must be a multiple of --page-size") }
        guard iterations > 0, lookups > 0 else { throw ValidationError("--iterations and --lookups must be positive") }
    }

    func run() throws {
        let length = ByteCount.parse(size)!
        let page = PageSize(parsing: pageSize)!
        let hugeBits = Int32(page.bytes.trailingZeroBitCount) << 26
        var bare = Double.infinity, library = Double.infinity, librarySingle = Double.infinity
        for _ in 0..<iterations {
            bare = min(bare, seconds {
                let p = mmap(nil, length, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | 0x40000 /* MAP_HUGETLB */ | MAP_POPULATE | hugeBits, -1, 0)
                precondition(p != MAP_FAILED, "bare mmap failed: errno \(errno); reserve \(length / page.bytes) \(page) pages")
                munmap(p, length)
            })
            library = min(library, try seconds {
                let m = try MemoryMapping(length: length, options: MappingOptions(pageSize: page))
                try m.unmap()
            })
            librarySingle = min(librarySingle, try seconds {
                let m = try MemoryMapping(length: length, options: MappingOptions(pageSize: page, prefaultThreads: 1))
                try m.unmap()
            })
        }
        print("map_populate_bare_ms=\(ms(bare))")
        print("map_populate_translate_ms=\(ms(library)) (parallel prefault)")
        print("map_populate_translate_single_thread_ms=\(ms(librarySingle))")
        print("ratio_vs_bare=\(String(format: "%.3f", library / bare))")
        print("ratio_single_thread_vs_bare=\(String(format: "%.3f", librarySingle / bare))")

        let mapping = try MemoryMapping(length: length, options: MappingOptions(pageSize: page))
        var rng = SplitMix64(seed: 42)
        let count = 1 << 16
        let offsets = (0..<count).map { _ in Int(rng.next() % UInt64(length)) }
        let physicals = offsets.map { mapping.physicalAddress(atOffset: $0)! }
        var sink: UInt64 = 0
        let v2p = seconds {
            for i in 0..<lookups { sink &+= mapping.physicalAddress(atOffset: offsets[i & (count - 1)])!.rawValue }
        }
        var sinkPointer = 0
        let p2v = seconds {
            for i in 0..<lookups { sinkPointer &+= Int(bitPattern: mapping.virtualAddress(of: physicals[i & (count - 1)])!) }
        }
        print("virt_to_phys_ns=\(String(format: "%.2f", v2p / Double(lookups) * 1e9))")
        print("phys_to_virt_ns=\(String(format: "%.2f", p2v / Double(lookups) * 1e9))")
        if sink == 1 && sinkPointer == 1 { print("") }
        try mapping.unmap()
    }
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    var start = timespec(), end = timespec()
    clock_gettime(CLOCK_MONOTONIC, &start)
    try body()
    clock_gettime(CLOCK_MONOTONIC, &end)
    return Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) / 1e9
}

func ms(_ s: Double) -> String { String(format: "%.2f", s * 1000) }

/// A small deterministic generator so runs are comparable.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
