import Foundation
import HugeAllocTestSupport
import Testing
import CHugeAllocShims
@testable import HugeAlloc

/// The SIGBUS guard of the prefault touch may turn into an error only a
/// fault it caused: a synchronous SIGBUS (`BUS_ADRERR`, `BUS_ADRALN`,
/// `BUS_OBJERR`, `BUS_MCEERR_AR`) whose address lies in the range the current
/// thread is touching. Every other SIGBUS must behave as if the guard were
/// not installed. These cases install hostile dispositions, send SIGBUS and
/// end processes, so each runs in a forked child (`ha_sigbus_selftest`) that
/// reports how many steps it completed and how it ended.
struct SIGBUSGuardTests {
    struct Outcome: Equatable, CustomStringConvertible {
        /// The child's exit code, or 128 + the signal that ended it.
        var status: Int32
        var steps: Int32
        var description: String { "status \(status), \(steps) steps" }
    }

    static let killedBySIGBUS = 128 + SIGBUS

    /// Runs `scenario` in a child; `fd` is a file whose second `page` faults
    /// (by default the child makes a one-page memfd).
    func run(_ scenario: Int32, fd: Int32 = -1, page: Int = 0) throws -> Outcome {
        var steps: Int32 = 0
        let status = ha_sigbus_selftest(scenario, fd, page, &steps)
        if status < 0 { throw SystemCallError(call: "fork", errno: Sys.lastErrno, detail: "SIGBUS self-test \(scenario)") }
        return Outcome(status: status, steps: steps)
    }

    // (a) SIG_IGN: the guard still catches faults in its range; a sent SIGBUS
    // is ignored; a fault outside the range kills as the kernel would instead
    // of repeating forever. Both orders: SIG_IGN set after the guard was
    // installed (it is installed again) and before.
    @Test(arguments: [
        (HA_SIGBUS_SELFTEST_IGNORED_AFTER_INSTALL, Int32(5)),
        (HA_SIGBUS_SELFTEST_IGNORED_FROM_START, Int32(2)),
    ])
    func ignoredSIGBUSStillGuardsTheRangeAndAFaultOutsideKills(scenario: Int32, steps: Int32) throws {
        let outcome = try run(scenario)
        #expect(outcome == Outcome(status: Self.killedBySIGBUS, steps: steps))
    }

    // (b) kill(2) and sigqueue(3) SIGBUS, after and during a guarded touch,
    // reach the SA_SIGINFO handler installed before; a fault is still caught.
    @Test func sentSIGBUSReachesThePreviousHandler() throws {
        let outcome = try run(HA_SIGBUS_SELFTEST_SENT_TO_PREVIOUS)
        #expect(outcome == Outcome(status: 0, steps: 5))
    }

    // (b) with a real hugetlbfs quota fault: a one-page quota, a two-page file
    // mapped MAP_NORESERVE; the second page is refused when touched.
    // It maps a hugepage: it takes its turn with the other tests that do, so
    // that a test mapping most of the pool at that moment cannot starve it.
    @Test(.enabled(if: isRoot && hasFree2M, "needs root to mount hugetlbfs and a free 2 MiB hugepage"), .usesHugepagePool)
    func sentSIGBUSThenAHugetlbfsQuotaFaultIsStillCaught() throws {
        let page = PageSize.huge2M.bytes
        try withHugetlbfsMount(pageSize: .huge2M, options: "size=\(page)") { mount in
            let fd = try Sys.openUnlinkedFile(inDirectory: mount, prefix: "sigbus-")
            defer { Sys.close(fd) }
            try Sys.ftruncate(fd, length: 2 * page)
            let outcome = try run(HA_SIGBUS_SELFTEST_SENT_TO_PREVIOUS, fd: fd.rawValue, page: page)
            #expect(outcome == Outcome(status: 0, steps: 5))
        }
    }

    // (c) pthread_kill(SIGBUS) to a thread inside a guarded touch (the caller,
    // then a worker of the parallel touch) is not a fault: the touch completes
    // and the plain sa_handler installed before receives it.
    @Test func threadKillDuringATouchReachesThePreviousHandler() throws {
        let outcome = try run(HA_SIGBUS_SELFTEST_THREAD_KILL)
        #expect(outcome == Outcome(status: 0, steps: 3))
    }

    // (d) SIG_DFL: a real fault outside the guarded range, while a touch is in
    // progress on the same thread, kills the process with SIGBUS.
    @Test func faultOutsideTheRangeWithDefaultDispositionKills() throws {
        let outcome = try run(HA_SIGBUS_SELFTEST_DEFAULT_FAULT_OUTSIDE)
        #expect(outcome == Outcome(status: Self.killedBySIGBUS, steps: 1))
    }

    // SIG_DFL: kill(2) SIGBUS after a guarded touch kills the process, as it
    // would without the guard, instead of being swallowed.
    @Test func sentSIGBUSWithDefaultDispositionKills() throws {
        let outcome = try run(HA_SIGBUS_SELFTEST_DEFAULT_SENT)
        #expect(outcome == Outcome(status: Self.killedBySIGBUS, steps: 1))
    }

    // A fault outside the range during a touch goes to the SA_SIGINFO handler
    // installed before (it grows the file, so the access succeeds), not to
    // the touch as a fault of its own.
    @Test func faultOutsideTheRangeReachesThePreviousHandler() throws {
        let outcome = try run(HA_SIGBUS_SELFTEST_PREVIOUS_FIXES_OUTSIDE)
        #expect(outcome == Outcome(status: 0, steps: 2))
    }

    // The application resets SIGBUS to SIG_DFL or SIG_IGN between touches
    // that four threads start at once: the guard is installed again, once.
    @Test func guardIsInstalledAgainFromSeveralThreads() throws {
        let outcome = try run(HA_SIGBUS_SELFTEST_REINSTALL_CONCURRENT)
        #expect(outcome == Outcome(status: 0, steps: 16))
    }
}
