/// A stretch of a pool's memory that is physically contiguous: what a device
/// registration (IOMMU mapping, DPDK external memory, AF_XDP UMEM) needs.
@safe
public struct MempoolChunk: @unchecked Sendable {
    public var address: UnsafeMutableRawPointer
    /// The physical address of `address`, nil when the kernel hid it.
    public var physicalAddress: PhysicalAddress?
    public var length: Int
}

extension Mempool {
    /// Calls `body` with every object's address, in address order.
    func forEachObjectAddress(_ body: (UnsafeMutableRawPointer) -> Void) {
        for page in 0..<layout.pageFirstOffset.count where layout.pageFirstOffset[page] >= 0 {
            var offset = page * pageBytes + layout.pageFirstOffset[page]
            for _ in 0..<layout.pageObjectCount[page] {
                unsafe body(base + offset)
                offset += layout.stride
            }
        }
    }

    /// Calls `body` with every object's index and address, in address order,
    /// whether the object is free or handed out.
    public func forEachObject<E: Error>(_ body: (Int, UnsafeMutableRawPointer) throws(E) -> Void) throws(E) {
        var index = 0
        for page in 0..<layout.pageFirstOffset.count where layout.pageFirstOffset[page] >= 0 {
            var offset = page * pageBytes + layout.pageFirstOffset[page]
            for _ in 0..<layout.pageObjectCount[page] {
                try unsafe body(index, base + offset)
                offset += layout.stride
                index += 1
            }
        }
    }

    /// The pool's memory as physically contiguous chunks (whole pages from
    /// the base up to the page holding the last object's end), merged where
    /// the physical addresses run on. Without physical addresses, one chunk
    /// per page with a nil physical address.
    public var memoryChunks: [MempoolChunk] {
        let pages = (layout.usedLength + pageBytes - 1) / pageBytes
        var chunks = [MempoolChunk]()
        let table = translation?.pagePhysical
        for page in 0..<pages {
            let physical = table?[page] ?? 0
            if let last = chunks.last, let lastPhysical = last.physicalAddress, physical != 0,
               lastPhysical.rawValue &+ UInt64(last.length) == physical
            {
                chunks[chunks.count - 1].length += pageBytes
            } else {
                unsafe chunks.append(MempoolChunk(
                    address: unsafe base + page * pageBytes,
                    physicalAddress: physical == 0 ? nil : PhysicalAddress(rawValue: physical),
                    length: pageBytes))
            }
        }
        return chunks
    }
}
