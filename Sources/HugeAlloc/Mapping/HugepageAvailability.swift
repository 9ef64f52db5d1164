import CHugetlbfs

/// The few hugepage facts the mapping layer checks before it maps: which
/// sizes the kernel offers, how many pages of a size are free, where a
/// hugetlbfs mount of a size is, what this process has locked. Each is read
/// afresh, through the inventory layer's single-purpose readers (the full
/// picture is `SystemInventory`); libhugetlbfs finds mounts first.
enum HugepageAvailability {
    static let sysfs = "/sys/kernel/mm/hugepages"
    static var live: SystemFiles { SystemFiles(root: "/") }

    /// Hugepage sizes offered by the kernel, ascending.
    static func offeredSizes() -> [PageSize] {
        let names = (try? live.entriesIfPresent("sys/kernel/mm/hugepages")) ?? nil
        return (names ?? []).compactMap { try? InventoryParse.hugepageDirectorySize($0, path: sysfs) }.sorted()
    }

    static func directory(_ size: PageSize, node: Int? = nil) -> String {
        let leaf = "hugepages-\(size.bytes / 1024)kB"
        if let node { return "/sys/devices/system/node/node\(node)/hugepages/\(leaf)" }
        return "\(sysfs)/\(leaf)"
    }

    /// Pages of `size` that a new mapping can still get: free minus those
    /// reserved by existing mappings but not yet faulted.
    static func available(_ size: PageSize) -> (available: Int, total: Int)? {
        let dir = "sys/kernel/mm/hugepages/hugepages-\(size.bytes / 1024)kB"
        let files = live
        guard let free = try? files.integer("\(dir)/free_hugepages"),
              let reserved = try? files.integer("\(dir)/resv_hugepages"),
              let total = try? files.integer("\(dir)/nr_hugepages") else { return nil }
        return (max(0, free - reserved), total)
    }

    /// The command that raises the system-wide pool so `needed` more pages are free.
    static func reserveCommand(_ size: PageSize, needed: Int, available: Int, total: Int) -> String {
        "echo \(total + needed - available) > \(directory(size))/nr_hugepages"
    }

    /// A hugetlbfs mount of page size `size`: libhugetlbfs first, then the
    /// inventory's reading of /proc/mounts (libhugetlbfs reads the mount table
    /// once, when the process starts).
    static func mount(for size: PageSize) -> String? {
        if let path = unsafe hugetlbfs_find_path_for_size(size.bytes) {
            return unsafe String(cString: path)
        }
        let mounts = try? SystemInventory.readMounts(live, defaultSize: defaultHugepageSize())
        return mounts?.first(where: { $0.pageSize == size })?.path
    }

    /// The default hugepage size (/proc/meminfo Hugepagesize).
    static func defaultHugepageSize() -> PageSize? {
        let files = live
        guard let meminfo = try? files.text("proc/meminfo"),
              let bytes = try? InventoryParse.meminfoValue(meminfo, key: "Hugepagesize", path: files.path("proc/meminfo"))
        else { return nil }
        return PageSize(rawValue: bytes)
    }

    /// Bytes this process has locked already (/proc/self/status VmLck).
    static func lockedBytes() -> Int {
        let files = live
        guard let status = try? files.text("proc/self/status") else { return 0 }
        return ((try? InventoryParse.meminfoValue(status, key: "VmLck", path: files.path("proc/self/status"))) ?? nil) ?? 0
    }

    /// Whether CAP_IPC_LOCK is effective (it lifts RLIMIT_MEMLOCK).
    static func hasIPCLock() -> Bool {
        (try? SystemInventory.readCapabilities(live))?.ipcLock ?? false
    }
}
