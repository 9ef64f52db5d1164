import HugeAlloc

/// What the kernel says about one virtual address of a process.
package struct AddressTranslation: Equatable, Sendable {
    package var virtual: UInt
    /// A physical page backs the address (pagemap bit 63).
    package var present: Bool
    /// The page is in swap (pagemap bit 62).
    package var swapped: Bool
    /// The physical address, when present and the PFN is visible (root).
    package var physical: PhysicalAddress?
    /// The base-page frame number holding the address.
    package var pfn: UInt64?
    /// The page size of the mapping holding the address (smaps `KernelPageSize`);
    /// nil when no mapping holds it.
    package var pageSize: Int?
    /// The NUMA node of the physical page, when known.
    package var node: Int?
    /// The frame's /proc/kpageflags names ("HUGE", "COMPOUND_HEAD", ...).
    package var flags: [String]
}

/// Translating a process's virtual addresses and finding the physically
/// contiguous runs of its hugepage mappings.
package enum ProcessTranslation {
    /// Translates `addresses` of process `pid`: reads /proc/PID/smaps (page
    /// size), /proc/PID/pagemap (present, swapped, PFN), /proc/kpageflags
    /// (flags) and sysfs memory blocks (node), all below `fs`'s root.
    package static func translate(pid: Int32, addresses: [UInt], in fs: KernelFiles = .live) throws(DiagnosticsError) -> [AddressTranslation] {
        let mappings = try ProcessMemoryMap.read(pid: pid, in: fs)
        let reader: PagemapReader
        do {
            reader = try PagemapReader(pid: pid, procRoot: fs.path("/proc"))
        } catch {
            throw .pagemap(error)
        }
        let nodes = PhysicalMemoryNodes(in: fs)
        var result: [AddressTranslation] = []
        for address in addresses {
            let mapping = mappings.first { $0.start <= address && address < $0.end }
            let entry: PagemapEntry
            do {
                entry = try reader.entry(at: address)
            } catch {
                throw .pagemap(error)
            }
            var t = AddressTranslation(
                virtual: address, present: entry.isPresent, swapped: entry.isSwapped,
                physical: nil, pfn: entry.pfn, pageSize: mapping?.pageSize, node: nil, flags: [])
            if let pfn = entry.pfn {
                let physical = PhysicalAddress(pfn: pfn, offset: Int(address % UInt(Sys.basePageSize)), basePageSize: Sys.basePageSize)
                t.physical = physical
                t.node = nodes.node(of: physical)
                t.flags = (try? KernelPageFlags.read(pfn: pfn, in: fs))?.flagNames ?? []
            }
            result.append(t)
        }
        return result
    }

    /// The physically contiguous runs of one hugepage mapping of process
    /// `pid`: one pagemap entry per hugepage, grouped into runs by ``PhysicalTranslation``; `offset` is from the mapping's start.
    package static func runs(of mapping: ProcessMapping, pid: Int32, in fs: KernelFiles = .live) throws(DiagnosticsError) -> [PhysicalRun] {
        let reader: PagemapReader
        do {
            reader = try PagemapReader(pid: pid, procRoot: fs.path("/proc"))
        } catch {
            throw .pagemap(error)
        }
        return try runs(of: mapping, reader: reader)
    }

    static func runs(of mapping: ProcessMapping, reader: borrowing PagemapReader) throws(DiagnosticsError) -> [PhysicalRun] {
        let size = max(mapping.pageSize, Sys.basePageSize)
        var runs: [PhysicalRun] = []
        // Pages without a physical address (not present, swapped, PFN hidden)
        // split the mapping into segments; each segment's runs come from the one run detector.
        var segment: [UInt64] = []
        var segmentStart = 0
        func flush() {
            guard !segment.isEmpty else { return }
            for run in PhysicalRun.runs(pagePhysical: segment, pageSize: size) {
                runs.append(PhysicalRun(physical: run.physical, offset: segmentStart + run.offset,
                                        bytes: run.bytes, pages: run.pages))
            }
            segment.removeAll()
        }
        var offset = 0
        while offset < mapping.bytes {
            let entry: PagemapEntry
            do {
                entry = try reader.entry(at: mapping.start + UInt(offset))
            } catch {
                throw .pagemap(error)
            }
            if let pfn = entry.pfn {
                if segment.isEmpty { segmentStart = offset }
                segment.append(pfn &* UInt64(Sys.basePageSize))
            } else {
                flush()
            }
            offset += size
        }
        flush()
        return runs
    }
}
