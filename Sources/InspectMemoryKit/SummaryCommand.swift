import ArgumentParser
import HugeAlloc

/// `inspect-memory summary` (the default command): the system inventory as
/// a readable report, or with `--json` as one JSON object (see ``InventoryReport``).
public struct SummaryCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "summary",
        abstract: "Print the machine's memory inventory: hugepage pools, mounts, NUMA nodes, limits."
    )

    @Flag(name: .long, help: "Print one JSON object with snake_case keys instead of the report.")
    public var json = false

    /// Reads a fixture tree laid out like / instead of this machine (for tests).
    @Option(name: .long, help: ArgumentHelp("File-system root to read /proc and /sys under.", visibility: .hidden))
    public var root = "/"

    public init() {}

    public func run() throws {
        let inventory: SystemInventory
        do {
            inventory = try SystemInventory.read(root: root)
        } catch {
            throw InspectMemory.failure(error.description)
        }
        if json {
            do {
                try JSONOutput.print(InventoryReport(inventory))
            } catch {
                throw InspectMemory.failure("cannot encode the inventory as JSON: \(error)")
            }
        } else {
            print(Self.text(inventory))
        }
    }

    /// The readable report of `inventory`.
    public static func text(_ inventory: SystemInventory) -> String {
        func yesNo(_ value: Bool?) -> String { value.map { $0 ? "yes" : "no" } ?? "unknown" }
        func limit(_ value: Int?) -> String { value.map(ReportFormat.bytes) ?? "unlimited" }

        var facts = TextTable([], indent: 0)
        facts.append(["kernel", inventory.kernelRelease])
        facts.append(["base page size", inventory.basePageSize.description])
        facts.append(["default hugepage size", inventory.defaultHugepageSize?.description ?? "none"])
        facts.append(["transparent hugepages", "enabled \(inventory.transparentHugepages.enabled ?? "n/a"), "
                      + "defrag \(inventory.transparentHugepages.defrag ?? "n/a")"])
        facts.append(["memlock limit", "soft \(limit(inventory.memlockLimit.soft)), hard \(limit(inventory.memlockLimit.hard))"])
        facts.append(["capabilities", "CAP_SYS_ADMIN \(yesNo(inventory.capabilities.sysAdmin)), "
                      + "CAP_IPC_LOCK \(yesNo(inventory.capabilities.ipcLock))"])
        facts.append(["physical addresses visible", yesNo(inventory.physicalAddressesVisible)])
        facts.append(["IOMMU", "\(inventory.iommu.groups) groups, /dev/vfio \(inventory.iommu.vfio ? "present" : "absent")"])
        var sections = [facts.render().split(separator: "\n").map { $0.trimmingTrailingSpaces() }.joined(separator: "\n")]

        if inventory.hugepagePools.isEmpty {
            sections.append("hugepage pools: none (the kernel has no hugepage support)")
        } else {
            var pools = TextTable(["size", "default", "total", "free", "reserved", "surplus", "overcommit", "mounts"])
            var perNode = TextTable(["size", "node", "total", "free", "surplus"])
            for pool in inventory.hugepagePools {
                let mounts = inventory.mounts(for: pool.pageSize).map(\.path)
                pools.append([pool.pageSize.description, pool.pageSize == inventory.defaultHugepageSize ? "yes" : "",
                              "\(pool.total)", "\(pool.free)", "\(pool.reserved)", "\(pool.surplus)",
                              "\(pool.overcommit)", mounts.isEmpty ? "none" : mounts.joined(separator: " ")])
                for (node, counts) in inventory.nodeCounts(for: pool.pageSize) {
                    perNode.append([pool.pageSize.description, "\(node)", "\(counts.total)", "\(counts.free)", "\(counts.surplus)"])
                }
            }
            sections.append("hugepage pools\n" + pools.render())
            if !perNode.rows.isEmpty { sections.append("hugepages per NUMA node\n" + perNode.render()) }
        }

        let numa = inventory.numa
        if numa.nodes.isEmpty {
            sections.append("NUMA: not available, no nodes in /sys/devices/system/node")
        } else {
            var nodes = TextTable(["node", "cpus", "memory total", "memory free", "distances"])
            for node in numa.nodes {
                nodes.append(["\(node.id)", ReportFormat.ranges(node.cpus), ReportFormat.bytes(node.memTotalBytes),
                              ReportFormat.bytes(node.memFreeBytes), node.distances.map(String.init).joined(separator: " ")])
            }
            sections.append("NUMA nodes (\(numa.available ? "NUMA available" : "NUMA not available"))\n" + nodes.render())
        }

        if !inventory.warnings.isEmpty {
            sections.append(inventory.warnings.map { "warning: \($0)" }.joined(separator: "\n"))
        }
        return sections.joined(separator: "\n\n")
    }
}

extension Substring {
    func trimmingTrailingSpaces() -> Substring {
        var line = self
        while line.last == " " { line.removeLast() }
        return line
    }
}
