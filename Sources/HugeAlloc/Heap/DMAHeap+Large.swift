import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The physical address of every 2 MiB page of the heap's large blocks,
/// by virtual page number: a two-level table over 48-bit addresses (as
/// SPDK's memory maps), so a lookup is two loads. Written under the large
/// blocks' owners' locks before a block is handed out; read without a lock.
@safe
final class HeapLargeMap: @unchecked Sendable {
    static let leafBits = 14
    static let topBits = 48 - HeapSizeClasses.pageShift - leafBits
    let top: UnsafeMutablePointer<UInt>
    let lock = Mutex<Void>(())

    init() {
        unsafe top = .allocate(capacity: 1 << Self.topBits)
        unsafe top.initialize(repeating: 0, count: 1 << Self.topBits)
    }

    func deallocate() {
        for i in 0..<(1 << Self.topBits) {
            if let leaf = unsafe UnsafeMutablePointer<UInt64>(bitPattern: top[i]) { unsafe leaf.deallocate() }
        }
        unsafe top.deallocate()
    }

    /// The physical address of the byte at `address`, nil when no large block holds it.
    @inline(__always)
    func lookup(_ address: UInt) -> UInt64? {
        let page = address >> UInt(HeapSizeClasses.pageShift)
        guard page >> UInt(Self.leafBits + Self.topBits) == 0 else { return nil }
        guard let leaf = unsafe UnsafeMutablePointer<UInt64>(bitPattern: top[Int(page >> UInt(Self.leafBits))]) else { return nil }
        let entry = unsafe leaf[Int(page & UInt((1 << Self.leafBits) - 1))]
        guard entry & 1 != 0 else { return nil }
        return (entry & ~1) + UInt64(address & UInt(HeapSizeClasses.pageBytes - 1))
    }

    /// Records (or, with nil, clears) the physical address of each 2 MiB page from `address`.
    func set(_ address: UInt, pages: [UInt64]?, count: Int) {
        lock.withLock { _ in
            for i in 0..<count {
                let page = (address >> UInt(HeapSizeClasses.pageShift)) + UInt(i)
                let t = Int(page >> UInt(Self.leafBits))
                if unsafe top[t] == 0 {
                    let leaf = UnsafeMutablePointer<UInt64>.allocate(capacity: 1 << Self.leafBits)
                    unsafe leaf.initialize(repeating: 0, count: 1 << Self.leafBits)
                    unsafe top[t] = UInt(bitPattern: leaf)
                }
                let leaf = unsafe UnsafeMutablePointer<UInt64>(bitPattern: top[t])!
                unsafe leaf[Int(page & UInt((1 << Self.leafBits) - 1))] = pages.map { $0[i] | 1 } ?? 0
            }
        }
    }
}

extension DMAHeap {
    /// Above a page: a physically contiguous run of 2 MiB pages from
    /// ``ContiguousMemory/allocate(_:statistics:)`` bound to the node, or a
    /// 1 GiB page when no run is found and the node has one free.
    func allocateLarge(_ bytes: Int, alignment: Int, boundary: Int?, nodeIndex n: Int) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        let node = nodes[n]
        let pageBytes = HeapSizeClasses.pageBytes
        let rounded = (bytes + pageBytes - 1) / pageBytes * pageBytes
        let physicalAlignment = max(alignment, pageBytes)
        // The block starts at the run's start, so the run's boundary is the block's
        // (one beyond any physical address binds nothing). Asking for an alignment to
        // the boundary's power instead would turn away most runs that serve.
        let physicalBoundary = boundary.flatMap { $0 > 1 << 52 ? nil : $0 }
        // A bounded look unless the options widen it: eight times the block
        // plus 128 MiB, or 256 MiB, whichever is more — never every free
        // hugepage of the machine — and one look at a time, so two threads
        // do not starve each other.
        let pages = rounded / pageBytes
        let extra = max(physicalAlignment / pageBytes - 1, 0)
        let bounded = max(2 * (4 * pages + 32 + extra), 128) * pageBytes
        let budget = options.contiguousSearchBytes.map { max($0 / pageBytes * pageBytes, rounded) } ?? bounded
        let request = ContiguousRequest(bytes: rounded, pageSize: .huge2M, physicalAlignment: physicalAlignment,
                                        physicalBoundary: physicalBoundary,
                                        numaPolicy: placementPolicy(node: node.node), budgetBytes: budget)
        var mapping: MemoryMapping
        do {
            mapping = try largeSearch.withLock { _ throws(ContiguousError) in try ContiguousMemory.allocate(request) }
        } catch {
            switch error {
            case let .notFound(needed, largest, _, _, _):
                if let giant = try? oneGigabytePage(bytes: bytes, alignment: physicalAlignment, node: node.node) {
                    mapping = giant
                } else {
                    let wider = options.contiguousSearchBytes == nil
                        ? "look at more free pages (DMAHeap.Options.contiguousSearchBytes, up to every free 2 MiB page; this look mapped "
                            + "\(ByteCount.format(budget))), or " : ""
                    throw .noContiguousRun(neededBytes: needed, largestRunBytes: largest, advice: wider + Self.contiguousAdvice)
                }
            case .mapping(let underlying):
                throw .growthFailed(node: node.node, neededBytes: rounded, underlying: underlying)
            case .noPhysicalAddresses:
                throw .noPhysicalAddresses
            case .invalidRequest(let reason):
                throw .noContiguousRun(neededBytes: rounded, largestRunBytes: 0, advice: reason)
            }
        }
        var pagePhysical: [UInt64] = []
        for i in 0..<(mapping.length / pageBytes) {
            guard let physical = mapping.physicalAddress(atOffset: i * pageBytes) else { throw .noPhysicalAddresses }
            pagePhysical.append(physical.rawValue)
        }
        let length = mapping.length
        let pageSize = mapping.pageSize
        let parts = unsafe mapping.relinquish()
        let address = UInt(bitPattern: unsafe parts.base)
        let region = MemoryRegion(address: address, length: length, pageSize: pageSize,
                                  pieces: [.init(offset: 0, length: length, physicalAddress: PhysicalAddress(pagePhysical[0]))])
        let block = unsafe HeapLargeBlock(address: address, length: length, requested: bytes, fd: parts.fd,
                                   pagePhysical: pagePhysical, region: region)
        do { try events.add(region) } catch {
            try? unsafe Sys.munmap(parts.base, length: length)
            if unsafe parts.fd >= 0 { unsafe Sys.close(.init(rawValue: parts.fd)) }
            throw .eventRefused(error)
        }
        largeMap.set(address, pages: pagePhysical, count: pagePhysical.count)
        node.state.withLock { s in
            s.large[address] = block
            s.largeBytes += length
            s.noteMapped()
        }
        return unsafe parts.base
    }

    static let contiguousAdvice = "reserve hugepages before memory fragments (at boot: hugepages=N on the kernel command line, "
        + "or `echo 1 > /proc/sys/vm/compact_memory` then `echo N > /proc/sys/vm/nr_hugepages`), "
        + "or reserve 1 GiB pages (hugepagesz=1G hugepages=N), or allocate smaller pieces"

    /// One 1 GiB page for a large block that fits in it, when the node has one free.
    func oneGigabytePage(bytes: Int, alignment: Int, node: Int) throws -> MemoryMapping? {
        let giant = 1 << 30
        guard bytes <= giant, alignment <= giant, HugepagePoolDirectory.offeredSizes().contains(.huge1G),
              let counters = try? HugepagePoolDirectory(.huge1G).counters(), counters.available > 0 else { return nil }
        return try MemoryMapping(length: giant, options: MappingOptions(pageSize: .huge1G, numaPolicy: placementPolicy(node: node)))
    }

    /// Frees the large block at `address`; false when there is none.
    func freeLarge(_ address: UInt) -> Bool {
        for node in nodes {
            let block: HeapLargeBlock? = node.state.withLock { s in
                guard let block = s.large.removeValue(forKey: address) else { return nil }
                s.largeBytes -= block.length
                return block
            }
            if let block {
                releaseLarge(block)
                return true
            }
        }
        return false
    }

    func releaseLarge(_ block: HeapLargeBlock) {
        events.remove(block.region)
        largeMap.set(block.address, pages: nil, count: block.pagePhysical.count)
        try? unsafe Sys.munmap(UnsafeMutableRawPointer(bitPattern: block.address)!, length: block.length)
        if block.fd >= 0 { Sys.close(.init(rawValue: block.fd)) }
    }

    /// The large block holding `address` and its node, if any.
    func largeBlock(containing address: UInt) -> (node: HeapNode, block: HeapLargeBlock)? {
        for node in nodes {
            if let block = node.state.withLock({ s in
                s.large.values.first { address >= $0.address && address < $0.address + UInt($0.length) }
            }) { return (node, block) }
        }
        return nil
    }
}
