import CHugetlbfs
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The kernel resources of one mapping: the address range and, for
/// file-backed memory, the descriptor. Trivially destructible fields only, so
/// that ``release()`` can `discard self`; `deinit` releases on every other path.
@safe @usableFromInline
struct MappedRegion: ~Copyable {
    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline let length: Int
    /// File descriptor of a memfd or hugetlbfs file, or -1.
    let fd: Int32
    /// The range was placed in a reservation (``MappingOptions/fixedAddress``):
    /// releasing it puts the reservation back (`PROT_NONE`, `MAP_FIXED`)
    /// instead of leaving a hole another mapping could take.
    let reserved: Bool

    init(base: UnsafeMutableRawPointer, length: Int, fd: Int32, reserved: Bool = false) {
        unsafe self.base = base
        self.length = length
        self.fd = fd
        self.reserved = reserved
    }

    deinit {
        if reserved {
            _ = try? unsafe Sys.mmap(length: length, protection: .none, flags: [.private, .anonymous, .noReserve, .fixed], at: base)
        } else {
            try? unsafe Sys.munmap(base, length: length)
        }
        if fd >= 0 { Sys.close(FileDescriptor(rawValue: fd)) }
    }

    /// Gives up ownership without unmapping: the caller takes over the range
    /// and the descriptor.
    consuming func forget() -> (base: UnsafeMutableRawPointer, length: Int, fd: Int32) {
        let parts = (unsafe self.base, self.length, self.fd)
        discard self
        return unsafe parts
    }

    /// Unmaps and closes, reporting the first error.
    consuming func release() throws(SystemCallError) {
        let base = unsafe self.base, length = self.length, fd = self.fd
        discard self
        if fd >= 0 { Sys.close(FileDescriptor(rawValue: fd)) }
        try unsafe Sys.munmap(base, length: length)
    }
}

/// A range of memory backed by hugepages or locked base pages, whose
/// physical address is known for every byte.
///
/// Noncopyable: the memory is unmapped exactly once, by ``unmap()`` (which
/// reports errors) or when the value is destroyed. Creation checks the page
/// size, the free hugepages and the memlock limit first and throws a
/// ``MappingError`` that says how to fix a shortage; then it maps
/// (`mmap(2)` with `MAP_HUGETLB`, `memfd_create(2)` with `MFD_HUGETLB`, or a
/// hugetlbfs file), applies `madvise(MADV_DONTFORK)` and the NUMA policy
/// (`mbind(2)`) before any page faults in, prefaults in parallel with a
/// SIGBUS guard, locks (`mlock(2)`), and reads every page's physical address
/// from `/proc/self/pagemap` in one batched pass.
public struct MemoryMapping: ~Copyable {
    @usableFromInline let region: MappedRegion
    /// The page size the memory is actually mapped with.
    public let pageSize: PageSize
    /// What backs the memory.
    public let backing: MappingOptions.Backing
    /// Set when ``MappingOptions/PageSizePolicy/fallBackToSmaller`` chose a
    /// smaller page size than asked for, with the reason.
    public let fallback: PageSizeFallback?
    /// Whether the pages are locked with `mlock(2)`.
    public let isLocked: Bool
    /// The per-page physical addresses (nil with ``TranslationMode/none`` or
    /// without populate).
    public var translation: PhysicalTranslation? { _translation }
    @usableFromInline var _translation: PhysicalTranslation?
    /// The NUMA node of every page, when the pages were populated and a
    /// placement was asked for (nil otherwise).
    public let pageNodes: [Int]?
    /// How ``translation`` was built.
    public let translationMode: TranslationMode
    /// Whether `MADV_DONTFORK` applies.
    public let dontFork: Bool

    // MARK: - accessors

    /// First byte of the mapping.
    @inlinable public var base: UnsafeMutableRawPointer { unsafe region.base }
    /// Length in bytes; a multiple of ``pageSize``.
    @inlinable public var length: Int { region.length }
    /// Number of pages.
    @inlinable public var pageCount: Int { region.length / pageSize.bytes }
    /// The file descriptor of a memfd or hugetlbfs backing (nil for
    /// anonymous memory): shareable with another process, mappable again.
    public var fileDescriptor: FileDescriptor? { region.fd >= 0 ? FileDescriptor(rawValue: region.fd) : nil }

    /// The physical address of byte `offset`, in O(1); nil outside the
    /// mapping or without a translation.
    @inlinable public func physicalAddress(atOffset offset: Int) -> PhysicalAddress? {
        _translation?.physicalAddress(atOffset: offset)
    }

    /// The physical address of page `page`'s first byte, or nil outside the
    /// mapping or without a translation.
    @inlinable public func physicalAddress(ofPage page: Int) -> PhysicalAddress? {
        guard page >= 0, page < pageCount else { return nil }
        return physicalAddress(atOffset: page &* pageSize.bytes)
    }

    /// The physical address of the byte at `pointer`; nil outside the mapping.
    @inlinable public func physicalAddress(of pointer: UnsafeRawPointer) -> PhysicalAddress? {
        physicalAddress(atOffset: unsafe pointer - UnsafeRawPointer(region.base))
    }

    /// The virtual address of `physical`, in O(log n); nil when no page of
    /// this mapping holds it.
    @inlinable public func virtualAddress(of physical: PhysicalAddress) -> UnsafeMutableRawPointer? {
        guard let offset = _translation?.offset(of: physical) else { return nil }
        return unsafe region.base + offset
    }

    /// Bytes from `offset` to the end of its physically contiguous run.
    @inlinable public func contiguousLength(atOffset offset: Int) -> Int {
        _translation?.contiguousLength(atOffset: offset) ?? 0
    }

    /// SPDK-style: the physical address of byte `offset`, with `length`
    /// shrunk to the bytes from there that are physically contiguous.
    @inlinable public func translate(offset: Int, length: inout Int) -> PhysicalAddress? {
        guard _translation != nil else { length = 0; return nil }
        return _translation!.translate(offset: offset, length: &length)
    }

    /// The physically contiguous runs, in virtual order.
    public var runs: [PhysicalRun] { translation?.runs ?? [] }

    /// The NUMA node of every page as the kernel reports it now (base pages
    /// can migrate after ``pageNodes`` was read at creation). Calls
    /// `move_pages(2)` through ``NUMAPlacement/nodes(of:length:pageSize:)``.
    public func currentPageNodes() throws(NUMAError) -> [Int] {
        try unsafe NUMAPlacement.nodes(of: region.base, length: region.length, pageSize: pageSize)
    }

    // MARK: - creation

    /// Maps `length` bytes as `options` say. `length` must be a positive
    /// multiple of the page size (with ``MappingOptions/PageSizePolicy/fallBackToSmaller``,
    /// of the requested size).
    public init(length: Int, options: MappingOptions = MappingOptions()) throws(MappingError) {
        let (pageSize, fallback) = try Self.choosePageSize(length: length, options: options)
        if pageSize.isHuge, case .bind(let node) = options.numaPolicy {
            // A bind must find its pages on that node: say so before mapping,
            // instead of a SIGBUS at the first fault.
            do {
                try NUMAPlacement.checkFreeHugepages(node: node, pageSize: pageSize, needed: length / pageSize.bytes)
            } catch {
                if case let .notEnoughHugepages(shortage) = error { throw .insufficientHugepages(shortage) }
                // Anything else (a node that does not exist) is reported
                // precisely by the placement step below.
            }
        }
        let lock = options.lock || !pageSize.isHuge
        if lock, let shortage = MemlockCheck.shortage(needed: length) { throw .memlockLimitTooLow(shortage) }

        let region = try Self.mapRegion(length: length, pageSize: pageSize, backing: options.backing,
                                        at: options.fixedAddress)
        let base = unsafe region.base
        do {
            if options.dontFork { try unsafe Sys.madvise(base, length: length, .dontFork) }
            if options.transparentHugepages && !pageSize.isHuge { try unsafe Sys.madvise(base, length: length, .hugePage) }
        } catch { throw .systemCall(error) }
        do {
            try unsafe NUMAPlacement.apply(options.numaPolicy, to: base, length: length)
        } catch { throw .placement(error) }

        if options.populate {
            let pages = length / pageSize.bytes
            let threads = options.prefaultThreads > 0 ? options.prefaultThreads
                : (length >= 64 << 20 ? max(1, min(Self.onlineCPUs, pages / 4)) : 1)
            let fault: Int?
            do {
                fault = try unsafe Sys.guardedTouch(base, length: length, stride: pageSize.bytes, threads: threads)
            } catch { throw .systemCall(error) }
            if let fault { throw .prefaultFailed(offset: fault, pageSize: pageSize) }
        }
        if lock {
            do {
                try unsafe Sys.mlock(base, length: length, onFault: !options.populate)
            } catch {
                if error.errno == .noMemory || error.errno == .notPermitted || error.errno == .resourceTemporarilyUnavailable {
                    throw Self.memlockError(length)
                }
                throw .systemCall(error)
            }
        }

        var nodes: [Int]? = nil
        if options.populate, options.numaPolicy != .any {
            do {
                let found = try unsafe NUMAPlacement.nodes(of: base, length: length, pageSize: pageSize)
                try NUMAPlacement.verify(options.numaPolicy, nodes: found)
                nodes = found
            } catch { throw .placement(error) }
        }

        var translation: PhysicalTranslation? = nil
        if options.populate {
            translation = try unsafe Self.buildTranslation(mode: options.translation, base: base, length: length, pageSize: pageSize)
        }

        self.region = region
        self.pageSize = pageSize
        self.backing = options.backing
        self.fallback = fallback
        self.isLocked = lock
        self._translation = translation
        self.pageNodes = nodes
        self.translationMode = options.translation
        self.dontFork = options.dontFork
    }

    /// Assembles a mapping from parts (used by ``remapped(keeping:)``).
    init(region: consuming MappedRegion, pageSize: PageSize, backing: MappingOptions.Backing,
         fallback: PageSizeFallback?, isLocked: Bool, translation: PhysicalTranslation?,
         pageNodes: [Int]?, translationMode: TranslationMode, dontFork: Bool) {
        self.region = region
        self.pageSize = pageSize
        self.backing = backing
        self.fallback = fallback
        self.isLocked = isLocked
        self._translation = translation
        self.pageNodes = pageNodes
        self.translationMode = translationMode
        self.dontFork = dontFork
    }

    /// Gives up the mapping without unmapping it: the caller owns the range
    /// (and the descriptor, -1 for anonymous memory) from now on. For
    /// mappings placed in a reserved range, which the caller re-reserves
    /// instead of unmapping.
    consuming func relinquish() -> (base: UnsafeMutableRawPointer, length: Int, fd: Int32) {
        unsafe region.forget()
    }

    /// Unmaps now and reports any error; the mapping is gone either way.
    /// The corresponding C functions are `munmap(2)` and `close(2)`.
    public consuming func unmap() throws(MappingError) {
        do { try region.release() } catch { throw .systemCall(error) }
    }

    /// Builds (or rebuilds) the translation after the pages were touched by
    /// other means, for mappings created without populate.
    public mutating func resolveTranslation(mode: TranslationMode = .physical) throws(MappingError) {
        _translation = try unsafe Self.buildTranslation(mode: mode, base: region.base, length: region.length, pageSize: pageSize)
    }

    // MARK: - steps

    static var onlineCPUs: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// Validates the length and picks the page size, falling back to smaller
    /// sizes when the policy allows.
    static func choosePageSize(length: Int, options: MappingOptions) throws(MappingError) -> (PageSize, PageSizeFallback?) {
        let requested = options.pageSize
        guard length > 0 else {
            throw .invalidLength(requested: length, pageSize: requested, reason: "the length must be greater than zero")
        }
        guard length % requested.bytes == 0 else {
            let up = length.addingReportingOverflow(requested.bytes - 1)
            let rounded = up.overflow ? nil : up.partialValue / requested.bytes * requested.bytes
            throw .invalidLength(requested: length, pageSize: requested,
                                 reason: "not a multiple of the page size" + (rounded.map { "; use \($0)" } ?? ""))
        }
        var offered = HugepagePoolDirectory.offeredSizes()
        offered.insert(.base, at: 0)
        var candidates = offered.filter { $0 <= requested }.sorted(by: >)
        if options.pageSizePolicy == .exact || candidates.first != requested {
            if !offered.contains(requested) {
                guard options.pageSizePolicy == .fallBackToSmaller, let chosen = candidates.first else {
                    throw .unsupportedPageSize(UnsupportedPageSize(requested: requested.bytes, offered: offered))
                }
                return (chosen, PageSizeFallback(requested: requested, chosen: chosen,
                                                 reason: "the kernel offers no \(requested) pages"))
            }
            candidates = [requested]
        }
        var firstShortage: MappingError? = nil
        for size in candidates {
            guard size.isHuge else {
                let reason = firstShortage.map { "\($0)" } ?? "no hugepage size was available"
                return (size, size == requested ? nil : PageSizeFallback(requested: requested, chosen: size, reason: reason))
            }
            let needed = length / size.bytes
            var error: MappingError?
            if let counters = try? HugepagePoolDirectory(size).counters(), counters.available < needed {
                error = .insufficientHugepages(HugepageShortage(
                    pageSize: size, node: nil, needed: needed, free: counters.available, total: counters.total))
            } else if let shortage = HugetlbCgroup.read(pageSize: size)?.shortage(adding: length) {
                error = .hugetlbCgroupLimit(shortage)
            }
            if let error {
                if options.pageSizePolicy == .exact { throw error }
                if firstShortage == nil { firstShortage = error }
                continue
            }
            return (size, size == requested ? nil : PageSizeFallback(requested: requested, chosen: size,
                                                                     reason: firstShortage.map { "\($0)" } ?? ""))
        }
        throw firstShortage ?? .unsupportedPageSize(UnsupportedPageSize(requested: requested.bytes, offered: offered))
    }

    /// The memlock error for a refused `mlock` of `length` bytes: the limit
    /// the kernel applied, or what the process has locked already.
    static func memlockError(_ length: Int) -> MappingError {
        let limit = ((try? Sys.memlockLimit())?.soft ?? nil) ?? Int.max
        return .memlockLimitTooLow(MemlockShortage(needed: length, alreadyLocked: MemlockCheck.lockedBytes(), limit: limit))
    }

    /// Creates the backing and maps it.
    static func mapRegion(
        length: Int, pageSize: PageSize, backing: MappingOptions.Backing, at fixedAddress: UInt? = nil
    ) throws(MappingError) -> MappedRegion {
        let (base, fd) = try unsafe mapBacking(length: length, pageSize: pageSize, backing: backing, at: fixedAddress)
        return unsafe MappedRegion(base: base, length: length, fd: fd?.rawValue ?? -1, reserved: fixedAddress != nil)
    }

    /// Opens the backing file (if any) and maps it; closes the file on failure.
    static func mapBacking(
        length: Int, pageSize: PageSize, backing: MappingOptions.Backing, at fixedAddress: UInt? = nil
    ) throws(MappingError) -> (UnsafeMutableRawPointer, FileDescriptor?) {
        var flags: Sys.MapFlags = []
        if pageSize.isHuge { flags.formUnion([.hugeTLB, .hugePageSize(pageSize.bytes)]) }
        var fd: FileDescriptor? = nil
        var mountPath: String? = nil
        switch backing {
        case .anonymous:
            flags.formUnion([.private, .anonymous])
        case .memfd:
            do {
                fd = try Sys.memfdCreate(name: "hugealloc", hugePageSize: pageSize.isHuge ? pageSize.bytes : nil)
            } catch { throw .systemCall(error) }
            flags = [.shared]
        case .hugetlbfs(let mount):
            guard pageSize.isHuge else {
                throw .unsupportedPageSize(UnsupportedPageSize(requested: pageSize.bytes, offered: HugepagePoolDirectory.offeredSizes()))
            }
            let command = Self.hugetlbfsMountCommand(for: pageSize)
            guard let directory = mount ?? Self.hugetlbfsMount(for: pageSize) else {
                throw .noHugetlbfsMount(pageSize: pageSize, command: command)
            }
            mountPath = directory
            let directoryFD: FileDescriptor
            do { directoryFD = try Sys.openDirectory(directory, followLinks: true) } catch { throw .systemCall(error) }
            defer { Sys.close(directoryFD) }
            try Self.checkHugetlbfs(directoryFD, directory: directory, pageSize: pageSize, command: command)
            do {
                do {
                    fd = try Sys.openTemporaryFile(in: directoryFD, detail: directory)
                } catch where error.errno == .notSupported || error.errno == .invalidArgument || error.errno == .isDirectory {
                    fd = try Sys.openUnlinkedFile(inDirectory: directory, prefix: "hugealloc.\(getpid()).")
                }
            } catch { throw .systemCall(error) }
            flags = [.shared]
        }
        do {
            if let fd { try Sys.ftruncate(fd, length: length) }
            if fixedAddress != nil { flags.insert(.fixed) }
            let address = unsafe UnsafeMutableRawPointer(bitPattern: fixedAddress ?? 0)
            return (try unsafe Sys.mmap(length: length, protection: .readWrite, flags: flags, fd: fd, at: address), fd)
        } catch {
            if let fd { Sys.close(fd) }
            if let fixedAddress {
                // A failed MAP_FIXED may have unmapped the reservation: claim the range again if so.
                _ = try? unsafe Sys.mmap(length: length, protection: .none, flags: [.private, .anonymous, .noReserve, .fixedNoReplace],
                                         at: UnsafeMutableRawPointer(bitPattern: fixedAddress))
            }
            if pageSize.isHuge, error.errno == .noMemory || (error.call == "ftruncate" && error.errno == .invalidArgument),
               let counters = try? HugepagePoolDirectory(pageSize).counters() {
                let needed = length / pageSize.bytes
                if counters.available >= needed, let shortage = HugetlbCgroup.read(pageSize: pageSize)?.shortage(adding: length) {
                    throw .hugetlbCgroupLimit(shortage)
                }
                if let mountPath, counters.available >= needed {
                    throw .hugetlbfsQuotaExceeded(
                        mount: mountPath, bytes: length,
                        command: "mount -o remount,size=<bytes> \(mountPath)  (or drop the size= option)")
                }
                throw .insufficientHugepages(HugepageShortage(
                    pageSize: pageSize, node: nil, needed: needed, free: counters.available, total: counters.total))
            }
            throw .systemCall(error)
        }
    }

    /// The command that mounts a hugetlbfs for `size` pages at the
    /// conventional place (/dev/hugepages-<size>).
    static func hugetlbfsMountCommand(for size: PageSize) -> String {
        "mkdir -p /dev/hugepages-\(size) && mount -t hugetlbfs -o pagesize=\(size) nodev /dev/hugepages-\(size)"
    }

    /// Refuses a backing directory that is not a hugetlbfs of `pageSize`:
    /// on any other file system the file would get base pages (reported as
    /// hugepages), and a hugetlbfs of another size gives pages of that size.
    /// On hugetlbfs, `statfs(2)`'s `f_bsize` is the mount's page size.
    /// Calls `fstatfs(2)` on the open directory.
    static func checkHugetlbfs(
        _ directory: FileDescriptor, directory path: String, pageSize: PageSize, command: String
    ) throws(MappingError) {
        let status: Sys.FileSystemStatus
        do { status = try Sys.fileSystemStatus(of: directory) } catch { throw .systemCall(error) }
        guard status.isHugetlbfs else {
            throw .notHugetlbfs(directory: path, fileSystem: status.typeName, pageSize: pageSize, command: command)
        }
        guard status.blockSize == pageSize.bytes else {
            let mountSize = PageSize(rawValue: status.blockSize)
            throw .hugetlbfsPageSizeMismatch(directory: path, mountPageSize: mountSize ?? .base, requested: pageSize, command: command)
        }
    }

    /// A hugetlbfs mount of page size `size` that exists now: the one
    /// libhugetlbfs prefers (`hugetlbfs_find_path_for_size`) when /proc/mounts
    /// still lists it — libhugetlbfs reads the mount table once, when the
    /// process starts, and may name a mount that is gone — else the first of
    /// /proc/mounts.
    static func hugetlbfsMount(for size: PageSize) -> String? {
        let mounts = SystemInventory.hugetlbfsMounts().filter { $0.pageSize == size }
        if let path = unsafe hugetlbfs_find_path_for_size(size.bytes) {
            let preferred = unsafe String(cString: path)
            if mounts.contains(where: { $0.path == preferred }) { return preferred }
        }
        return mounts.first?.path
    }

    static func buildTranslation(
        mode: TranslationMode, base: UnsafeMutableRawPointer, length: Int, pageSize: PageSize
    ) throws(MappingError) -> PhysicalTranslation? {
        switch mode {
        case .none:
            return nil
        case .virtualAsIOVA:
            return PhysicalTranslation.identity(address: UInt(bitPattern: base), length: length, pageSize: pageSize.bytes)
        case .physical:
            do {
                let reader = try PagemapReader()
                return try PhysicalTranslation.read(address: UInt(bitPattern: base), length: length,
                                                    pageSize: pageSize.bytes, reader: reader)
            } catch { throw .translationFailed(error) }
        }
    }
}
