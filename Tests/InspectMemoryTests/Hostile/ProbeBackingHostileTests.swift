import Foundation
import HugeAllocTestSupport
import Testing

/// `probe --backing hugetlbfs --mount DIR` with a DIR that is not hugetlbfs
/// must fail, not report base pages as hugepages.
@Suite(.usesHugepagePool) struct ProbeBackingHostileTests {
    @Test(.enabled(if: freeHugepages(.huge2M) >= 4, "needs free 2 MiB hugepages (so only the directory can be refused)"))
    func probeRefusesADirectoryThatIsNotHugetlbfs() throws {
        let dir = NSTemporaryDirectory() + "inspect-memory-probe-ext-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let result = try run(["probe", "--page-size", "2M", "--pages", "1", "--backing", "hugetlbfs", "--mount", dir])
        #expect(result.status == 1, "\(result.out)")
        #expect(result.err.contains("\(dir) is not on hugetlbfs"), "\(result.err)")
        #expect(result.err.split(separator: "\n").count == 1)
    }
}
