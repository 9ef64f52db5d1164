import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// `.hugetlbfs(mount:)` must map hugetlbfs files only, of the page size asked
/// for: a directory on ext4 or tmpfs gives base pages, which the mapping
/// would otherwise report as hugepages.
@Suite(.usesHugepagePool, .serialized) struct HugetlbfsBackingCheckTests {
    /// Free (unreserved) 2 MiB pages, read from sysfs.
    static var free2MPages: Int {
        let dir = "/sys/kernel/mm/hugepages/hugepages-2048kB"
        func read(_ name: String) -> Int {
            Int((try? String(contentsOfFile: "\(dir)/\(name)", encoding: .utf8))?
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        }
        return read("free_hugepages") - read("resv_hugepages")
    }
    static let canMap = free2MPages >= 4
    static let kernelOffers1G = FileManager.default.fileExists(atPath: "/sys/kernel/mm/hugepages/hugepages-1048576kB")

    /// The error a 2 MiB `.hugetlbfs(mount: directory)` mapping throws, or nil.
    func error(mappingIn directory: String, pageSize: PageSize = .huge2M) -> MappingError? {
        do {
            let mapping = try MemoryMapping(length: pageSize.bytes, options: .init(pageSize: pageSize, backing: .hugetlbfs(mount: directory)))
            try? mapping.unmap()
            return nil
        } catch {
            return error
        }
    }

    @Test(.enabled(if: canMap, "needs free 2 MiB hugepages (so only the directory can be refused)"))
    func aDirectoryOnAnotherFileSystemIsRefusedWithTheMountCommand() throws {
        let dir = NSTemporaryDirectory() + "hugealloc-not-hugetlbfs-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let error = try #require(self.error(mappingIn: dir), "a 2M mapping in \(dir) (not hugetlbfs) succeeded")
        let message = "\(error)"
        #expect(message.contains(dir) && message.contains("is not on hugetlbfs"), "\(message)")
        #expect(message.contains("mount -t hugetlbfs -o pagesize=2M nodev"), "\(message)")
        // Nothing was left in the directory.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)
    }

    @Test(.enabled(if: canMap && FileManager.default.fileExists(atPath: "/dev/shm"), "needs /dev/shm and free 2 MiB hugepages"))
    func tmpfsIsRefusedAndNamed() throws {
        let error = try #require(self.error(mappingIn: "/dev/shm"), "a 2M mapping in /dev/shm (tmpfs) succeeded")
        let message = "\(error)"
        #expect(message.contains("/dev/shm is not on hugetlbfs") && message.contains("tmpfs"), "\(message)")
    }

    @Test(.enabled(if: getuid() == 0 && canMap && kernelOffers1G, "needs root to mount a 1 GiB hugetlbfs, and free 2 MiB pages"))
    func aMountOfAnotherPageSizeIsRefusedNamingBothSizes() throws {
        let dir = NSTemporaryDirectory() + "hugealloc-1g-mount-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try #require(mount("nodev", dir, "hugetlbfs", 0, "pagesize=1G") == 0, "mount: \(String(cString: strerror(errno)))")
        defer { umount2(dir, Int32(MNT_DETACH)) }
        let error = try #require(self.error(mappingIn: dir), "a 2M mapping on a 1G hugetlbfs mount succeeded")
        let message = "\(error)"
        #expect(message.contains(dir) && message.contains("1G pages") && message.contains("2M pages"), "\(message)")
        #expect(message.contains("mount -t hugetlbfs -o pagesize=2M nodev"), "\(message)")
    }
}
