import ArgumentParser
import Foundation
import HugeAlloc

/// `inspect-memory probe`: maps pages with the library, resolves their
/// physical addresses and prints them; with `--hold`, keeps them mapped until
/// standard input closes so other tools can inspect the live mapping.
/// `--allocate` does the same for allocations from a ``DMAHeap``.
public struct ProbeCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Map pages (or allocate from the DMA heap) with HugeAlloc and print their physical addresses and runs.",
        discussion: """
        Examples:
          inspect-memory probe --page-size 2M --pages 8
          inspect-memory probe --page-size 4K --pages 64 --json
          inspect-memory probe --page-size 2M --pages 4 --json --hold   # release by closing stdin
          inspect-memory probe --page-size 2M --contiguous 64M --json  # one physically contiguous block
          inspect-memory probe --allocate 64,4K,16K,300K,3M --alignment 4K --json --hold

        With --allocate, each allocation prints its virtual and physical
        (IOVA) address, its size, and its pages: one {virtual, physical}
        entry per 4 KiB base page the allocation touches, the virtual
        address rounded down to 4 KiB. That is the granularity of
        /proc/PID/pagemap: entry virtual/4096 of the holder's pagemap must
        show the PFN physical/4096, and the allocation is physically
        contiguous when each entry's physical address is the previous one's
        plus 4096.
        """
    )

    @Option(name: .long, help: "Page size: 4K, 2M or 1G.")
    var pageSize: String = "2M"

    @Option(name: .long, help: "Number of pages to map.")
    var pages: Int?

    @Option(name: .long, help: "Allocate one physically contiguous block of this many bytes (K/M/G suffixes).")
    var contiguous: String?

    @Option(name: .long, help: "With --contiguous: the most bytes mapped at once while looking (K/M/G suffixes; default: every free hugepage, or 64M of base pages).")
    var budget: String?

    @Option(name: .long, help: "What backs the pages: anonymous, memfd, or hugetlbfs (a mount of that page size, or --mount).")
    var backing: String = "anonymous"

    @Option(name: .long, help: "The hugetlbfs mount to use with --backing hugetlbfs.")
    var mount: String?

    @Option(name: .long, help: "Allocate these sizes from a DMA heap, comma-separated with K/M/G suffixes (e.g. 64,4K,16K,300K,3M); prints each allocation's pages at 4 KiB granularity, as /proc/PID/pagemap has them.")
    var allocate: String?

    @Option(name: .long, help: "With --allocate: the alignment of every allocation, a power of two (K/M/G suffixes; default 64).")
    var alignment: String?

    @Option(name: .long, help: "With --allocate: a power of two no allocation may cross, at least the largest size (K/M/G suffixes).")
    var boundary: String?

    @Option(name: .long, help: "NUMA node to bind the pages to (with --allocate: the heap node to allocate on).")
    var node: Int?

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    @Flag(name: .long, help: "Keep the memory mapped until standard input closes.")
    var hold = false

    public init() {}

    public func validate() throws {
        if allocate != nil { return try validateAllocate() }
        if alignment != nil || boundary != nil {
            throw ValidationError("--alignment and --boundary go with --allocate")
        }
        guard let size = PageSize(parsing: pageSize) else {
            throw ValidationError("unknown page size '\(pageSize)': use 4K, 2M or 1G")
        }
        if let contiguous {
            guard pages == nil else { throw ValidationError("give either --pages or --contiguous, not both") }
            guard let bytes = ByteCount.parse(contiguous), bytes > 0 else {
                throw ValidationError("--contiguous takes a positive size such as 32K, 16M or 1G (got '\(contiguous)')")
            }
            guard bytes <= 1 << 46 else { throw ValidationError("--contiguous \(contiguous) is more memory than any machine has") }
            if let budget {
                guard let limit = ByteCount.parse(budget), limit >= bytes else {
                    throw ValidationError("--budget takes a size of at least the block (\(contiguous)), such as 64M (got '\(budget)')")
                }
            }
            return try validateBacking()
        }
        if budget != nil { throw ValidationError("--budget goes with --contiguous") }
        guard let pages else { throw ValidationError("give --pages N or --contiguous BYTES") }
        guard pages > 0 else { throw ValidationError("--pages must be at least 1 (got \(pages))") }
        guard pages.multipliedReportingOverflow(by: size.bytes).overflow == false, pages * size.bytes <= 1 << 46 else {
            throw ValidationError("--pages \(pages) of \(size) is more memory than any machine has")
        }
        try validateBacking()
    }

    func validateBacking() throws {
        guard ["anonymous", "memfd", "hugetlbfs"].contains(backing) else {
            throw ValidationError("unknown backing '\(backing)': use anonymous, memfd or hugetlbfs")
        }
        if let node, node < 0 { throw ValidationError("--node must be 0 or more (got \(node))") }
    }

    /// Syntax only: sizes, alignments, boundaries and nodes the heap refuses
    /// get the heap's own error at run time.
    func validateAllocate() throws {
        guard pages == nil, contiguous == nil, budget == nil, mount == nil, backing == "anonymous" else {
            throw ValidationError("--allocate takes memory from a DMA heap: give it without --pages, --contiguous, --budget, --backing or --mount")
        }
        _ = try allocationRequest()
    }

    /// The sizes, alignment and boundary of `--allocate`, parsed.
    func allocationRequest() throws -> (sizes: [Int], alignment: Int, boundary: Int?) {
        let sizes = try (allocate ?? "").split(separator: ",", omittingEmptySubsequences: false).map { item in
            guard let bytes = ByteCount.parse(String(item)) else {
                throw ValidationError("--allocate takes sizes separated by commas, such as 64,4K,16K,300K,3M (got '\(item)' in '\(allocate ?? "")')")
            }
            return bytes
        }
        func parse(_ text: String?, _ flag: String) throws -> Int? {
            guard let text else { return nil }
            guard let bytes = ByteCount.parse(text) else {
                throw ValidationError("\(flag) takes a size such as 64, 4K or 2M (got '\(text)')")
            }
            return bytes
        }
        return (sizes, try parse(alignment, "--alignment") ?? 64, try parse(boundary, "--boundary"))
    }

    public func run() throws {
        if allocate != nil { return try runAllocate() }
        let size = PageSize(parsing: pageSize)!
        let placement: NUMAPolicy = node.map { .bind($0) } ?? .any
        let backing: MappingOptions.Backing = switch self.backing {
        case "memfd": .memfd
        case "hugetlbfs": .hugetlbfs(mount: mount)
        default: .anonymous
        }
        let expected = contiguous.flatMap(ByteCount.parse) ?? (pages ?? 0) * size.bytes
        let progress = ProgressBar.start(totalBytes: expected, hugepages: size.isHuge)
        defer { progress?.finish() }
        let mapping: MemoryMapping
        do {
            if let contiguous {
                mapping = try ContiguousMemory.allocate(
                    ContiguousRequest(bytes: ByteCount.parse(contiguous)!, pageSize: size, numaPolicy: placement,
                                      budgetBytes: budget.flatMap(ByteCount.parse)))
            } else {
                let options = MappingOptions(pageSize: size, backing: backing, numaPolicy: placement)
                mapping = try MemoryMapping(length: pages! * size.bytes, options: options)
            }
        } catch {
            throw CommandFailure("\(error)")
        }
        let report = ProbeReport(mapping)
        if json {
            try printJSON(report)
        } else {
            print(report.text)
        }
        if hold {
            fflush(nil)
            while readLine(strippingNewline: false) != nil {}
        }
        do { try mapping.unmap() } catch { throw CommandFailure("\(error)") }
    }
}

extension ProbeCommand {
    /// `--allocate`: one heap, one allocation per size, printed; held until
    /// standard input closes with `--hold`; then freed.
    func runAllocate() throws {
        let request = try allocationRequest()
        let heap: DMAHeap
        do { heap = try DMAHeap() } catch { throw CommandFailure("\(error)") }
        var allocations: [(pointer: UnsafeMutableRawPointer, size: Int)] = []
        defer { for allocation in allocations { unsafe heap.free(allocation.pointer) } }
        for size in request.sizes {
            do {
                let pointer = try heap.allocate(size, alignment: request.alignment, boundary: request.boundary, node: node)
                allocations.append((pointer, size))
            } catch {
                throw CommandFailure("\(error)")
            }
        }
        let report = unsafe AllocationReport(heap: heap, allocations: allocations, alignment: request.alignment,
                                             boundary: request.boundary)
        if json {
            try printJSON(report)
        } else {
            print(report.text)
        }
        if hold {
            fflush(nil)
            while readLine(strippingNewline: false) != nil {}
        }
    }
}

/// What `probe --allocate` prints: `pid`, `alignment`, `boundary`,
/// `page_size` (4096: the granularity of each allocation's `pages`), and
/// `allocations[] {virtual, physical, size, pages[] {virtual, physical}}`.
struct AllocationReport: Encodable {
    struct Page: Encodable {
        var virtual: String
        var physical: String?
        enum CodingKeys: CodingKey { case virtual, physical }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(virtual, forKey: .virtual)
            try c.encode(physical, forKey: .physical)  // null when unknown, never omitted
        }
    }
    struct Allocation: Encodable {
        var virtual: String
        var physical: String?
        var size: Int
        var pages: [Page]
        enum CodingKeys: CodingKey { case virtual, physical, size, pages }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(virtual, forKey: .virtual)
            try c.encode(physical, forKey: .physical)
            try c.encode(size, forKey: .size)
            try c.encode(pages, forKey: .pages)
        }
    }
    var pid: Int32
    var alignment: Int
    var boundary: Int?
    var pageSize: Int
    var allocations: [Allocation]

    enum CodingKeys: String, CodingKey {
        case pid, alignment, boundary, allocations
        case pageSize = "page_size"
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(pid, forKey: .pid)
        try c.encode(alignment, forKey: .alignment)
        try c.encode(boundary, forKey: .boundary)  // null without --boundary
        try c.encode(pageSize, forKey: .pageSize)
        try c.encode(allocations, forKey: .allocations)
    }

    /// Each page's physical address is the heap's own answer (``DMAHeap/iova(of:)``
    /// of the page's first byte inside the allocation, less the offset into the
    /// page), so a reader of /proc/PID/pagemap checks what the heap claims.
    init(heap: DMAHeap, allocations: [(pointer: UnsafeMutableRawPointer, size: Int)], alignment: Int, boundary: Int?) {
        let base = PageSize.base.bytes
        pid = getpid()
        self.alignment = alignment
        self.boundary = boundary
        pageSize = base
        self.allocations = allocations.map { allocation in
            let start = UInt(bitPattern: allocation.pointer)
            let end = start + UInt(allocation.size)
            let firstPage = start & ~UInt(base - 1)
            let pages = stride(from: firstPage, to: end, by: base).map { page in
                let first = max(page, start)  // a byte of the allocation: the page's head may belong to another
                let iova = unsafe heap.iova(of: UnsafeRawPointer(bitPattern: first)!)
                return Page(virtual: hex(page), physical: iova.map { hex(UInt($0) - (first - page)) })
            }
            return Allocation(virtual: hex(start), physical: unsafe heap.iova(of: allocation.pointer).map { hex(UInt($0)) },
                              size: allocation.size, pages: pages)
        }
    }

    /// One line per allocation, then its pages as physically contiguous runs.
    var text: String {
        var lines = ["pid \(pid): \(allocations.count) allocations from a DMA heap, alignment \(ByteCount.format(alignment))"
                     + (boundary.map { ", boundary \(ByteCount.format($0))" } ?? "")]
        lines.append("  size        virtual              physical             4K pages")
        for allocation in allocations {
            lines.append("  " + ByteCount.format(allocation.size).padding(toLength: 11, withPad: " ", startingAt: 0) + " "
                         + allocation.virtual.padding(toLength: 20, withPad: " ", startingAt: 0) + " "
                         + (allocation.physical ?? "-").padding(toLength: 20, withPad: " ", startingAt: 0) + " "
                         + "\(allocation.pages.count)")
            var runs: [(virtual: String, physical: String?, pages: Int)] = []
            var expected: UInt? = nil
            for page in allocation.pages {
                let physical = page.physical.flatMap { UInt($0.dropFirst(2), radix: 16) }
                if let last = runs.indices.last, let physical, physical == expected {
                    runs[last].pages += 1
                } else {
                    runs.append((page.virtual, page.physical, 1))
                }
                expected = physical.map { $0 + UInt(pageSize) }
            }
            for run in runs {
                lines.append("      pages from \(run.virtual) at \(run.physical ?? "-"): \(run.pages) × 4K physically contiguous")
            }
        }
        return lines.joined(separator: "\n")
    }
}

/// What `probe` prints: `pid`, `page_size`, `pages[] {virtual, physical, node}`,
/// `runs[] {physical, bytes, pages}`, `largest_run_bytes`.
struct ProbeReport: Encodable {
    struct Page: Encodable {
        var virtual: String
        var physical: String?
        var node: Int?
        enum CodingKeys: CodingKey { case virtual, physical, node }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(virtual, forKey: .virtual)
            try c.encode(physical, forKey: .physical)  // null when unknown, never omitted
            try c.encode(node, forKey: .node)
        }
    }
    struct Run: Encodable { var physical: String; var bytes: Int; var pages: Int }
    var pid: Int32
    var pageSize: Int
    var pages: [Page]
    var runs: [Run]
    var largestRunBytes: Int
    var histogram: [Bucket]
    struct Bucket: Encodable { var pages: Int; var runs: Int }

    enum CodingKeys: String, CodingKey {
        case pid, pages, runs, histogram
        case pageSize = "page_size"
        case largestRunBytes = "largest_run_bytes"
    }

    init(_ mapping: borrowing MemoryMapping) {
        let base = UInt(bitPattern: mapping.base)
        let nodes = mapping.pageNodes ?? (try? mapping.currentPageNodes())
        pid = getpid()
        pageSize = mapping.pageSize.bytes
        pages = (0..<mapping.pageCount).map { i in
            let offset = i * mapping.pageSize.bytes
            return Page(virtual: hex(base + UInt(offset)),
                        physical: mapping.physicalAddress(atOffset: offset)?.description,
                        node: nodes.map { $0[i] })
        }
        // Runs in physical order, whatever the virtual order: what a device sees.
        let report = FragmentationReport(mapping)
        runs = report.runs.map { Run(physical: $0.physical.description, bytes: $0.bytes, pages: $0.pages) }
        largestRunBytes = report.largestRunBytes
        histogram = report.histogram.map { Bucket(pages: $0.pages, runs: $0.runs) }
    }

    var text: String {
        var lines = ["pid \(pid): \(pages.count) pages of \(ByteCount.format(pageSize))"]
        lines.append("  virtual              physical             node")
        for page in pages {
            lines.append("  " + page.virtual.padding(toLength: 20, withPad: " ", startingAt: 0) + " "
                         + (page.physical ?? "-").padding(toLength: 20, withPad: " ", startingAt: 0) + " "
                         + (page.node.map(String.init) ?? "-"))
        }
        lines.append("\(runs.count) physically contiguous runs; largest \(ByteCount.format(largestRunBytes)) (\(largestRunBytes) bytes)")
        lines.append("run length (pages) → runs: " + histogram.map { "\($0.pages)→\($0.runs)" }.joined(separator: "  "))
        return lines.joined(separator: "\n")
    }
}

func hex(_ value: UInt) -> String { "0x" + String(value, radix: 16) }
