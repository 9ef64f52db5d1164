import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

@Suite(.usesHugepagePool) struct ProbeTests {
    @Test(.enabled(if: isRoot && freeHugepages(.huge2M) >= 8, "needs root (PFNs) and 8 free 2 MiB hugepages"),
          arguments: [("2M", 8), ("4K", 32)])
    func heldAddressesMatchAnotherProcesssPagemapRead(pageSize: String, pages: Int) throws {
        let probe = try RunningCommand(["probe", "--page-size", pageSize, "--pages", "\(pages)", "--json", "--hold"])
        let object = try probe.readJSONObject()
        let pid = try #require(object["pid"] as? Int)
        #expect(pid == Int(probe.process.processIdentifier))
        let size = try #require(object["page_size"] as? Int)
        #expect(size == PageSize(parsing: pageSize)!.bytes)
        let listed = try #require(object["pages"] as? [[String: Any]])
        #expect(listed.count == pages)
        // This test process reads the holder's pagemap itself.
        let reader = try PagemapReader(pid: Int32(pid))
        for page in listed {
            let virtual = try #require(UInt((page["virtual"] as? String)?.dropFirst(2) ?? "", radix: 16))
            let physical = try #require(UInt64((page["physical"] as? String)?.dropFirst(2) ?? "", radix: 16))
            let entry = try reader.entry(at: virtual)
            #expect(entry.isPresent)
            #expect(entry.pfn.map { $0 * UInt64(PageSize.base.bytes) } == physical)
        }
        let runs = try #require(object["runs"] as? [[String: Any]])
        #expect(runs.reduce(0) { $0 + ($1["bytes"] as? Int ?? 0) } == pages * size)
        #expect((object["largest_run_bytes"] as? Int).map { $0 >= size } == true)
        try probe.stdin.fileHandleForWriting.close()
        probe.process.waitUntilExit()
        #expect(probe.process.terminationStatus == 0)
    }

    @Test(.enabled(if: isRoot && freeHugepages(.huge2M) >= 16, "needs root (PFNs) and 16 free 2 MiB hugepages"),
          arguments: [("2M", "16M"), ("4K", "32K"), ("4K", "64K")])
    func contiguousBlockIsContiguousInBothSpacesToAnotherProcess(pageSize: String, wanted: String) throws {
        // A block of 2 MiB pages can only be as long as the longest run the
        // free pool holds (the pool's layout is the machine's): ask for that
        // much, up to the size named.
        var bytes = wanted
        if pageSize == "2M" {
            let largest = try largestFree2MiBRun(cap: ByteCount.parse(wanted)!).bytes
            try #require(largest >= 4 << 20, "the free pool holds no run of two 2 MiB pages")
            bytes = ByteCount.format(largest)
        }
        // At most 512 pages mapped while looking: never the whole free pool.
        let budget = pageSize == "2M" ? ["--budget", "1G"] : []
        let probe = try RunningCommand(["probe", "--page-size", pageSize, "--contiguous", bytes, "--json", "--hold"] + budget)
        let object = try probe.readJSONObject()
        let pid = try #require(object["pid"] as? Int32)
        let size = try #require(object["page_size"] as? Int)
        let listed = try #require(object["pages"] as? [[String: Any]])
        #expect(listed.count * size == ByteCount.parse(bytes)!)
        let reader = try PagemapReader(pid: pid)
        var previous: (virtual: UInt, physical: UInt64)? = nil
        for page in listed {
            let virtual = try #require(UInt((page["virtual"] as? String)?.dropFirst(2) ?? "", radix: 16))
            // The holder's pagemap, read by this process, for every base page of the page.
            let entries = try reader.entries(startingAt: virtual, count: size / PageSize.base.bytes)
            let first = try #require(entries[0].pfn) * UInt64(PageSize.base.bytes)
            #expect(entries.enumerated().allSatisfy { $0.element.pfn == entries[0].pfn! + UInt64($0.offset) })
            if let previous {
                #expect(virtual == previous.virtual + UInt(size), "virtually contiguous")
                #expect(first == previous.physical + UInt64(size), "physically contiguous")
            }
            previous = (virtual, first)
        }
        #expect(object["largest_run_bytes"] as? Int == ByteCount.parse(bytes)!)
        try probe.stdin.fileHandleForWriting.close()
        probe.process.waitUntilExit()
        #expect(probe.process.terminationStatus == 0)
    }

    @Test(.enabled(if: isRoot && freeHugepages(.huge2M) >= 64, "needs root and 64 free 2 MiB hugepages"),
          arguments: ["anonymous", "memfd", "hugetlbfs"])
    func sigkillAtAnyPointLeavesNothingBehind(backing: String) throws {
        // A mount of its own with a quota of 64 pages: its statfs counts
        // what the probes' files hold, and no other process touches it.
        try withHugetlbfsMount(pageSize: .huge2M, options: "size=128M") { mountDir in
            var killed: [Int32] = []
            for attempt in 0..<12 {
                let command = try RunningCommand(["probe", "--page-size", "2M", "--pages", "48", "--backing", backing,
                                                  "--mount", mountDir, "--hold"])
                // Kill at spread-out moments: before, during and after mapping.
                usleep(UInt32(attempt * 4_000 + Int.random(in: 0..<3_000)))
                kill(command.process.processIdentifier, SIGKILL)
                command.process.waitUntilExit()
                #expect(command.process.terminationReason == .uncaughtSignal || command.process.terminationStatus == 0)
                killed.append(command.process.processIdentifier)
            }
            // A killed probe's mappings and descriptors go with it; what
            // could outlive it is a file on the mount (holding its pages) or
            // a SysV shared memory segment it created.
            func mountPages() throws -> (total: Int, free: Int) {
                var fs = statvfs()
                try #require(statvfs(mountDir, &fs) == 0)
                return (Int(fs.f_blocks), Int(fs.f_bfree))
            }
            var pages = try mountPages()
            for _ in 0..<20 where pages.free != pages.total { usleep(100_000); pages = try mountPages() }
            #expect(pages.total == 64 && pages.free == pages.total, "2 MiB pages of the mount's 64 still held: \(pages.total - pages.free)")
            #expect(Kernel.directory(mountDir).isEmpty, "left on the mount: \(Kernel.directory(mountDir))")
            // /proc/sysvipc/shm: key shmid perms size cpid ...
            let segments = ((try? Kernel.text("/proc/sysvipc/shm")) ?? "").split(separator: "\n").dropFirst()
            let left = segments.filter { line in
                let fields = line.split(whereSeparator: \.isWhitespace)
                return fields.count > 4 && Int32(fields[4]).map(killed.contains) == true
            }
            #expect(left.isEmpty, "shared memory segments of killed probes: \(left)")
        }
    }

    /// Runs inspect-memory as user nobody with no capabilities: the kernel
    /// then hides PFNs and enforces RLIMIT_MEMLOCK for real.
    static let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].first { FileManager.default.isExecutableFile(atPath: $0) }

    func runUnprivileged(_ arguments: [String]) throws -> (status: Int32, err: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(Self.setpriv))
        process.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", inspectMemoryPath] + arguments
        let err = Pipe()
        process.standardError = err
        process.standardOutput = Pipe()
        try process.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    @Test(.enabled(if: isRoot && setpriv != nil, "needs root to drop to an unprivileged user with setpriv (util-linux)"))
    func withoutCapSysAdminPhysicalAddressesAreATypedErrorNamingTheCapability() throws {
        let result = try runUnprivileged(["probe", "--page-size", "4K", "--pages", "2"])
        #expect(result.status == 1)
        #expect(result.err.contains("CAP_SYS_ADMIN") && result.err.contains("PFN 0"))
        #expect(result.err.split(separator: "\n").count == 1)
    }

    @Test(.enabled(if: isRoot && setpriv != nil, "needs root to drop to an unprivileged user with setpriv (util-linux)"))
    func lockingPastRlimitMemlockSaysNeededLimitAndHowToRaiseIt() throws {
        // 64 MiB of base pages, far past the default 8 MiB limit of an unprivileged user.
        let result = try runUnprivileged(["probe", "--page-size", "4K", "--pages", "16384"])
        #expect(result.status == 1)
        #expect(result.err.contains("exceeds RLIMIT_MEMLOCK") && result.err.contains("ulimit -l"))
        #expect(result.err.contains("locking \(16384 * 4096) bytes"))
    }

    @Test func badInputIsOneLineAndTheRightExitStatus() throws {
        let unknown = try run(["probe", "--page-size", "3M", "--pages", "1"])
        #expect(unknown.status == 64 && unknown.err.contains("unknown page size '3M'"))
        let zero = try run(["probe", "--pages", "0"])
        #expect(zero.status == 64 && zero.err.contains("at least 1"))
        let absurd = try run(["probe", "--page-size", "1G", "--pages", "99999999999"])
        #expect(absurd.status == 64 && absurd.err.contains("more memory than any machine has"))
        let backing = try run(["probe", "--pages", "1", "--backing", "tmpfs"])
        #expect(backing.status == 64)
        let small = try run(["probe", "--contiguous", "16M", "--budget", "8M"])
        #expect(small.status == 64 && small.err.contains("at least the block (16M)"))
        let stray = try run(["probe", "--pages", "2", "--budget", "8M"])
        #expect(stray.status == 64 && stray.err.contains("--budget goes with --contiguous"))
    }

    @Test func tooManyPagesExitsOneWithNeededFreeAndCommand() throws {
        // Read once: the count moves, and the error names what was asked.
        let needed = freeHugepages(.huge2M) + 5000
        let result = try run(["probe", "--page-size", "2M", "--pages", "\(needed)"])
        #expect(result.status == 1)
        let lines = result.err.split(separator: "\n")
        #expect(lines.count == 1)
        #expect(result.err.contains("needed \(needed)") && result.err.contains("echo "))
    }
}
