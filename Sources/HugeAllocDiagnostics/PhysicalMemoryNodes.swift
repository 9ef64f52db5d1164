import HugeAlloc

/// Which NUMA node a physical address belongs to, from the memory blocks
/// each node lists in sysfs (/sys/devices/system/node/nodeN/memoryM, blocks
/// of /sys/devices/system/memory/block_size_bytes).
package struct PhysicalMemoryNodes: Sendable {
    let blockSize: UInt64
    let nodeOfBlock: [UInt64: Int]

    /// Reads the block size and every node's memory blocks below `fs`'s root.
    /// With no memory-block information every lookup answers nil.
    package init(in fs: KernelFiles = .live) {
        let text = fs.textIfReadable("/sys/devices/system/memory/block_size_bytes") ?? ""
        blockSize = UInt64(text.trimmingWhitespace(), radix: 16) ?? 0
        var map: [UInt64: Int] = [:]
        for entry in fs.entries("/sys/devices/system/node") where entry.hasPrefix("node") {
            guard let node = Int(entry.dropFirst(4)) else { continue }
            for block in fs.entries("/sys/devices/system/node/\(entry)") where block.hasPrefix("memory") {
                if let index = UInt64(block.dropFirst(6)) { map[index] = node }
            }
        }
        nodeOfBlock = map
    }

    /// The node holding `address`, or nil when unknown.
    package func node(of address: PhysicalAddress) -> Int? {
        guard blockSize > 0 else { return nil }
        return nodeOfBlock[address.rawValue / blockSize]
    }
}
