@testable import HugeAllocDiagnostics
import Foundation
import Testing
@testable import HugeAlloc
import HugeAllocTestSupport
@testable import InspectMemoryKit

@Suite struct DiagnosticsFixtureTests {
    @Test func smapsAndNumaMapsDescribeEveryMapping() throws {
        let fs = KernelFiles(root: fixtureRoot("two-node-dpdk-host"))
        let maps = try ProcessMemoryMap.read(pid: 4242, in: fs)
        #expect(maps.count == 5)
        let rtemap = try #require(maps.first { $0.path == "/mnt/huge/rtemap_0" })
        #expect(rtemap.start == 0x7f40_0000_0000 && rtemap.end == 0x7f40_0080_0000)
        #expect(rtemap.pageSize == 2 << 20 && rtemap.hugetlbBytes == 8 << 20 && rtemap.isHugetlb)
        #expect(rtemap.nodes == [0] && !rtemap.isLocked)
        let giant = try #require(maps.first { $0.start == 0x7f40_4000_0000 })
        #expect(giant.pageSize == 1 << 30 && giant.bytes == 2 << 30 && giant.path == nil)
        #expect(giant.nodes == [0, 1] && giant.isLocked && giant.hugetlbBytes == 2 << 30)
        let lockedSmall = try #require(maps.first { $0.start == 0x7f50_0000_0000 })
        #expect(lockedSmall.isLocked && lockedSmall.lockedBytes == 64 << 10 && lockedSmall.nodes == [1] && !lockedSmall.isHugetlb)
        let stack = try #require(maps.first { $0.path == "[stack]" })
        #expect(!stack.isLocked && !stack.isHugetlb)
    }

    @Test func missingProcessIsNamedNotCrashed() throws {
        let fs = KernelFiles(root: fixtureRoot("two-node-dpdk-host"))
        #expect(throws: DiagnosticsError.noSuchProcess(pid: 9999)) { try ProcessMemoryMap.read(pid: 9999, in: fs) }
        #expect(throws: DiagnosticsError.self) { try ProcessMemoryMap.parseSmaps("Rss: 4 kB\n") }
    }

    @Test func holdersSumPrivateAndSharedHugetlbPerSize() throws {
        let fs = KernelFiles(root: fixtureRoot("two-node-dpdk-host"))
        let holders = HugepageHolders.scan(in: fs)
        #expect(holders == [
            HugepageHolder(pid: 4242, command: "l2fwd", pageSize: 2 << 20, bytes: 8 << 20),
            HugepageHolder(pid: 4242, command: "l2fwd", pageSize: 1 << 30, bytes: 2 << 30),
        ])
    }

    @Test func mountsAreParsedWithPageSizeAndEscapes() throws {
        let fs = KernelFiles(root: fixtureRoot("two-node-dpdk-host"))
        #expect(StaleHugepageFiles.mounts(in: fs) == [
            HugetlbfsMount(path: "/mnt/huge", pageSize: .huge2M),
            HugetlbfsMount(path: "/mnt/huge 1g", pageSize: .huge1G),
        ])
    }

    @Test func staleFilesSkipOpenMappedAndEmptyFilesAndCleanRemovesOnlyStale() throws {
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer { copy.remove() }
        // Process 4242 holds /mnt/huge/held open; it maps rtemap_0 (its maps file).
        try FileManager.default.createDirectory(atPath: copy.root + "/proc/4242/fd", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: copy.root + "/proc/4242/fd/3", withDestinationPath: "/mnt/huge/held")
        let stale = StaleHugepageFiles.find(in: copy.fs)
        #expect(stale.map(\.path) == ["/mnt/huge/rtemap_1", "/mnt/huge/sub/rtemap_2"])
        #expect(stale.allSatisfy { $0.bytes >= 8192 })

        let report = try HugepagesCommand.report(in: copy.fs)
        #expect(report.staleFiles.map(\.path) == stale.map(\.path))

        let removed = StaleHugepageFiles.clean(stale, in: copy.fs).removed
        #expect(removed == stale)
        for path in ["/mnt/huge/rtemap_1", "/mnt/huge/sub/rtemap_2"] {
            #expect(!FileManager.default.fileExists(atPath: copy.root + path))
        }
        for path in ["/mnt/huge/held", "/mnt/huge/rtemap_0", "/mnt/huge/empty"] {
            #expect(FileManager.default.fileExists(atPath: copy.root + path))
        }
        #expect(StaleHugepageFiles.find(in: copy.fs).isEmpty)
    }

    @Test func mapsDeviceNumbersDecodeLikeMakedev() {
        #expect(StaleHugepageFiles.deviceNumber("00:2f") == 0x2f)
        #expect(StaleHugepageFiles.deviceNumber("fe:01") == 0xfe01)
        #expect(StaleHugepageFiles.deviceNumber("103:1a2") == (0x103 << 8 | 0xa2 | 0x100 << 12))
        #expect(StaleHugepageFiles.deviceNumber("zz") == nil)
    }

    @Test func cleanNeverRemovesAFileThatBecameBusy() throws {
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer { copy.remove() }
        let stale = StaleHugepageFiles.find(in: copy.fs)
        #expect(stale.map(\.path).contains("/mnt/huge/held"))
        // Between find and clean, a process opens it.
        try FileManager.default.createDirectory(atPath: copy.root + "/proc/77/fd", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: copy.root + "/proc/77/fd/9", withDestinationPath: "/mnt/huge/held")
        let removed = StaleHugepageFiles.clean(stale, in: copy.fs).removed
        #expect(!removed.map(\.path).contains("/mnt/huge/held"))
        #expect(FileManager.default.fileExists(atPath: copy.root + "/mnt/huge/held"))
    }

    @Test func hugepagePoolsPerSizeAndNode() throws {
        let fs = KernelFiles(root: fixtureRoot("two-node-dpdk-host"))
        let report = try HugepagesCommand.report(in: fs)
        let all2M = try #require(report.pools.first { $0.pageSize == 2 << 20 && $0.node == nil })
        #expect(all2M.total == 512 && all2M.free == 508 && all2M.reserved == 0 && all2M.overcommit == 0)
        let node1 = try #require(report.pools.first { $0.pageSize == 2 << 20 && $0.node == 1 })
        #expect(node1.total == 0 && node1.reserved == nil)
        #expect(report.pools.filter { $0.pageSize == 1 << 30 }.map(\.total) == [2, 1, 1])
        #expect(report.holders.count == 2)
        #expect(report.mounts.map(\.path) == ["/mnt/huge", "/mnt/huge 1g"])
    }

    @Test func doctorWarnsWithFixCommands() throws {
        let fs = KernelFiles(root: fixtureRoot("two-node-dpdk-host"))
        let checks = Dictionary(uniqueKeysWithValues: Doctor.run(in: fs).map { ($0.name, $0) })
        #expect(checks["hugepages"]?.status == .ok)
        #expect(checks["hugepages-free"]?.status == .warn)  // no free 1G page
        #expect(checks["memlock"]?.status == .warn)
        #expect(checks["memlock"]?.fix?.contains("ulimit -l unlimited") == true)
        #expect(checks["physical-addresses"]?.status == .warn)
        #expect(checks["numa-2M"]?.status == .warn)
        #expect(checks["numa-2M"]?.fix == "inspect-memory setup --pages 2M:256 --node 1")
        #expect(checks["numa-1G"]?.status == .ok)
        #expect(checks["thp"]?.status == .ok)
        #expect(checks["mount-2M"]?.status == .ok && checks["mount-1G"]?.status == .ok)
        #expect(checks["stale-files"]?.status == .warn)
        #expect(checks["stale-files"]?.fix == "inspect-memory hugepages --clean")
        #expect(checks["compaction"]?.status == .warn)
        #expect(checks["compaction"]?.fix?.contains("compact_unevictable_allowed") == true)
        #expect(Doctor.compactionCheck("0\n")?.status == .ok && Doctor.compactionCheck(nil) == nil)
        #expect(!checks.values.contains { $0.status == .fail })
        #expect(checks.values.allSatisfy { ($0.status == .ok) == ($0.fix == nil) })
    }

    @Test func numaReportHasNodesDistancesAndHugepages() throws {
        let fs = KernelFiles(root: fixtureRoot("two-node-dpdk-host"))
        let report = try NumaCommand.report(node: nil, in: fs)
        #expect(report.nodes.map(\.node) == [0, 1])
        let node1 = try #require(report.nodes.last)
        #expect(node1.cpus == [4, 5, 6, 7] && node1.distances == ["0": 21, "1": 10])
        #expect(node1.memTotal == 8_192_000 << 10 && node1.memFree == 4_096_000 << 10)
        #expect(node1.hugepages.map(\.total) == [0, 1])
        #expect(try NumaCommand.report(node: 1, in: fs).nodes.map(\.node) == [1])
    }

    @Test func doctorFailsWithoutHugepages() throws {
        let fs = KernelFiles(root: fixtureRoot("empty-hugepage-pool"))
        let checks = Dictionary(uniqueKeysWithValues: Doctor.run(in: fs).map { ($0.name, $0) })
        #expect(checks["hugepages"]?.status == .fail)
        #expect(checks["hugepages"]?.fix?.hasPrefix("inspect-memory setup --pages 2M:512") == true)
        #expect(checks["thp"]?.status == .warn)
        #expect(checks["memlock"]?.status == .ok)
        #expect(checks["physical-addresses"]?.status == .ok)
    }

    @Test func pageRequestsAreValidated() throws {
        let fs = KernelFiles(root: fixtureRoot("two-node-dpdk-host"))
        #expect(try HugepageSetup.parseRequests("2M:512,1G:2", in: fs) == [
            HugepageRequest(pageSize: 2 << 20, count: 512), HugepageRequest(pageSize: 1 << 30, count: 2),
        ])
        #expect(try HugepageSetup.parseRequests("2048kB:1", in: fs) == [HugepageRequest(pageSize: 2 << 20, count: 1)])
        for bad in ["3M:5", "2M:0", "2M:-4", "2M:x", "2M", "2M:10,2M:5", "", "1G:17", "2M:99999999999999999999"] {
            #expect(throws: HugepageRequestError.self, "\(bad)") { try HugepageSetup.parseRequests(bad, in: fs) }
        }
    }

    @Test func setupWritesThePoolAndReportsTheGrant() throws {
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer { copy.remove() }
        let grant = try HugepageSetup.reserve(HugepageRequest(pageSize: 2 << 20, count: 256), node: 1, in: copy.fs)
        #expect(grant == HugepageGrant(pageSize: 2 << 20, node: 1, previous: 0, requested: 256, granted: 256))
        let text = try String(contentsOfFile: copy.root + "/sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages", encoding: .utf8)
        #expect(text == "256\n")
        #expect(throws: DiagnosticsError.noSuchNode(UnknownNode(node: 5, available: [0, 1]))) {
            try HugepageSetup.reserve(HugepageRequest(pageSize: 2 << 20, count: 1), node: 5, in: copy.fs)
        }
    }

    @Test func kpageflagsBitsHaveKernelNames() throws {
        let flags = KernelPageFlags(rawValue: 1 << 17 | 1 << 15 | 1 << 11 | 1 << 33 | 1 << 60)
        #expect(flags.flagNames == ["MMAP", "COMPOUND_HEAD", "HUGE", "MLOCKED", "BIT_60"])
        #expect(flags.contains(.huge) && flags.contains(.compoundHead) && !flags.contains(.thp))
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer { copy.remove() }
        try copy.writeWords("/proc/kpageflags", [(3, 1 << 10), (4, 1 << 12 | 1 << 5)])
        #expect(try KernelPageFlags.read(pfn: 3, in: copy.fs) == .buddy)
        #expect(try KernelPageFlags.read(pfn: 4, in: copy.fs).flagNames == ["LRU", "ANON"])
        #expect(throws: DiagnosticsError.self) { try KernelPageFlags.read(pfn: 1 << 40, in: copy.fs) }
    }

    /// A process 4343 with one 2 MiB hugetlb mapping of three pages: two
    /// physically adjacent, one elsewhere on node 1; and a swapped base page.
    func translationFixture() throws -> FixtureCopy {
        let copy = try FixtureCopy("two-node-dpdk-host")
        try copy.write("/proc/4343/comm", "dpdk-app\n")
        try copy.write("/proc/4343/smaps", """
            00200000-00800000 rw-p 00000000 00:00 0
            KernelPageSize:     2048 kB
            Private_Hugetlb:    6144 kB
            VmFlags: rd wr mr mw me de ht
            00a00000-00a01000 rw-p 00000000 00:00 0
            KernelPageSize:        4 kB
            Rss:                   0 kB
            VmFlags: rd wr mr mw me ac

            """)
        let present: UInt64 = 1 << 63, swapped: UInt64 = 1 << 62
        try copy.writeWords("/proc/4343/pagemap", [
            (0x200, present | 0x8000), (0x400, present | 0x8200), (0x600, present | 0x10000),
            (0xa00, swapped | 0x1234 << 5),
        ])
        try copy.writeWords("/proc/kpageflags", [(0x8000, 1 << 15 | 1 << 17), (0x10000, 1 << 15 | 1 << 17 | 1 << 4)])
        return copy
    }

    @Test func translateReadsPagemapKpageflagsAndMemoryBlocks() throws {
        let copy = try translationFixture()
        defer { copy.remove() }
        let t = try ProcessTranslation.translate(pid: 4343, addresses: [0x200123, 0x600000, 0xa00010, 0x900000], in: copy.fs)
        #expect(t.count == 4)
        #expect(t[0].present && t[0].physical == PhysicalAddress(0x800_0123) && t[0].pfn == 0x8000)
        #expect(t[0].pageSize == 2 << 20 && t[0].node == 0 && t[0].flags == ["COMPOUND_HEAD", "HUGE"])
        #expect(t[1].physical == PhysicalAddress(0x1000_0000) && t[1].node == 1 && t[1].flags == ["DIRTY", "COMPOUND_HEAD", "HUGE"])
        #expect(!t[2].present && t[2].swapped && t[2].physical == nil && t[2].pageSize == 4096 && t[2].flags.isEmpty)
        #expect(!t[3].present && !t[3].swapped && t[3].pageSize == nil)

        let entries = try TranslateCommand.entries(pid: 4343, addresses: [0x200123], in: copy.fs)
        #expect(entries.first?.virtual == "0x200123" && entries.first?.physical == "0x8000123")
    }

    @Test func processReportGroupsHugepagesIntoPhysicalRuns() throws {
        let copy = try translationFixture()
        defer { copy.remove() }
        let report = try ProcessCommand.report(pid: 4343, all: false, in: copy.fs)
        #expect(report.command == "dpdk-app" && report.hugetlbBytes == 6 << 20)
        #expect(report.mappings.count == 1)
        let m = try #require(report.mappings.first)
        #expect(m.start == "0x200000" && m.end == "0x800000" && m.pageSize == 2 << 20 && m.bytes == 6 << 20)
        let runs = try #require(m.runs)
        #expect(runs.map(\.virtual) == ["0x200000", "0x600000"])
        #expect(runs.map(\.physical) == ["0x8000000", "0x10000000"])
        #expect(runs.map(\.bytes) == [4 << 20, 2 << 20])
        #expect(try ProcessCommand.report(pid: 4343, all: true, in: copy.fs).mappings.count == 2)
    }
}
