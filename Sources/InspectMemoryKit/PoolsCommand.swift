import ArgumentParser
import HugeAlloc

/// `inspect-memory pools [--json] [--clean]`: the shared objects published
/// on this machine (docs/multi-process.md).
struct PoolsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pools",
        abstract: "Pools, packet pools, rings, heaps and mappings shared between processes, with what each process holds.",
        discussion: """
            Lists every name published under the runtime directory ($HUGEALLOC_RUNTIME_DIR, else /run/hugealloc): \
            its kind, size, objects in all and available (for a heap: bytes in all and in free blocks), and the attached \
            processes with what each holds (objects in its caches; in checked mode, objects it took or heap blocks it allocated). An entry whose processes are all gone \
            is stale; --clean removes stale entries, never one a live process answers at.
            """
    )

    @OptionGroup var options: CommonOptions

    @Flag(help: "Remove stale entries (no process of theirs runs).")
    var clean = false

    @Option(help: ArgumentHelp("The runtime directory to look in.", valueName: "path"))
    var runtimeDirectory: String = SharingOptions.defaultRuntimeDirectory

    struct ProcessJSON: Encodable {
        var pid: Int32
        var alive: Bool
        var cachedObjects: Int?
        var heldObjects: Int?
        enum CodingKeys: String, CodingKey { case pid, alive, cachedObjects = "cached_objects", heldObjects = "held_objects" }
    }

    struct EntryJSON: Encodable {
        var name: String
        var kind: String?
        var path: String
        var address: String?
        var bytes: Int?
        var objectsTotal: Int?
        var objectsAvailable: Int?
        var processes: [ProcessJSON]
        var stale: Bool
        var error: String?
        enum CodingKeys: String, CodingKey {
            case name, kind, path, address, bytes, objectsTotal = "objects_total", objectsAvailable = "objects_available",
                 processes, stale, error
        }
    }

    struct Report: Encodable {
        var runtimeDirectory: String
        var pools: [EntryJSON]
        var removed: [String]?
        enum CodingKeys: String, CodingKey { case runtimeDirectory = "runtime_directory", pools, removed }
    }

    static func kindName(_ kind: SharedObjectKind?) -> String? {
        switch kind {
        case .mapping: return "mapping"
        case .mempool: return "mempool"
        case .packetPool: return "packet_pool"
        case .ring: return "ring"
        case .heap: return "heap"
        case nil: return nil
        }
    }

    func run() throws {
        let removed = clean ? SharedRegistry.clean(runtimeDirectory: runtimeDirectory) : nil
        let entries = SharedRegistry.list(runtimeDirectory: runtimeDirectory)
        let report = Report(
            runtimeDirectory: runtimeDirectory,
            pools: entries.map { e in
                EntryJSON(name: e.name, kind: Self.kindName(e.kind), path: e.path, address: e.address.map { hex(UInt64($0)) },
                          bytes: e.bytes, objectsTotal: e.objectsTotal, objectsAvailable: e.objectsAvailable,
                          processes: e.processes.map {
                              ProcessJSON(pid: $0.pid, alive: $0.isAlive, cachedObjects: $0.cachedObjects, heldObjects: $0.heldObjects)
                          },
                          stale: e.isStale, error: e.detailError)
            },
            removed: removed)
        if options.json {
            try printJSON(report)
            return
        }
        for path in removed ?? [] { print("removed stale \(path)") }
        if entries.isEmpty {
            print("no shared objects under \(runtimeDirectory)")
            return
        }
        var table = TextTable(["name", "kind", "size", "objects", "available", "processes", "state"], indent: 0)
        for e in report.pools {
            let processes = e.processes.map { p in
                var text = "\(p.pid)"
                if !p.alive { text += " (gone)" }
                if let c = p.cachedObjects { text += " cached \(c)" }
                if let h = p.heldObjects { text += " held \(h)" }
                return text
            }.joined(separator: "; ")
            table.rows.append([e.name, e.kind ?? "?", e.bytes.map { "\($0 >> 20) MiB" } ?? "?",
                         e.objectsTotal.map(String.init) ?? "-", e.objectsAvailable.map(String.init) ?? "-",
                         processes.isEmpty ? "-" : processes, e.stale ? "stale (--clean removes it)" : (e.error.map { "error: \($0)" } ?? "live")])
        }
        print(table.render())
    }
}
