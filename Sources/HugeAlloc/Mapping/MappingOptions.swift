/// How a ``MemoryMapping`` is created.
public struct MappingOptions: Sendable {
    /// What backs the memory.
    public enum Backing: Sendable, Hashable {
        /// Anonymous memory: `mmap(MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_*)`
        /// for hugepages, plain anonymous memory for base pages.
        case anonymous
        /// An anonymous file, `memfd_create(MFD_HUGETLB | MFD_HUGE_*)`: the
        /// memory can be shared by file descriptor and remapped at a chosen
        /// address. Base pages use a shmem memfd.
        case memfd
        /// An unnamed file on a hugetlbfs mount (`open(O_TMPFILE)`, or a
        /// file unlinked at once where O_TMPFILE is refused): nothing is left
        /// on the mount if the process dies. `mount: nil` finds a mount of
        /// the right page size with libhugetlbfs, then /proc/mounts.
        case hugetlbfs(mount: String?)
    }

    /// What to do when the requested page size cannot be had.
    public enum PageSizePolicy: Sendable, Hashable {
        /// Fail with a typed error.
        case exact
        /// Fall back to the next smaller size the kernel offers, down to base
        /// pages; the reason is recorded in ``MemoryMapping/fallback``.
        case fallBackToSmaller
    }

    /// The page size asked for (default 2 MiB).
    public var pageSize: PageSize
    public var backing: Backing
    public var pageSizePolicy: PageSizePolicy
    /// Fault every page in at creation (SIGBUS-guarded, in parallel). Needed
    /// for a translation; hugetlb quota and cgroup limits show up here as
    /// ``MappingError/prefaultFailed(offset:pageSize:)``.
    public var populate: Bool
    /// `mlock(2)` the pages. Always done for base pages, whose physical
    /// address can otherwise change; optional for hugepages, which are never
    /// swapped or migrated by reclaim.
    public var lock: Bool
    /// `madvise(MADV_DONTFORK)`: a forked child does not inherit the mapping,
    /// so copy-on-write can never move a page under a device.
    public var dontFork: Bool
    /// Threads that prefault the pages; 0 picks one per online CPU for large
    /// mappings and 1 for small ones.
    public var prefaultThreads: Int
    /// Base pages only: ask for transparent hugepages (`madvise(MADV_HUGEPAGE)`)
    /// before the pages fault in, so each aligned 2 MiB stretch may come as
    /// one physically contiguous block of base pages.
    public var transparentHugepages: Bool
    /// How device-visible addresses are obtained.
    public var translation: TranslationMode
    /// Where the pages are placed; `mbind(2)` is applied before any page
    /// faults in, and every page's node is verified afterwards.
    public var numaPolicy: NUMAPolicy
    /// Map at exactly this address (`MAP_FIXED`), replacing whatever the
    /// range holds: for a range the caller reserved (the DMA heap's
    /// `PROT_NONE` reservation). When the mapping fails or is released, the
    /// reservation is put back over the range, never a hole; the caller may
    /// also take the range over with `relinquish()`.
    var fixedAddress: UInt? = nil

    public init(
        pageSize: PageSize = .huge2M,
        backing: Backing = .anonymous,
        pageSizePolicy: PageSizePolicy = .exact,
        populate: Bool = true,
        lock: Bool = false,
        dontFork: Bool = true,
        prefaultThreads: Int = 0,
        transparentHugepages: Bool = false,
        translation: TranslationMode = .physical,
        numaPolicy: NUMAPolicy = .any
    ) {
        self.pageSize = pageSize
        self.backing = backing
        self.pageSizePolicy = pageSizePolicy
        self.populate = populate
        self.lock = lock
        self.dontFork = dontFork
        self.prefaultThreads = prefaultThreads
        self.transparentHugepages = transparentHugepages
        self.translation = translation
        self.numaPolicy = numaPolicy
    }
}

/// Why a mapping has a smaller page size than was asked for.
public struct PageSizeFallback: Sendable, Hashable, CustomStringConvertible {
    public var requested: PageSize
    public var chosen: PageSize
    public var reason: String
    public var description: String { "\(requested) pages unavailable (\(reason)); using \(chosen) pages" }
}
