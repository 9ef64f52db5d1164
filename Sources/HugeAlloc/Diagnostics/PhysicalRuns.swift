/// A stretch of virtual memory whose pages are also consecutive in physical memory.
public struct PhysicalRun: Equatable, Sendable {
    /// First virtual address of the run.
    public var virtualStart: UInt
    /// Its physical address.
    public var physicalStart: PhysicalAddress
    /// Length in bytes (a whole number of pages).
    public var bytes: Int
}

/// Groups the pages of a mapping into physically contiguous runs.
public enum PhysicalRuns {
    /// Joins pages (in virtual order, each `pageSize` bytes) into runs: a page
    /// extends the current run when it follows it both virtually and
    /// physically. Pages without a physical address (not present, swapped, or
    /// PFNs hidden) end the current run and belong to none.
    public static func group(pages: [(virtual: UInt, physical: PhysicalAddress?)], pageSize: Int) -> [PhysicalRun] {
        var runs: [PhysicalRun] = []
        var current: PhysicalRun?
        for page in pages {
            guard let physical = page.physical else {
                if let run = current { runs.append(run) }
                current = nil
                continue
            }
            if var run = current,
               run.virtualStart + UInt(run.bytes) == page.virtual,
               run.physicalStart + run.bytes == physical {
                run.bytes += pageSize
                current = run
            } else {
                if let run = current { runs.append(run) }
                current = PhysicalRun(virtualStart: page.virtual, physicalStart: physical, bytes: pageSize)
            }
        }
        if let run = current { runs.append(run) }
        return runs
    }
}

/// Which NUMA node a physical address belongs to, from the memory blocks
/// each node lists in sysfs (/sys/devices/system/node/nodeN/memoryM, blocks
/// of /sys/devices/system/memory/block_size_bytes).
public struct PhysicalMemoryNodes: Sendable {
    let blockSize: UInt64
    let nodeOfBlock: [UInt64: Int]

    /// Reads the block size and every node's memory blocks below `fs`'s root.
    /// With no memory-block information every lookup answers nil.
    public init(in fs: ProcFileSystem = .live) {
        let text = fs.textIfPresent("/sys/devices/system/memory/block_size_bytes") ?? ""
        blockSize = UInt64(text.trimmingWhitespace(), radix: 16) ?? 0
        var map: [UInt64: Int] = [:]
        for entry in fs.list("/sys/devices/system/node") where entry.hasPrefix("node") {
            guard let node = Int(entry.dropFirst(4)) else { continue }
            for block in fs.list("/sys/devices/system/node/\(entry)") where block.hasPrefix("memory") {
                if let index = UInt64(block.dropFirst(6)) { map[index] = node }
            }
        }
        nodeOfBlock = map
    }

    /// The node holding `address`, or nil when unknown.
    public func node(of address: PhysicalAddress) -> Int? {
        guard blockSize > 0 else { return nil }
        return nodeOfBlock[address.rawValue / blockSize]
    }
}
