@testable import HugeAllocDiagnostics
import Foundation
import Testing
@testable import HugeAlloc
import HugeAllocTestSupport
@testable import InspectMemoryKit

/// `inspect-memory metrics` and `watch` over fixture trees.
@Suite struct MetricsWatchFixtureTests {
    /// The samples of the exposition text, "name{labels}" → value; fails on
    /// a family without HELP and TYPE lines before its samples.
    func samples(_ text: String) throws -> [String: String] {
        var result: [String: String] = [:]
        var described = Set<String>()
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
                described.insert(String(line.split(separator: " ")[2]))
                continue
            }
            let parts = line.split(separator: " ")
            let name = String(parts[0].prefix { $0 != "{" })
            #expect(described.contains(name), "\(name) has no HELP/TYPE before its samples")
            #expect(name.hasPrefix("hugealloc_"))
            result[String(parts.dropLast().joined(separator: " "))] = String(parts.last!)
        }
        return result
    }

    @Test func metricsOfAFixtureHavePoolsMountsHoldersStaleFilesLimitsAndRuns() throws {
        let fixture = try HugepageMapFixture(editing: ["/proc/4343/comm": "spdk \"tgt\"\\x\n"])
        defer { fixture.remove() }
        let result = try run(["metrics", "--root", fixture.root])
        #expect(result.status == 0, "\(result.err)")
        let s = try samples(result.out)
        #expect(s["hugealloc_hugepage_size_bytes{size=\"2M\"}"] == "2097152")
        #expect(s["hugealloc_hugepages_pool_pages{node=\"0\",size=\"2M\"}"] == "28")
        #expect(s["hugealloc_hugepages_free_pages{node=\"1\",size=\"2M\"}"] == "4")
        #expect(s["hugealloc_hugepages_pool_pages{node=\"1\",size=\"1G\"}"] == "1")
        #expect(s["hugealloc_hugepages_reserved_pages{size=\"2M\"}"] == "2")
        #expect(s["hugealloc_hugetlbfs_mount_info{mountpoint=\"/mnt/huge\",size=\"2M\"}"] == "1")
        #expect(s["hugealloc_process_hugepages_bytes{command=\"l2fwd\",pid=\"4242\",size=\"1G\"}"] == "1073741824")
        #expect(s["hugealloc_process_hugepages_bytes{command=\"spdk \\\"tgt\\\"\\\\x\",pid=\"4343\",size=\"2M\"}"] == "4194304")
        #expect(s["hugealloc_memlock_limit_bytes{limit=\"soft\"}"] == "65536")
        #expect(s["hugealloc_frame_tables_readable"] == "1")
        #expect(s["hugealloc_largest_free_run_bytes{node=\"0\",size=\"2M\"}"] == "20971520")
        #expect(s["hugealloc_largest_free_run_bytes{node=\"1\",size=\"1G\"}"] == "0")
        #expect(s["hugealloc_free_runs{node=\"0\",size=\"2M\"}"] == "4")
        #expect(s["hugealloc_stale_hugetlbfs_files{mountpoint=\"/mnt/huge\"}"] == "0")
    }

    @Test func metricsWithoutCapSysAdminLeaveOutTheRunsAndSaySo() throws {
        let fixture = try HugepageMapFixture()
        defer { fixture.remove() }
        let status = try String(contentsOfFile: fixture.copy.path("/proc/self/status"), encoding: .utf8)
        try fixture.copy.write("/proc/self/status", status.replacingOccurrences(of: "000001ffffffffff", with: "0000000000000000"))
        let result = try run(["metrics", "--root", fixture.root])
        #expect(result.status == 0, "\(result.err)")
        let s = try samples(result.out)
        #expect(s["hugealloc_frame_tables_readable"] == "0")
        #expect(!s.keys.contains { $0.hasPrefix("hugealloc_largest_free_run_bytes") })
        #expect(s["hugealloc_hugepages_pool_pages{node=\"0\",size=\"2M\"}"] == "28")
    }

    @Test func unlimitedMemlockIsPlusInfAndLabelValuesAreEscaped() {
        #expect(MetricsText.format(.infinity) == "+Inf")
        #expect(MetricsText.format(2097152) == "2097152")
        #expect(MetricsText.escapeLabel("a\"b\\c\nd") == "a\\\"b\\\\c\\nd")
    }

    /// Not a terminal: a line per interval; a change the test makes to the
    /// fixture's counters shows in the next lines and is named.
    @Test func watchOffATerminalPrintsALinePerIntervalAndNamesChanges() throws {
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer { copy.remove() }
        // Output to a file the test polls: no blocking read, no pipe to fill.
        let output = copy.root + "/watch.out"
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: inspectMemoryPath)
        process.arguments = ["watch", "--interval", "0.2", "--root", copy.root]
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardInput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        /// The complete lines written so far, once `condition` holds for them (up to 20 s).
        func lines(until condition: ([String]) -> Bool) -> [String] {
            var lines: [String] = []
            for _ in 0..<200 {
                let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
                lines = text.split(separator: "\n").dropLast(text.hasSuffix("\n") ? 0 : 1).map(String.init)
                if condition(lines) { break }
                usleep(100_000)
            }
            return lines
        }
        let first = try #require(lines { !$0.isEmpty }.first)
        #expect(first.contains("2M node0 total=512 free=508 surplus=0"), "\(first)")
        #expect(first.contains("holders: 4242/l2fwd=2M:8388608,1G:2147483648"), "\(first)")
        #expect(!first.contains("changed:"))
        try copy.write("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/free_hugepages", "500\n")
        let line = try #require(lines { $0.contains { $0.contains("changed:") } }.first { $0.contains("changed:") })
        #expect(line.contains("2M node0 total=512 free=500 surplus=0"), "\(line)")
        #expect(line.hasSuffix("changed: pool 2M 0"), "\(line)")
        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)  // SIGTERM ends the loop cleanly
    }

    @Test func watchScreenHighlightsChangesNewAndGoneHolders() throws {
        let before = WatchState(try HugepageSnapshot.read(in: KernelFiles(root: fixtureRoot("two-node-dpdk-host"))))
        var after = before
        after.pools[1].free -= 4
        after.holders[0].pid = 5151
        let lines = WatchScreen.render(after, previous: before, interval: 1, time: Date(), rows: 40, columns: 100)
        let pool = try #require(lines.first { $0.hasPrefix("2M node 0") })
        #expect(pool.contains("\u{1B}[7m504 (-4)\u{1B}[0m"), "\(pool)")
        #expect(lines.contains { $0.hasPrefix("\u{1B}[1;32m5151") && $0.contains("(new)") })
        #expect(lines.contains { $0.hasPrefix("\u{1B}[2m4242") && $0.contains("(exited or unmapped)") })
        // A small terminal: cut to its rows and columns.
        let small = WatchScreen.render(after, previous: before, interval: 1, time: Date(), rows: 5, columns: 20)
        #expect(small.count == 5 && small.last?.hasPrefix("…") == true)
    }
}
