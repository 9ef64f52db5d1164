import CHugeAllocShims
import CNuma

#if canImport(Glibc)
import Glibc
#endif

/// NUMA system calls: memory policy, page location, CPU affinity.
///
/// libnuma's `numaif.h` declares `mbind`, `get_mempolicy` and `move_pages`
/// as thin wrappers over the system calls of the same names.
extension Sys {
    /// A memory policy mode for ``mbind(_:length:mode:nodes:flags:)``.
    enum MemoryPolicyMode {
        case bind, preferred, interleave, local

        var rawValue: Int32 {
            switch self {
            case .bind: Int32(MPOL_BIND)
            case .preferred: Int32(MPOL_PREFERRED)
            case .interleave: Int32(MPOL_INTERLEAVE)
            case .local: Int32(MPOL_LOCAL)
            }
        }
    }

    /// Bits per word of a kernel node or CPU mask.
    private static let maskWordBits = UInt.bitWidth

    /// A kernel bitmask (`unsigned long[]`) with `bits` set, at least `minimumBits` wide.
    private static func mask(_ bits: [Int], minimumBits: Int = UInt.bitWidth) -> [UInt] {
        let highest = max(bits.max() ?? 0, minimumBits - 1)
        var words = [UInt](repeating: 0, count: highest / maskWordBits + 1)
        for bit in bits where bit >= 0 {
            words[bit / maskWordBits] |= 1 << UInt(bit % maskWordBits)
        }
        return words
    }

    /// Sets the memory policy of `[address, address+length)`; pages that fault
    /// in afterwards follow it. `nodes` is empty for `.local`.
    /// The corresponding C function is `mbind(2)`.
    static func mbind(
        _ address: UnsafeMutableRawPointer, length: Int,
        mode: MemoryPolicyMode, nodes: [Int], flags: UInt32 = 0
    ) throws(SystemCallError) {
        var words = mask(nodes)
        // The kernel reads maxnode - 1 bits (a long-standing off-by-one that
        // libnuma also compensates for), so pass one more than the mask width.
        let maxnode = UInt(words.count * maskWordBits + 1)
        let detail = "length \(length), mode \(mode), nodes \(nodes)"
        _ = try retryingInterrupts("mbind", detail: detail) {
            unsafe words.withUnsafeMutableBufferPointer { buffer in
                unsafe CNuma.mbind(
                    address, UInt(length), mode.rawValue,
                    nodes.isEmpty ? nil : buffer.baseAddress, nodes.isEmpty ? 0 : maxnode, flags)
            }
        }
    }

    /// The node each page starting at `pages[i]` is on, or a negative errno
    /// (`-ENOENT`: not faulted in; `-EFAULT`: not mapped) for that page.
    /// The corresponding C function is `move_pages(2)` with a null node list,
    /// which moves nothing and only reports.
    static func pageNodes(_ pages: [UnsafeMutableRawPointer?]) throws(SystemCallError) -> [Int32] {
        var pages = unsafe pages
        let count = unsafe pages.count
        var status = [Int32](repeating: Int32.min, count: count)
        if count == 0 { return status }
        _ = try retryingInterrupts("move_pages", detail: "\(count) pages") {
            unsafe pages.withUnsafeMutableBufferPointer { pagesBuffer in
                unsafe status.withUnsafeMutableBufferPointer { statusBuffer in
                    unsafe CNuma.move_pages(
                        0, UInt(count), pagesBuffer.baseAddress, nil, statusBuffer.baseAddress, 0)
                }
            }
        }
        return status
    }

    /// The node of the page holding `address`. Faults the page in (a read)
    /// when it is not present. The corresponding C function is
    /// `get_mempolicy(2)` with `MPOL_F_NODE | MPOL_F_ADDR`.
    static func nodeOfPage(_ address: UnsafeMutableRawPointer) throws(SystemCallError) -> Int {
        var node: Int32 = -1
        _ = try retryingInterrupts("get_mempolicy", detail: "MPOL_F_NODE|MPOL_F_ADDR") {
            unsafe CNuma.get_mempolicy(&node, nil, 0, address, UInt32(MPOL_F_NODE | MPOL_F_ADDR))
        }
        return Int(node)
    }

    /// The policy mode (`MPOL_*`) and node mask set on the range holding
    /// `address`. The corresponding C function is `get_mempolicy(2)` with `MPOL_F_ADDR`.
    static func memoryPolicy(of address: UnsafeMutableRawPointer) throws(SystemCallError) -> (mode: Int32, nodes: [Int]) {
        let bits = 1024
        var words = [UInt](repeating: 0, count: bits / maskWordBits)
        var mode: Int32 = -1
        _ = try retryingInterrupts("get_mempolicy", detail: "MPOL_F_ADDR") {
            unsafe words.withUnsafeMutableBufferPointer { buffer in
                unsafe CNuma.get_mempolicy(&mode, buffer.baseAddress, UInt(bits + 1), address, UInt32(MPOL_F_ADDR))
            }
        }
        return (mode, bitsSet(words))
    }

    private static func bitsSet(_ words: [UInt]) -> [Int] {
        var bits: [Int] = []
        for (index, word) in words.enumerated() where word != 0 {
            for bit in 0..<maskWordBits where word & (1 << UInt(bit)) != 0 {
                bits.append(index * maskWordBits + bit)
            }
        }
        return bits
    }

    /// The nodes this thread may allocate memory on (its cpuset's mems).
    /// The corresponding C function is `get_mempolicy(2)` with `MPOL_F_MEMS_ALLOWED`.
    static func allowedNodes() throws(SystemCallError) -> [Int] {
        // 1024 nodes is the kernel's largest MAX_NUMNODES on x86-64.
        let bits = 1024
        var words = [UInt](repeating: 0, count: bits / maskWordBits)
        var mode: Int32 = 0
        _ = try retryingInterrupts("get_mempolicy", detail: "MPOL_F_MEMS_ALLOWED") {
            unsafe words.withUnsafeMutableBufferPointer { buffer in
                unsafe CNuma.get_mempolicy(
                    &mode, buffer.baseAddress, UInt(bits + 1), nil, UInt32(MPOL_F_MEMS_ALLOWED))
            }
        }
        return bitsSet(words)
    }

    /// Pins the calling thread to `cpus`.
    /// The corresponding C function is `sched_setaffinity(2)` (pid 0: this thread).
    static func setAffinity(cpus: [Int]) throws(SystemCallError) {
        var words = mask(cpus, minimumBits: MemoryLayout<cpu_set_t>.size * 8)
        let bytes = words.count * MemoryLayout<UInt>.size
        _ = try retryingInterrupts("sched_setaffinity", detail: "cpus \(cpus)") {
            unsafe words.withUnsafeMutableBufferPointer { buffer in
                unsafe ha_sched_setaffinity(bytes, buffer.baseAddress)
            }
        }
    }

    /// The CPUs the calling thread may run on.
    /// The corresponding C function is `sched_getaffinity(2)` (pid 0: this thread).
    static func affinity() throws(SystemCallError) -> [Int] {
        var words = [UInt](repeating: 0, count: 1024 / maskWordBits)
        let bytes = words.count * MemoryLayout<UInt>.size
        _ = try retryingInterrupts("sched_getaffinity") {
            unsafe words.withUnsafeMutableBufferPointer { buffer in
                unsafe ha_sched_getaffinity(bytes, buffer.baseAddress)
            }
        }
        return bitsSet(words)
    }

    /// The CPU the calling thread runs on, cheaply (glibc reads it from the
    /// thread's rseq area or the vDSO). The corresponding C function is `sched_getcpu(3)`.
    static func currentCPU() -> Int? {
        let cpu = ha_sched_getcpu()
        return cpu < 0 ? nil : Int(cpu)
    }

    /// The node of `cpu` per libnuma (`numa_node_of_cpu(3)`, which reads sysfs),
    /// or nil when the CPU is unknown.
    static func nodeOfCPU(_ cpu: Int) -> Int? {
        let node = CNuma.numa_node_of_cpu(Int32(cpu))
        return node < 0 ? nil : Int(node)
    }

    /// The number of CPUs the kernel was configured for
    /// (`numa_num_configured_cpus(3)`).
    static var configuredCPUCount: Int { Int(CNuma.numa_num_configured_cpus()) }
}

extension Sys {
    /// The highest node number the kernel knows (`numa_max_node(3)`).
    static var highestNode: Int { max(0, Int(CNuma.numa_max_node())) }

    /// The distance between two nodes per the firmware table
    /// (`numa_distance(3)`, read from sysfs), or nil when unknown.
    static func nodeDistance(_ a: Int, _ b: Int) -> Int? {
        let distance = CNuma.numa_distance(Int32(a), Int32(b))
        return distance > 0 ? Int(distance) : nil
    }

    /// Whether the kernel has NUMA support (`numa_available(3)` >= 0).
    static var numaAvailable: Bool { CNuma.numa_available() >= 0 }

    /// A node's memory, total and free, in bytes (`numa_node_size64(3)`,
    /// read from sysfs), or nil when libnuma cannot say.
    static func nodeMemory(_ node: Int) -> (total: Int, free: Int)? {
        var free: Int64 = 0
        let total = unsafe CNuma.numa_node_size64(Int32(node), &free)
        return total >= 0 ? (Int(total), Int(free)) : nil
    }

    /// A node's CPUs per libnuma (`numa_node_to_cpus(3)`), ascending, or nil
    /// when libnuma cannot say.
    static func cpusOfNode(_ node: Int) -> [Int]? {
        guard let mask = unsafe CNuma.numa_allocate_cpumask() else { return nil }
        defer { unsafe CNuma.numa_free_cpumask(mask) }
        guard unsafe CNuma.numa_node_to_cpus(Int32(node), mask) == 0 else { return nil }
        let possible = Int(CNuma.numa_num_possible_cpus())
        return (0..<max(possible, 0)).filter { unsafe CNuma.numa_bitmask_isbitset(mask, UInt32($0)) != 0 }
    }
}
