/// A named allocation of a heap (as DPDK's `rte_memzone`): reserved once,
/// found by name, freed by name. Names are unique per heap.
public struct Memzone: Sendable, Hashable {
    public let name: String
    /// The first byte.
    public let address: UInt
    /// The size asked for.
    public let length: Int
    /// The IOVA of the first byte when reserved (the memzone is IOVA-contiguous).
    public let iova: UInt64
    /// The NUMA node its memory is on.
    public let node: Int
    public let alignment: Int
    public let boundary: Int?

    /// The first byte, as a pointer.
    public var pointer: UnsafeMutableRawPointer { unsafe UnsafeMutableRawPointer(bitPattern: address)! }
}

extension DMAHeap {
    /// The longest memzone name, in UTF-8 bytes (as `RTE_MEMZONE_NAMESIZE` - 1).
    public static let maximumMemzoneNameLength = 63

    /// Reserves a zero-filled memzone of `size` bytes under `name`, with
    /// ``allocate(_:alignment:boundary:node:zeroed:)``'s guarantees.
    public func reserve(
        name: String, size: Int, alignment: Int = 64, boundary: Int? = nil, node: Int? = nil
    ) throws(DMAHeapError) -> Memzone {
        guard !name.isEmpty, name.utf8.count <= Self.maximumMemzoneNameLength else {
            throw .invalidMemzoneName(name: name, maximumLength: Self.maximumMemzoneNameLength)
        }
        // Claim the name first, so two threads reserving it cannot both win.
        let claimed = memzoneTable.withLock { table -> Bool in
            guard table[name] == nil else { return false }
            table[name] = Memzone(name: name, address: 0, length: 0, iova: 0, node: -1, alignment: alignment, boundary: boundary)
            return true
        }
        guard claimed else { throw .memzoneExists(name: name) }
        let pointer: UnsafeMutableRawPointer
        do {
            unsafe pointer = unsafe try allocate(size, alignment: alignment, boundary: boundary, node: node, zeroed: true)
        } catch {
            _ = memzoneTable.withLock { $0.removeValue(forKey: name) }
            throw error
        }
        let address = UInt(bitPattern: pointer)
        let nodeID = nodeOf(address) ?? node ?? nodes[0].node
        let zone = unsafe Memzone(name: name, address: address, length: size, iova: iova(of: pointer) ?? 0,
                           node: nodeID, alignment: alignment, boundary: boundary)
        memzoneTable.withLock { $0[name] = zone }
        return zone
    }

    /// The memzone reserved under `name`, nil when there is none.
    public func memzone(named name: String) -> Memzone? {
        memzoneTable.withLock { table in table[name].flatMap { $0.address == 0 ? nil : $0 } }
    }

    /// Every memzone, by name.
    public var memzones: [Memzone] {
        memzoneTable.withLock { Array($0.values.filter { $0.address != 0 }) }.sorted { $0.name < $1.name }
    }

    /// Frees the memzone reserved under `name`.
    public func free(memzoneNamed name: String) throws(DMAHeapError) {
        let zone: Memzone? = memzoneTable.withLock { table in
            guard let zone = table[name], zone.address != 0 else { return nil }
            table[name] = nil
            return zone
        }
        guard let zone else { throw .memzoneNotFound(name: name) }
        unsafe free(zone.pointer)
    }

    /// The NUMA node of heap memory at `address`.
    func nodeOf(_ address: UInt) -> Int? {
        let offset = address &- space.base
        if offset < space.bytes { return nodes[Int(offset >> UInt(HeapSizeClasses.pageShift)) / space.pagesPerNode].node }
        return largeBlock(containing: address)?.node.node
    }
}
