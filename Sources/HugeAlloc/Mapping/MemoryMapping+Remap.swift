import SystemPackage

extension MemoryMapping {
    /// A new mapping holding `pages` (indexes into this mapping) in that
    /// order, virtually contiguous; every page not listed goes back to the
    /// kernel at once. The physical pages do not move: only their virtual
    /// addresses change.
    ///
    /// File-backed pages (memfd, hugetlbfs) are mapped again at chosen
    /// addresses with `mmap(MAP_FIXED)` inside a reserved range and the pages
    /// not kept are freed with `fallocate(FALLOC_FL_PUNCH_HOLE)`; anonymous
    /// pages are moved with `mremap(MREMAP_FIXED)` and the rest unmapped.
    /// The new mapping's translation is read afresh from
    /// `/proc/self/pagemap`, so it re-verifies every address.
    ///
    /// This mapping is consumed either way; on failure all of its memory is
    /// released and the error says why.
    public consuming func remapped(keeping pages: [Int]) throws(MappingError) -> MemoryMapping {
        let pageSize = self.pageSize, backing = self.backing, fallback = self.fallback
        let locked = self.isLocked, nodes = self.pageNodes, mode = self.translationMode, dontFork = self.dontFork
        let pageCount = self.pageCount
        let (oldBase, oldLength, oldFD) = unsafe region.forget()
        let ps = pageSize.bytes
        var newBase: UnsafeMutableRawPointer? = nil
        func releaseAll() {
            try? unsafe Sys.munmap(oldBase, length: oldLength)
            if let newBase = unsafe newBase { try? unsafe Sys.munmap(newBase, length: pages.count * ps) }
            if oldFD >= 0 { Sys.close(FileDescriptor(rawValue: oldFD)) }
        }
        guard !pages.isEmpty, Set(pages).count == pages.count, pages.allSatisfy({ (0..<pageCount).contains($0) }) else {
            releaseAll()
            throw .invalidLength(requested: pages.count * ps, pageSize: pageSize,
                                 reason: "the pages to keep must be distinct indexes below \(pageCount), at least one")
        }
        do {
            let target = try unsafe Self.reserveAligned(length: pages.count * ps, alignment: ps)
            unsafe newBase = target
            // Move or map each stretch of consecutive source pages in one call.
            var j = 0
            while j < pages.count {
                var run = 1
                while j + run < pages.count, pages[j + run] == pages[j] + run { run += 1 }
                let destination = unsafe target + j * ps
                if oldFD >= 0 {
                    // MAP_POPULATE: the file's pages exist already; fill the new
                    // page tables so the pagemap shows them present.
                    _ = try unsafe Sys.mmap(length: run * ps, protection: .readWrite, flags: [.shared, .fixed, .populate],
                                            fd: FileDescriptor(rawValue: oldFD), offset: pages[j] * ps, at: destination)
                } else {
                    try unsafe Sys.mremapFixed(oldBase + pages[j] * ps, length: run * ps, to: destination)
                }
                j += run
            }
            // Give back what is not kept, now.
            try unsafe Sys.munmap(oldBase, length: oldLength)
            if oldFD >= 0 {
                let kept = Set(pages)
                var i = 0
                while i < pageCount {
                    guard !kept.contains(i) else { i += 1; continue }
                    var run = 1
                    while i + run < pageCount, !kept.contains(i + run) { run += 1 }
                    try Sys.punchHole(FileDescriptor(rawValue: oldFD), offset: i * ps, length: run * ps)
                    i += run
                }
            }
            if dontFork { try unsafe Sys.madvise(target, length: pages.count * ps, .dontFork) }
            if locked && oldFD >= 0 { try unsafe Sys.mlock(target, length: pages.count * ps) }
        } catch {
            releaseAll()
            throw .systemCall(error)
        }
        let newRegion = unsafe MappedRegion(base: newBase!, length: pages.count * ps, fd: oldFD)
        let translation = try unsafe Self.buildTranslation(mode: mode, base: newBase!, length: pages.count * ps, pageSize: pageSize)
        return MemoryMapping(
            region: newRegion, pageSize: pageSize, backing: backing, fallback: fallback, isLocked: locked,
            translation: translation, pageNodes: nodes.map { n in pages.map { n[$0] } },
            translationMode: mode, dontFork: dontFork)
    }

    /// Reserves `length` bytes of address space aligned to `alignment`
    /// (`PROT_NONE`, nothing committed) for pages to be placed into.
    /// The corresponding C calls are `mmap(2)` and `munmap(2)`.
    static func reserveAligned(length: Int, alignment: Int) throws(SystemCallError) -> UnsafeMutableRawPointer {
        let raw = try unsafe Sys.mmap(length: length + alignment, protection: .none, flags: [.private, .anonymous, .noReserve])
        let address = UInt(bitPattern: raw)
        let aligned = (address + UInt(alignment) - 1) & ~(UInt(alignment) - 1)
        let head = Int(aligned - address)
        let tail = alignment - head
        if head > 0 { try unsafe Sys.munmap(raw, length: head) }
        if tail > 0 { try unsafe Sys.munmap(raw + head + length, length: tail) }
        return unsafe raw + head
    }
}
