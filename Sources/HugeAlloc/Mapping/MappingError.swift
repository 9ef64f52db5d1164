/// Errors from creating or releasing a ``MemoryMapping``. Each says what was
/// wrong and how to fix it.
public enum MappingError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The length is zero, overflows, or is not a multiple of the page size.
    case invalidLength(requested: Int, pageSize: PageSize, reason: String)
    /// The kernel does not offer this page size.
    case unsupportedPageSize(UnsupportedPageSize)
    /// Not enough free hugepages of this size (system-wide, or on a node).
    case insufficientHugepages(HugepageShortage)
    /// This process's hugetlb cgroup has no room for the pages, though the
    /// system pool may have them free.
    case hugetlbCgroupLimit(HugetlbCgroupShortage)
    /// Locking the mapping would pass RLIMIT_MEMLOCK.
    case memlockLimitTooLow(MemlockShortage)
    /// The hugetlbfs mount's `size=` quota cannot hold `bytes` more (the
    /// system pool itself has enough free pages).
    case hugetlbfsQuotaExceeded(mount: String, bytes: Int, command: String)
    /// No hugetlbfs mount of this page size was found.
    case noHugetlbfsMount(pageSize: PageSize, command: String)
    /// The directory given for ``MappingOptions/Backing/hugetlbfs(mount:)``
    /// is on another file system (`fileSystem`, e.g. "ext4" or "tmpfs"),
    /// whose files have base pages, not hugepages.
    case notHugetlbfs(directory: String, fileSystem: String, pageSize: PageSize, command: String)
    /// The hugetlbfs mount given for ``MappingOptions/Backing/hugetlbfs(mount:)``
    /// serves pages of another size (its `statfs` block size).
    case hugetlbfsPageSizeMismatch(directory: String, mountPageSize: PageSize, requested: PageSize, command: String)
    /// Touching the page at `offset` raised SIGBUS: a hugetlb quota, a
    /// hugetlb cgroup limit or a NORESERVE shortage refused the page.
    case prefaultFailed(offset: Int, pageSize: PageSize)
    /// Physical addresses could not be read.
    case translationFailed(PagemapError)
    /// A NUMA placement could not be applied or was not honoured.
    case placement(NUMAError)
    /// Any other failed system call.
    case systemCall(SystemCallError)

    public var description: String {
        switch self {
        case let .invalidLength(requested, pageSize, reason):
            return "invalid length \(requested) for \(pageSize) pages: \(reason)"
        case let .unsupportedPageSize(payload):
            return payload.description
        case let .insufficientHugepages(shortage):
            return shortage.description
        case let .hugetlbCgroupLimit(shortage):
            return shortage.description
        case let .memlockLimitTooLow(shortage):
            return shortage.description
        case let .hugetlbfsQuotaExceeded(mount, bytes, command):
            return "the hugetlbfs mount \(mount) has no room for \(bytes) more bytes under its size= quota "
                + "(the system pool has enough free pages). Raise the quota with: \(command)"
        case let .noHugetlbfsMount(pageSize, command):
            return "no hugetlbfs mount for \(pageSize) pages. Mount one with: \(command)"
        case let .notHugetlbfs(directory, fileSystem, pageSize, command):
            return "\(directory) is not on hugetlbfs but on \(fileSystem): files there get base pages, not \(pageSize) pages. "
                + "Mount a hugetlbfs and pass its directory: \(command)"
        case let .hugetlbfsPageSizeMismatch(directory, mountPageSize, requested, command):
            return "the hugetlbfs mount \(directory) serves \(mountPageSize) pages, not the \(requested) pages asked for. "
                + "Ask for \(mountPageSize) pages, or mount a hugetlbfs for \(requested) pages: \(command)"
        case let .prefaultFailed(offset, pageSize):
            return "the kernel refused the \(pageSize) page at offset \(offset) when it was touched (SIGBUS): "
                + "a hugetlb cgroup limit or quota is exhausted; check hugetlb.*.limit_in_bytes of this cgroup "
                + "and the mount's size= option"
        case let .translationFailed(error):
            return "physical translation failed: \(error)"
        case let .placement(error):
            return "NUMA placement failed: \(error)"
        case let .systemCall(error):
            return error.description
        }
    }
}
