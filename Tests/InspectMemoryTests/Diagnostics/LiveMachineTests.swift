import Foundation
import Testing
import HugeAlloc
import HugeAllocTestSupport

/// The machine itself: a hugepage mapping of this test process must show up
/// in `hugepages` and `process`; `translate` must agree with its own pagemap;
/// a stale file must be cleaned while a held one survives.
@Suite(.usesHugepagePool) struct InspectMemoryLiveTests {
    static let canRun = isRoot && freeHugepages(.huge2M) >= 8

    @Test(.enabled(if: canRun, "needs root and 8 free 2 MiB hugepages"))
    func hugepageMappingShowsInHugepagesAndProcess() throws {
        let mapping = try MemoryMapping(length: 4 << 20, options: MappingOptions(pageSize: .huge2M, lock: true))
        let start = UInt(bitPattern: mapping.base)
        let pid = getpid()
        // A locked base-page region (the kernel never marks hugetlb VMAs VM_LOCKED).
        let locked = try #require(mmap(nil, 64 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        try #require(locked != MAP_FAILED)
        try #require(mlock(locked, 64 << 10) == 0)
        defer { munmap(locked, 64 << 10) }

        let hugepages = try run(["hugepages", "--json"])
        #expect(hugepages.status == 0, "\(hugepages.err)")
        let object = try #require(try jsonObject(hugepages.out) as? [String: Any])
        let holders = try #require(object["holders"] as? [[String: Any]])
        let mine = holders.filter { $0["pid"] as? Int == Int(pid) && $0["page_size"] as? Int == 2 << 20 }
        #expect(mine.count == 1)
        #expect((mine.first?["bytes"] as? Int ?? 0) >= 4 << 20)

        let process = try run(["process", "\(pid)", "--json"])
        #expect(process.status == 0, "\(process.err)")
        let report = try #require(try jsonObject(process.out) as? [String: Any])
        let mappings = try #require(report["mappings"] as? [[String: Any]])
        let entry = try #require(mappings.first { $0["start"] as? String == "0x" + String(start, radix: 16) })
        #expect(entry["bytes"] as? Int == 4 << 20 && entry["page_size"] as? Int == 2 << 20)
        let lockedEntry = try #require(mappings.first { $0["start"] as? String == "0x" + String(UInt(bitPattern: locked), radix: 16) })
        #expect(lockedEntry["locked"] as? Bool == true && lockedEntry["page_size"] as? Int == Int(getpagesize()))
        #expect(entry["nodes"] as? [Int] == [0])
        // The runs agree with the mapping layer's own translation.
        let runs = try #require(entry["runs"] as? [[String: Any]])
        #expect(runs.map { $0["bytes"] as? Int } == mapping.runs.map(\.bytes))
        #expect(runs.map { $0["physical"] as? String } == mapping.runs.map(\.physical.description))
        try mapping.unmap()
    }

    @Test(.enabled(if: canRun, "needs root and 8 free 2 MiB hugepages"))
    func translateAgreesWithOwnPagemapRead() throws {
        let mapping = try MemoryMapping(length: 4 << 20, options: MappingOptions(pageSize: .huge2M))
        let huge = UInt(bitPattern: mapping.base) + 0x20_1234  // second hugepage, inside
        let heap = UnsafeMutablePointer<UInt64>.allocate(capacity: 1024)
        defer { heap.deallocate() }
        heap.initialize(repeating: 7, count: 1024)
        let small = UInt(bitPattern: heap)
        let result = try run(["translate", "--pid", "\(getpid())", "--json", "0x" + String(huge, radix: 16), String(small, radix: 16)])
        #expect(result.status == 0, "\(result.err)")
        let list = try #require(try jsonObject(result.out) as? [[String: Any]])
        #expect(list.count == 2)
        for (object, address) in zip(list, [huge, small]) {
            let word = try #require(Kernel.pagemapWord(address))
            let pfn = word & ((1 << 55) - 1)
            #expect(object["virtual"] as? String == "0x" + String(address, radix: 16))
            #expect(object["present"] as? Bool == (word >> 63 == 1))
            #expect(object["swapped"] as? Bool == (word >> 62 & 1 == 1))
            #expect(object["pfn"] as? UInt64 == pfn)
            let physical = pfn * UInt64(getpagesize()) + UInt64(address % UInt(getpagesize()))
            #expect(object["physical"] as? String == "0x" + String(physical, radix: 16))
            #expect(object["node"] as? Int == 0)
        }
        #expect(list[0]["page_size"] as? Int == 2 << 20)
        #expect(list[1]["page_size"] as? Int == Int(getpagesize()))
        let hugeFlags = try #require(list[0]["flags"] as? [String])
        #expect(hugeFlags.contains("HUGE") && hugeFlags.contains("COMPOUND_TAIL"))
        #expect(try #require(list[1]["flags"] as? [String]).contains("ANON"))
        #expect(mapping.physicalAddress(atOffset: 0x20_1234)?.description == list[0]["physical"] as? String)
        try mapping.unmap()
    }

    /// Fills a new file on hugetlbfs with one hugepage; returns its open descriptor.
    func makeHugepageFile(_ path: String) throws -> Int32 {
        let fd = open(path, O_CREAT | O_RDWR, 0o600)
        try #require(fd >= 0)
        try #require(ftruncate(fd, off_t(2 << 20)) == 0)
        let p = try #require(mmap(nil, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
        try #require(p != MAP_FAILED)
        memset(p, 0x5a, 2 << 20)
        munmap(p, 2 << 20)
        return fd
    }

    @Test(.enabled(if: canRun, "needs root (mount) and 8 free 2 MiB hugepages"))
    func staleFileIsCleanedWhileHeldFileSurvives() throws {
        try withHugetlbfsMount(pageSize: .huge2M) { dir in try staleFileIsCleanedWhileHeldFileSurvives(mount: dir) }
    }

    func staleFileIsCleanedWhileHeldFileSurvives(mount dir: String) throws {
        let stalePath = dir + "/rtemap_0", heldPath = dir + "/rtemap_1"
        close(try makeHugepageFile(stalePath))
        let held = try makeHugepageFile(heldPath)
        defer {
            close(held)
            unlink(heldPath)
            unlink(stalePath)
        }

        let listed = try run(["hugepages", "--json", "--mount", dir])
        #expect(listed.status == 0, "\(listed.err)")
        let object = try #require(try jsonObject(listed.out) as? [String: Any])
        let stale = try #require(object["stale_files"] as? [[String: Any]])
        #expect(stale.map { $0["path"] as? String } == [stalePath], "\(listed.out)")
        #expect(stale.first?["bytes"] as? Int == 2 << 20)

        let cleaned = try run(["hugepages", "--clean", "--json", "--mount", dir])
        #expect(cleaned.status == 0, "\(cleaned.err)")
        let after = try #require(try jsonObject(cleaned.out) as? [String: Any])
        #expect((after["removed"] as? [[String: Any]])?.map { $0["path"] as? String } == [stalePath])
        #expect((after["stale_files"] as? [Any])?.isEmpty == true)
        #expect(!FileManager.default.fileExists(atPath: stalePath))
        #expect(FileManager.default.fileExists(atPath: heldPath))
    }

    /// A file held open only through a bind mount has another path in
    /// /proc/PID/fd; it is matched by device and inode and never cleaned.
    @Test(.enabled(if: canRun, "needs root (mount) and 8 free 2 MiB hugepages"))
    func fileHeldThroughABindMountIsNotStale() throws {
        try withHugetlbfsMount(pageSize: .huge2M) { dir in try fileHeldThroughABindMountIsNotStale(mount: dir) }
    }

    func fileHeldThroughABindMountIsNotStale(mount dir: String) throws {
        let alias = dir + "-alias"
        try FileManager.default.createDirectory(atPath: alias, withIntermediateDirectories: true)
        defer {
            umount2(alias, Int32(MNT_DETACH))
            try? FileManager.default.removeItem(atPath: alias)
        }
        try #require(mount(dir, alias, "", UInt(MS_BIND), nil) == 0)
        let held = try makeHugepageFile(alias + "/held")
        defer {
            close(held)
            unlink(dir + "/held")
        }
        let cleaned = try run(["hugepages", "--clean", "--json", "--mount", dir])
        #expect(cleaned.status == 0, "\(cleaned.err)")
        let object = try #require(try jsonObject(cleaned.out) as? [String: Any])
        #expect((object["removed"] as? [Any])?.isEmpty == true, "\(cleaned.out)")
        #expect(FileManager.default.fileExists(atPath: dir + "/held"))
    }

    @Test(.enabled(if: isRoot, "needs root to write sysfs and mount"))
    func setupKeepsThePoolAndMountsHugetlbfs() throws {
        // No other run's write to nr_hugepages lands between the read and
        // the setup, or is undone by the restore.
        try withHugepageReservationLock {
            let knob = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
            let before = try Kernel.integer(knob)
            defer { try? "\(before)\n".write(toFile: knob, atomically: false, encoding: .utf8) }
            let dir = NSTemporaryDirectory() + "inspect-memory-setup-\(getpid())"
            defer {
                umount2(dir, Int32(MNT_DETACH))
                try? FileManager.default.removeItem(atPath: dir)
            }
            // Asking for the pool the session already has changes nothing.
            let result = try run(["setup", "--pages", "2M:\(before)", "--mount", dir, "--json"])
            #expect(result.status == 0, "\(result.err)")
            let object = try #require(try jsonObject(result.out) as? [String: Any])
            let grant = try #require((object["grants"] as? [[String: Any]])?.first)
            #expect(grant["requested"] as? Int == before && grant["granted"] as? Int == before && grant["previous"] as? Int == before)
            let mounts = try String(contentsOfFile: "/proc/mounts", encoding: .utf8)
            #expect(mounts.split(separator: "\n").contains { $0.contains(" \(dir) hugetlbfs ") && $0.contains("pagesize=2M") })
            // A second run finds the mount already there.
            let again = try run(["setup", "--pages", "2M:\(before)", "--mount", dir, "--json"])
            let mount = try #require(((try jsonObject(again.out) as? [String: Any])?["mounts"] as? [[String: Any]])?.first)
            #expect(mount["mounted"] as? Bool == false)
        }
    }

    @Test func numaMatchesTheKernelsNodeFiles() throws {
        /// [node: [page size: total]]
        typealias Totals = [Int: [Int: Int]]
        func kernelTotals() throws -> Totals {
            var totals: Totals = [:]
            for id in Kernel.nodeIDs() {
                let directory = "/sys/devices/system/node/node\(id)/hugepages/"
                totals[id] = [:]
                for name in Kernel.directory(directory) {
                    let size = try #require(Int(name.dropFirst("hugepages-".count).dropLast(2))) << 10
                    totals[id]![size] = try Kernel.integer(directory + name + "/nr_hugepages")
                }
            }
            return totals
        }
        func reportedTotals(_ nodes: [[String: Any]]) throws -> Totals {
            var totals: Totals = [:]
            for node in nodes {
                let id = try #require(node["node"] as? Int)
                totals[id] = [:]
                for pool in try #require(node["hugepages"] as? [[String: Any]]) {
                    totals[id]![try #require(pool["page_size"] as? Int)] = try #require(pool["total"] as? Int)
                }
            }
            return totals
        }
        // Other processes change the pool (tools/test reserves pages): judge
        // a report taken while the kernel's totals held still.
        let (kernel, nodes) = try stableReading(kernelTotals, {
            let result = try run(["numa", "--json"])
            #expect(result.status == 0, "\(result.err)")
            let object = try #require(try jsonObject(result.out) as? [String: Any])
            return try #require(object["nodes"] as? [[String: Any]])
        }, reportedTotals)
        #expect(nodes.compactMap { $0["node"] as? Int } == Kernel.nodeIDs())
        #expect(try reportedTotals(nodes) == kernel)
    }

    @Test(.enabled(if: isRoot, "needs root"))
    func doctorExitStatusFollowsItsChecks() throws {
        let result = try run(["doctor"])
        let lines = result.out.split(separator: "\n")
        #expect(!lines.isEmpty && lines.allSatisfy { $0.hasPrefix("OK ") || $0.hasPrefix("WARN ") || $0.hasPrefix("FAIL ") })
        #expect(lines.allSatisfy { $0.hasPrefix("OK ") || $0.contains(" -- fix: ") })
        let failed = lines.contains { $0.hasPrefix("FAIL ") }
        #expect(result.status == (failed ? 1 : 0), "\(result.out)\(result.err)")
        // The session keeps 2 MiB pages reserved, so this check passes here.
        #expect(lines.contains { $0.hasPrefix("OK    hugepages ") })
    }
}
