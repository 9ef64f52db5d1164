import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// Enough free 2 MiB pages for the mapping and pool tests (they take at most 32 at a time).
let hasFree2M = freeHugepages(.huge2M) >= 32

/// Raw flags of `pfn` from /proc/kpageflags.
func kpageflags(_ pfn: UInt64) throws -> UInt64 {
    let handle = try #require(FileHandle(forReadingAtPath: "/proc/kpageflags"))
    defer { try? handle.close() }
    try handle.seek(toOffset: pfn * 8)
    let data = try #require(try handle.read(upToCount: 8))
    return data.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
}
let KPF_HUGE: UInt64 = 1 << 17

/// The error creating a mapping throws, or nil when it succeeds (the mapping
/// is released at once).
func mappingError(length: Int, options: MappingOptions = MappingOptions()) -> MappingError? {
    do {
        let mapping = try MemoryMapping(length: length, options: options)
        _ = consume mapping
        return nil
    } catch {
        return error
    }
}

/// The mount libhugetlbfs chose for `size` when this process started, if
/// another process has unmounted it since. libhugetlbfs reads the mount table
/// once, and the library asks it first, so on a machine without a lasting
/// hugetlbfs mount another process's short-lived one can be its answer.
func vanishedLibhugetlbfsMount(_ size: PageSize) -> String? {
    guard let path = MemoryMapping.hugetlbfsMount(for: size),
          let mounts = try? Kernel.hugetlbfsMounts() else { return nil }
    return mounts.contains(.init(path: path, size: size.bytes)) ? nil : path
}

/// The warnings the inventory gives now for mounts libhugetlbfs chose at
/// start that are gone (`vanishedLibhugetlbfsMount`), one per pool size.
func vanishedLibhugetlbfsMountWarnings() -> [String] {
    Kernel.hugepageSizes().compactMap(PageSize.init(rawValue:)).compactMap { size in
        vanishedLibhugetlbfsMount(size).map {
            "libhugetlbfs finds \($0) for \(size) pages, but /proc/mounts has no hugetlbfs mount there of that page size"
        }
    }
}
