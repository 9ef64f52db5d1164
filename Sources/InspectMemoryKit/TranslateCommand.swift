import ArgumentParser
import HugeAlloc
import HugeAllocDiagnostics

/// `inspect-memory translate --pid PID ADDR...`: virtual to physical, with page flags.
struct TranslateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "translate",
        abstract: "Translate virtual addresses of a process to physical addresses, with page size, node and kernel page flags.",
        discussion: "Reads /proc/PID/pagemap, /proc/PID/smaps, /proc/kpageflags and the memory blocks in /sys/devices/system/node. Physical addresses need root."
    )

    @OptionGroup var options: CommonOptions

    @Option(help: "The process whose addresses to translate.")
    var pid: Int32

    @Argument(help: "Virtual addresses in hexadecimal (0x7f…).")
    var addresses: [String]

    func validate() throws {
        guard pid > 0 else { throw ValidationError("PID must be a positive number, not \(pid)") }
        guard !addresses.isEmpty else { throw ValidationError("give at least one address, such as 0x7f0000000000") }
        for a in addresses where parseAddress(a) == nil {
            throw ValidationError(DiagnosticsError.malformedAddress(a).description)
        }
    }

    struct Entry: Encodable {
        var virtual: String
        var present: Bool
        var swapped: Bool
        var physical: String?
        var pfn: UInt64?
        var pageSize: Int?
        var node: Int?
        var flags: [String]
        enum CodingKeys: String, CodingKey {
            case virtual, present, swapped, physical, pfn, pageSize = "page_size", node, flags
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(virtual, forKey: .virtual)
            try c.encode(present, forKey: .present)
            try c.encode(swapped, forKey: .swapped)
            try c.encode(physical, forKey: .physical)
            try c.encode(pfn, forKey: .pfn)
            try c.encode(pageSize, forKey: .pageSize)
            try c.encode(node, forKey: .node)
            try c.encode(flags, forKey: .flags)
        }
    }

    static func entries(pid: Int32, addresses: [UInt], in fs: KernelFiles) throws -> [Entry] {
        try ProcessTranslation.translate(pid: pid, addresses: addresses, in: fs).map {
            Entry(virtual: hex($0.virtual), present: $0.present, swapped: $0.swapped,
                  physical: $0.physical?.description, pfn: $0.pfn, pageSize: $0.pageSize,
                  node: $0.node, flags: $0.flags)
        }
    }

    func run() throws {
        let entries = try Self.entries(pid: pid, addresses: addresses.compactMap(parseAddress), in: options.fs)
        if options.json {
            try printJSON(entries)
            return
        }
        print(table(["VIRTUAL", "PRESENT", "PHYSICAL", "PFN", "PAGE", "NODE", "FLAGS"], entries.map {
            [$0.virtual, $0.present ? "yes" : ($0.swapped ? "swapped" : "no"), $0.physical ?? "-",
             $0.pfn.map { hex($0) } ?? "-", sizeText($0.pageSize), $0.node.map(String.init) ?? "-",
             $0.flags.isEmpty ? "-" : $0.flags.joined(separator: ",")]
        }))
        if entries.contains(where: { $0.present && $0.pfn == nil }) {
            print("physical addresses are hidden: run as root (CAP_SYS_ADMIN) to see them")
        }
    }
}
