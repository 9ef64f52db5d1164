import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// The named-file fallback of the hugetlbfs backing (mkstemp, where
/// O_TMPFILE is refused) holds a shared flock on its file, so a cleaner that
/// takes an exclusive lock first (DPDK's convention, inspect-memory's
/// --clean) sees it in use during the moment it has a name.
@Suite(.usesHugepagePool) struct HugetlbfsNamedFileLockTests {
    @Test func theNamedFileIsHeldWithASharedLock() throws {
        let dir = NSTemporaryDirectory() + "hugealloc-named-lock-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fd = try Sys.openUnlinkedFile(inDirectory: dir, prefix: "hugealloc.test.")
        defer { Sys.close(fd) }
        // Another open file description of the same file: its exclusive lock must be refused.
        let other = open("/proc/self/fd/\(fd.rawValue)", O_RDONLY)
        try #require(other >= 0)
        defer { close(other) }
        #expect(flock(other, LOCK_EX | LOCK_NB) == -1 && errno == EWOULDBLOCK, "no shared lock held on the named file")
        // A shared lock is still granted: users of the file do not exclude each other.
        #expect(flock(other, LOCK_SH | LOCK_NB) == 0)
    }
}
