import SystemPackage

/// One 64-bit entry of `/proc/PID/pagemap`, decoded.
///
/// Layout (Documentation/admin-guide/mm/pagemap.rst): bits 0–54 PFN when
/// present (swap type and offset when swapped), bit 55 soft-dirty, bit 56
/// exclusively mapped, bit 57 uffd write-protected, bit 61 file-page or
/// shared-anonymous, bit 62 swapped, bit 63 present.
public struct PagemapEntry: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    @inlinable public var isPresent: Bool { rawValue & (1 << 63) != 0 }
    @inlinable public var isSwapped: Bool { rawValue & (1 << 62) != 0 }
    @inlinable public var isFileOrSharedAnonymous: Bool { rawValue & (1 << 61) != 0 }
    @inlinable public var isUffdWriteProtected: Bool { rawValue & (1 << 57) != 0 }
    @inlinable public var isExclusivelyMapped: Bool { rawValue & (1 << 56) != 0 }
    @inlinable public var isSoftDirty: Bool { rawValue & (1 << 55) != 0 }

    /// The raw PFN field (bits 0–54). Meaningful only when ``isPresent``; the
    /// kernel reports 0 here to readers without `CAP_SYS_ADMIN`.
    @inlinable public var rawPFN: UInt64 { rawValue & ((1 << 55) - 1) }

    /// The page frame number, trusted only when the page is present and the
    /// kernel revealed it (non-zero).
    @inlinable public var pfn: UInt64? {
        guard isPresent else { return nil }
        let pfn = rawPFN
        return pfn == 0 ? nil : pfn
    }

    /// Swap type (bits 0–4) and offset (bits 5–54) of a swapped page.
    public var swapLocation: (type: Int, offset: UInt64)? {
        guard isSwapped, !isPresent else { return nil }
        return (Int(rawValue & 0x1f), (rawValue >> 5) & ((1 << 50) - 1))
    }

    public var description: String {
        var flags: [String] = []
        if isPresent { flags.append("present") }
        if isSwapped { flags.append("swapped") }
        if isFileOrSharedAnonymous { flags.append("file/shared") }
        if isExclusivelyMapped { flags.append("exclusive") }
        if isSoftDirty { flags.append("soft-dirty") }
        let pfnText = isPresent ? "pfn=0x" + String(rawPFN, radix: 16) : "pfn=-"
        return "\(pfnText) [\(flags.joined(separator: ","))]"
    }
}

/// Errors from reading `/proc/PID/pagemap`.
public enum PagemapError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The pagemap file could not be opened (no such process, or no permission).
    case cannotOpen(path: String, errno: Errno)
    /// A read failed.
    case readFailed(path: String, errno: Errno)
    /// The kernel reported PFN 0 for a present page: this process lacks
    /// `CAP_SYS_ADMIN`, so physical addresses are hidden.
    case physicalAddressesHidden
    /// A page in the range was not present (not faulted in, or swapped out).
    case pageNotPresent(virtualAddress: UInt)

    public var description: String {
        switch self {
        case let .cannotOpen(path, errno):
            let hint = errno == .noSuchFileOrDirectory ? "the process does not exist" :
                errno == .permissionDenied || errno == .notPermitted
                ? "reading another process's pagemap needs the same user or CAP_SYS_PTRACE; run as root" : "\(errno)"
            return "cannot open \(path): \(hint) (errno \(errno.rawValue))"
        case let .readFailed(path, errno):
            return "reading \(path) failed: \(errno) (errno \(errno.rawValue))"
        case .physicalAddressesHidden:
            return "the kernel hides physical frame numbers from this process (pagemap reads PFN 0): "
                + "physical addresses need CAP_SYS_ADMIN. Run as root (or `setcap cap_sys_admin+ep` the binary), "
                + "or use IOVA = virtual address mode with an IOMMU (TranslationMode.virtualAsIOVA)."
        case let .pageNotPresent(address):
            return "page at 0x\(String(address, radix: 16)) is not present in memory (never touched, or swapped out); "
                + "map with populate and lock so every page is resident"
        }
    }
}

/// A long-lived reader of one process's `/proc/PID/pagemap`.
///
/// One file descriptor for the reader's lifetime, and batched `pread(2)`s:
/// a range of N pages costs ⌈N / 8192⌉ system calls, never one per page.
/// Reads `/proc/self/pagemap` or `/proc/PID/pagemap`.
public struct PagemapReader: ~Copyable {
    @usableFromInline let fd: FileDescriptor
    /// The process read, or `nil` for this process.
    public let pid: Int32?
    /// The file opened.
    public let path: String

    /// Entries per `pread`: 64 KiB of entries, 32 MiB of 4 KiB pages.
    static let batch = 8192

    /// Opens `/proc/self/pagemap` (`pid == nil`) or `/proc/PID/pagemap`.
    public init(pid: Int32? = nil, procRoot: String = "/proc") throws(PagemapError) {
        let path = pid.map { "\(procRoot)/\($0)/pagemap" } ?? "\(procRoot)/self/pagemap"
        do {
            self.fd = try Sys.openReadOnly(path)
        } catch {
            throw .cannotOpen(path: path, errno: error.errno)
        }
        self.pid = pid
        self.path = path
    }

    deinit { Sys.close(fd) }

    /// Closes the file now.
    public consuming func close() {}

    /// The entries for `count` consecutive base pages starting at the page
    /// that holds `virtualAddress`.
    public func entries(startingAt virtualAddress: UInt, count: Int) throws(PagemapError) -> [PagemapEntry] {
        guard count > 0 else { return [] }
        var raw = [UInt64](repeating: 0, count: count)
        try unsafe raw.withUnsafeMutableBufferPointer { (buffer) throws(PagemapError) in
            try unsafe read(startingAt: virtualAddress, into: buffer)
        }
        return raw.map(PagemapEntry.init(rawValue:))
    }

    /// The entry for the page holding `virtualAddress`.
    public func entry(at virtualAddress: UInt) throws(PagemapError) -> PagemapEntry {
        try entries(startingAt: virtualAddress, count: 1)[0]
    }

    /// Reads raw entries for `buffer.count` pages starting at the page holding
    /// `virtualAddress`, in batches. Entries past the end of the address space
    /// read as 0 (not present).
    func read(startingAt virtualAddress: UInt, into buffer: UnsafeMutableBufferPointer<UInt64>) throws(PagemapError) {
        let page = UInt(Sys.basePageSize)
        var index = 0
        while index < buffer.count {
            let n = min(Self.batch, buffer.count - index)
            let offset = Int((virtualAddress / page + UInt(index)) * 8)
            let chunk = unsafe UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buffer)[(index * 8)..<((index + n) * 8)])
            let got: Int
            do {
                got = try unsafe Sys.pread(fd, into: chunk, offset: offset)
            } catch {
                throw .readFailed(path: path, errno: error.errno)
            }
            if got < n * 8 {
                unsafe chunk[got...].initializeMemory(as: UInt8.self, repeating: 0)
            }
            index += n
        }
    }

    /// Whether this process can see physical frame numbers: touches a page of
    /// its own and reads its pagemap entry. The kernel reports PFN 0 without
    /// `CAP_SYS_ADMIN`. Reads `/proc/self/pagemap`.
    public static func physicalAddressesVisible() -> Bool {
        guard let reader = try? PagemapReader() else { return false }
        let probe = UnsafeMutablePointer<UInt64>.allocate(capacity: Sys.basePageSize / 8)
        defer { unsafe probe.deallocate() }
        unsafe probe.initialize(repeating: 0x5a, count: Sys.basePageSize / 8)
        let address = UInt(bitPattern: probe)
        guard let entry = try? reader.entry(at: address) else { return false }
        return entry.pfn != nil
    }
}
