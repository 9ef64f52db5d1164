import ArgumentParser
import Foundation
import HugeAlloc

/// `inspect-memory probe`: maps pages with the library, resolves their
/// physical addresses and prints them; with `--hold`, keeps them mapped until
/// standard input closes so other tools can inspect the live mapping.
public struct ProbeCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Map pages with HugeAlloc and print their physical addresses and runs.",
        discussion: """
        Examples:
          inspect-memory probe --page-size 2M --pages 8
          inspect-memory probe --page-size 4K --pages 64 --json
          inspect-memory probe --page-size 2M --pages 4 --json --hold   # release by closing stdin
          inspect-memory probe --page-size 2M --contiguous 64M --json  # one physically contiguous block
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

    @Option(name: .long, help: "NUMA node to bind the pages to.")
    var node: Int?

    @Flag(name: .long, help: "Print one JSON object.")
    var json = false

    @Flag(name: .long, help: "Keep the memory mapped until standard input closes.")
    var hold = false

    public init() {}

    public func validate() throws {
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

    public func run() throws {
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
