import ArgumentParser
import Foundation
import HugeAlloc

/// `hugealloc-bench translate`: what one address translation costs in a
/// mapping big enough for `--buffers` buffers of 2 KiB (the memory of a
/// packet pool of that many buffers, the table a ``Mempool`` keeps).
/// Random virtual→physical lookups of arbitrary bytes
/// (``MemoryMapping/physicalAddress(of:)``: one table load), then random
/// physical→virtual lookups (``MemoryMapping/virtualAddress(of:)``: a hash
/// probe), each direction `--lookups` times, independent lookups in a loop
/// (throughput, as a driver translating a burst does). The addresses are
/// drawn before the clock starts and checked against each other after.
/// Prints last `virt2phys_ns=X phys2virt_ns=Y`, nanoseconds per lookup.
struct TranslateBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "translate",
        abstract: "Virtual→physical and physical→virtual lookup cost; last line virt2phys_ns=X phys2virt_ns=Y."
    )

    /// Bytes per buffer the mapping is sized for.
    static let bufferSize = 2048
    /// Distinct random addresses per direction (reused round-robin): small
    /// enough to stay in the L2 cache, so the lookups are what is measured.
    static let distinctAddresses = 1 << 16

    @Option(help: "2 KiB buffers the mapping must hold; it is rounded up to whole pages.") var buffers = 262143
    @Option(help: "Lookups in each direction.") var lookups = 20_000_000
    @Option(name: .customLong("page-size"), help: "Hugepage size: 2M or 1G.") var pageSize = "2M"
    @Option(help: "Seed of the random addresses.") var seed: UInt64 = 42

    func validate() throws {
        guard buffers > 0, buffers <= (1 << 40) / Self.bufferSize else {
            throw ValidationError("--buffers must be between 1 and \((1 << 40) / Self.bufferSize)")
        }
        guard lookups > 0 else { throw ValidationError("--lookups must be positive") }
        guard let page = PageSize(parsing: pageSize), page.isHuge else {
            throw ValidationError("--page-size must be a hugepage size (2M or 1G)")
        }
    }

    func run() throws {
        let page = PageSize(parsing: pageSize)!
        let length = (buffers * Self.bufferSize + page.bytes - 1) / page.bytes * page.bytes
        let mapping = try Self.map(length, page)
        let (v2p, p2v, distinct) = try measure(mapping)
        print("translate buffers=\(buffers) buffer_bytes=\(Self.bufferSize) page_size=\(page) bytes=\(length) "
            + "pages=\(mapping.pageCount) runs=\(mapping.runs.count) lookups=\(lookups) distinct_addresses=\(distinct)")
        try mapping.unmap()
        print("virt2phys_ns=\(String(format: "%.2f", v2p / Double(lookups) * 1e9)) "
            + "phys2virt_ns=\(String(format: "%.2f", p2v / Double(lookups) * 1e9))")
    }

    static func map(_ length: Int, _ page: PageSize) throws -> MemoryMapping {
        do {
            return try MemoryMapping(length: length, options: MappingOptions(pageSize: page))
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// Seconds for `lookups` lookups each way, and the distinct addresses used.
    func measure(_ mapping: borrowing MemoryMapping) throws -> (Double, Double, Int) {
        guard mapping.translation != nil, mapping.physicalAddress(atOffset: 0) != nil else {
            throw ValidationError("the mapping has no physical addresses (run as root: pagemap hides them without CAP_SYS_ADMIN)")
        }
        let base = mapping.base
        let length = mapping.length
        // Inputs: arbitrary bytes for virtual→physical, the physical
        // addresses of other arbitrary bytes for physical→virtual.
        var rng = SplitMix64(seed: seed)
        let count = lookups >= Self.distinctAddresses ? Self.distinctAddresses : lookups.nextPowerOfTwo
        let virtuals = (0..<count).map { _ in UnsafeRawPointer(base + Int(rng.next() % UInt64(length))) }
        let targets = (0..<count).map { _ in Int(rng.next() % UInt64(length)) }
        var physicals: [PhysicalAddress] = []
        for offset in targets {
            let physical = mapping.physicalAddress(atOffset: offset)!
            guard mapping.virtualAddress(of: physical) == base + offset else {
                throw ValidationError("physical→virtual of \(physical) disagrees with virtual→physical at offset \(offset)")
            }
            physicals.append(physical)
        }

        let mask = count - 1
        var sink: UInt64 = 0
        var start = Bench.now()
        for i in 0..<lookups { sink &+= mapping.physicalAddress(of: virtuals[i & mask])!.rawValue }
        let v2p = Bench.now() - start
        var sinkPointer = 0
        start = Bench.now()
        for i in 0..<lookups { sinkPointer &+= Int(bitPattern: mapping.virtualAddress(of: physicals[i & mask])!) }
        let p2v = Bench.now() - start
        if sink == 1 && sinkPointer == 1 { print("") }
        return (v2p, p2v, count)
    }
}

extension Int {
    /// The smallest power of two at least this (1 for 0 and below).
    var nextPowerOfTwo: Int {
        self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount)
    }
}
