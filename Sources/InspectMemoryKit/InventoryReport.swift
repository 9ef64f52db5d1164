import HugeAlloc

/// The `inspect-memory summary --json` object. Scripts rely on these keys:
/// `kernel`, `base_page_size`, `hugepage_sizes[]`, `numa`,
/// `transparent_hugepages`, `memlock_limit_bytes`, `capabilities`,
/// `physical_addresses_visible`, `iommu`. Sizes are integer bytes; `null`
/// means unlimited (memlock), absent (THP) or unknown (physical addresses
/// of a fixture root).
public struct InventoryReport: Encodable, Equatable, Sendable {
    public var kernel: String
    public var basePageSize: Int
    public var hugepageSizes: [HugepageSize]
    public var numa: NUMA
    public var transparentHugepages: TransparentHugepages
    public var memlockLimitBytes: MemlockLimitBytes
    public var capabilities: CapabilitySet
    public var physicalAddressesVisible: Bool?
    public var iommu: IOMMU

    public struct HugepageSize: Encodable, Equatable, Sendable {
        public var sizeBytes: Int
        public var isDefault: Bool
        public var total: Int
        public var free: Int
        public var reserved: Int
        public var surplus: Int
        public var overcommit: Int
        public var mounts: [String]
        public var nodes: [NodeCounts]

        enum CodingKeys: String, CodingKey {
            case sizeBytes = "size_bytes", isDefault = "default"
            case total, free, reserved, surplus, overcommit, mounts, nodes
        }
    }

    public struct NodeCounts: Encodable, Equatable, Sendable {
        public var node: Int
        public var total: Int
        public var free: Int
        public var surplus: Int
    }

    public struct NUMA: Encodable, Equatable, Sendable {
        public var available: Bool
        public var nodes: [Node]
    }

    public struct Node: Encodable, Equatable, Sendable {
        public var node: Int
        public var cpus: [Int]
        public var memTotalBytes: Int
        public var memFreeBytes: Int
        public var distances: [Int]

        enum CodingKeys: String, CodingKey {
            case node, cpus, distances
            case memTotalBytes = "mem_total_bytes", memFreeBytes = "mem_free_bytes"
        }
    }

    public struct TransparentHugepages: Encodable, Equatable, Sendable {
        public var enabled: String?
        public var defrag: String?

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(enabled, forKey: .enabled)
            try container.encode(defrag, forKey: .defrag)
        }
        enum CodingKeys: String, CodingKey { case enabled, defrag }
    }

    public struct MemlockLimitBytes: Encodable, Equatable, Sendable {
        public var soft: Int?
        public var hard: Int?

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(soft, forKey: .soft)
            try container.encode(hard, forKey: .hard)
        }
        enum CodingKeys: String, CodingKey { case soft, hard }
    }

    public struct CapabilitySet: Encodable, Equatable, Sendable {
        public var sysAdmin: Bool
        public var ipcLock: Bool

        enum CodingKeys: String, CodingKey { case sysAdmin = "sys_admin", ipcLock = "ipc_lock" }
    }

    public struct IOMMU: Encodable, Equatable, Sendable {
        public var groups: Int
        public var vfio: Bool
    }

    enum CodingKeys: String, CodingKey {
        case kernel, numa, capabilities, iommu
        case basePageSize = "base_page_size", hugepageSizes = "hugepage_sizes"
        case transparentHugepages = "transparent_hugepages", memlockLimitBytes = "memlock_limit_bytes"
        case physicalAddressesVisible = "physical_addresses_visible"
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(kernel, forKey: .kernel)
        try container.encode(basePageSize, forKey: .basePageSize)
        try container.encode(hugepageSizes, forKey: .hugepageSizes)
        try container.encode(numa, forKey: .numa)
        try container.encode(transparentHugepages, forKey: .transparentHugepages)
        try container.encode(memlockLimitBytes, forKey: .memlockLimitBytes)
        try container.encode(capabilities, forKey: .capabilities)
        try container.encode(physicalAddressesVisible, forKey: .physicalAddressesVisible)
        try container.encode(iommu, forKey: .iommu)
    }

    /// The report of an inventory.
    public init(_ inventory: SystemInventory) {
        kernel = inventory.kernelRelease
        basePageSize = inventory.basePageSize.bytes
        hugepageSizes = inventory.hugepagePools.map { pool in
            HugepageSize(
                sizeBytes: pool.pageSize.bytes,
                isDefault: pool.pageSize == inventory.defaultHugepageSize,
                total: pool.total, free: pool.free, reserved: pool.reserved,
                surplus: pool.surplus, overcommit: pool.overcommit,
                mounts: inventory.mounts(for: pool.pageSize).map(\.path),
                nodes: inventory.nodeCounts(for: pool.pageSize).map {
                    NodeCounts(node: $0.node, total: $0.counts.total, free: $0.counts.free, surplus: $0.counts.surplus)
                })
        }
        numa = NUMA(available: inventory.numa.available, nodes: inventory.numa.nodes.map {
            Node(node: $0.id, cpus: $0.cpus, memTotalBytes: $0.memTotalBytes,
                 memFreeBytes: $0.memFreeBytes, distances: $0.distances)
        })
        transparentHugepages = TransparentHugepages(
            enabled: inventory.transparentHugepages.enabled, defrag: inventory.transparentHugepages.defrag)
        memlockLimitBytes = MemlockLimitBytes(soft: inventory.memlockLimit.soft, hard: inventory.memlockLimit.hard)
        capabilities = CapabilitySet(sysAdmin: inventory.capabilities.sysAdmin, ipcLock: inventory.capabilities.ipcLock)
        physicalAddressesVisible = inventory.physicalAddressesVisible
        iommu = IOMMU(groups: inventory.iommu.groups, vfio: inventory.iommu.vfio)
    }
}
