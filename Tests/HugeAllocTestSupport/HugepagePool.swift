import Foundation
import HugeAlloc
import Testing

/// Whether the tests run as root: the condition most live tests are gated on.
public let isRoot = getuid() == 0

/// Free (unreserved) pages of `size`, read from sysfs independently of the
/// library: `free_hugepages - resv_hugepages` system-wide, or a node's
/// `free_hugepages` (nodes keep no reserved count). Other processes move
/// this number: read it to gate a test or size a request, never to assert.
public func freeHugepages(_ size: PageSize, node: Int? = nil) -> Int {
    let name = "hugepages-\(size.bytes / 1024)kB"
    guard let node else {
        let directory = "/sys/kernel/mm/hugepages/\(name)/"
        return (Kernel.integerIfPresent(directory + "free_hugepages") ?? 0)
            - (Kernel.integerIfPresent(directory + "resv_hugepages") ?? 0)
    }
    return Kernel.integerIfPresent("/sys/devices/system/node/node\(node)/hugepages/\(name)/free_hugepages") ?? 0
}

/// The free 2 MiB pages a test run counts on (tools/test reserves them). The
/// tests' own searches for free runs map no more at once, so a run leaves
/// other processes that use hugepages the rest.
public let hugepagesForATestRun = 512

/// Tests that map hugepages, change the pool, or compare its counters with
/// the library's take turns: each test case (every case of every test in a
/// suite that carries the trait) runs alone among them, while every other
/// test keeps running in parallel. `.serialized` cannot do this, as it only
/// orders the tests inside one suite, and these suites live in two test
/// targets.
///
/// So a test that needs N free pages competes only with other processes,
/// and this process's own counters (hugetlb, VmLck, VmPin, descriptors) move
/// only with the test that holds the turn, which is what `expectNoLeak`
/// compares.
public struct HugepagePoolTurn: TestTrait, SuiteTrait, TestScoping {
    public var isRecursive: Bool { true }

    public func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        // A test marked on its own inside a marked suite already has the turn.
        if Self.held { return try await function() }
        await Self.turns.acquire()
        do {
            try await Self.$held.withValue(true) { try await function() }
        } catch {
            await Self.turns.release()
            throw error
        }
        await Self.turns.release()
    }

    @TaskLocal static var held = false
    static let turns = Turns()

    /// A first-come, first-served lock that suspends waiting tasks instead of
    /// blocking the few threads Swift Testing runs tests on.
    actor Turns {
        private var taken = false
        private var waiting: [CheckedContinuation<Void, Never>] = []

        func acquire() async {
            guard taken else { taken = true; return }
            await withCheckedContinuation { waiting.append($0) }
        }

        func release() {
            if waiting.isEmpty { taken = false } else { waiting.removeFirst().resume() }
        }
    }
}

extension Trait where Self == HugepagePoolTurn {
    /// Runs the test (each test of the suite) alone among the tests that use
    /// the hugepage pool; see ``HugepagePoolTurn``.
    public static var usesHugepagePool: Self { Self() }
}

/// Runs `body` holding the lock every writer of `nr_hugepages` takes:
/// tests that change the pool and `tools/test`'s reservation, in any
/// process of any checkout. Without it a run that restores the value it
/// saw at its start undoes another run's change, and the other run's
/// assertions about the pool size fail. Calls `flock(2)` on a file in /tmp
/// (`tools/test` names the same file).
public func withHugepageReservationLock<T>(_ body: () throws -> T) throws -> T {
    let path = "/tmp/hugealloc-hugepage-reservation.lock"
    let fd = open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw SystemCallError(call: "open", errno: .init(rawValue: errno), detail: path) }
    defer { close(fd) }
    while flock(fd, LOCK_EX) != 0 {
        guard errno == EINTR else { throw SystemCallError(call: "flock", errno: .init(rawValue: errno), detail: path) }
    }
    return try body()
}

/// The longest physically contiguous run of free 2 MiB pages, at most `cap`
/// bytes, and how many pages were mapped to find it. The pool's layout is
/// the machine's, so tests of contiguous blocks ask for what it holds.
///
/// Looks the way `ContiguousMemory` does: first among as many pages as its
/// over-allocation attempt for a `cap`-byte block maps (4 × its pages + 32,
/// the pages the free pool hands out first), then, when no run of `cap`
/// bytes is among them, among every free page up to
/// ``hugepagesForATestRun``. A request for the run with that many pages as
/// its budget is served from the same pages. Maps them with a memfd and
/// gives them back; counts again when another process took pages in between.
public func largestFree2MiBRun(cap: Int) throws -> (bytes: Int, pagesProbed: Int) {
    let first = 4 * (cap / PageSize.huge2M.bytes) + 32
    let found = try largestFree2MiBRun(cap: cap, amongUpTo: first)
    if found.bytes == cap || found.pagesProbed < first { return found }
    return try largestFree2MiBRun(cap: cap, amongUpTo: hugepagesForATestRun)
}

private func largestFree2MiBRun(cap: Int, amongUpTo wanted: Int) throws -> (bytes: Int, pagesProbed: Int) {
    var attempts = 1
    while true {
        let pages = min(freeHugepages(.huge2M), wanted)
        do {
            let probe = try MemoryMapping(length: pages * PageSize.huge2M.bytes, options: .init(backing: .memfd))
            return (min(FragmentationReport(probe).largestRunBytes, cap), pages)
        } catch {
            guard case .insufficientHugepages = error, attempts < 4 else { throw error }
            attempts += 1
        }
    }
}
