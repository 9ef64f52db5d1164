import Foundation
import Testing
import HugeAlloc

/// The inspect-memory executable built beside this test bundle.
let inspectMemoryPath: String = {
    let bundleDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [bundleDir, bundleDir.deletingLastPathComponent()] {
        let path = candidate.appendingPathComponent("inspect-memory").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    return bundleDir.appendingPathComponent("inspect-memory").path
}()

let isRoot = getuid() == 0

func free2M() -> Int {
    let dir = "/sys/kernel/mm/hugepages/hugepages-2048kB"
    let read = { (n: String) in Int((try? String(contentsOfFile: "\(dir)/\(n)", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0 }
    return read("free_hugepages") - read("resv_hugepages")
}

func hugetlbfsFiles() -> Set<String> {
    let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
    var files = Set<String>()
    for line in mounts.split(separator: "\n") {
        let f = line.split(separator: " ")
        guard f.count > 2, f[2] == "hugetlbfs" else { continue }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: String(f[1]))) ?? [] { files.insert("\(f[1])/\(name)") }
    }
    return files
}

/// A running `inspect-memory` with pipes on its standard streams.
final class RunningCommand {
    let process = Process()
    let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()

    init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: inspectMemoryPath)
        process.arguments = arguments
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
    }

    /// Reads standard output until it holds one complete JSON object.
    func readJSONObject(timeout: TimeInterval = 30) throws -> [String: Any] {
        var data = Data()
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let chunk = stdout.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            data.append(chunk)
            if let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] { return object }
        }
        let err = String(decoding: stderr.fileHandleForReading.availableData, as: UTF8.self)
        throw CocoaError(.fileReadCorruptFile, userInfo: [NSLocalizedDescriptionKey: "no JSON from probe: \(String(decoding: data, as: UTF8.self)) \(err)"])
    }
}

func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
    let command = try RunningCommand(arguments)
    try command.stdin.fileHandleForWriting.close()
    let out = command.stdout.fileHandleForReading.readDataToEndOfFile()
    let err = command.stderr.fileHandleForReading.readDataToEndOfFile()
    command.process.waitUntilExit()
    return (command.process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
}

@Suite(.serialized) struct ProbeTests {
    @Test(.enabled(if: isRoot && free2M() >= 8, "needs root (PFNs) and 8 free 2 MiB hugepages"),
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

    @Test(.enabled(if: isRoot && free2M() >= 16, "needs root (PFNs) and 16 free 2 MiB hugepages"),
          arguments: [("2M", "16M"), ("4K", "32K"), ("4K", "64K")])
    func contiguousBlockIsContiguousInBothSpacesToAnotherProcess(pageSize: String, wanted: String) throws {
        // A block of 2 MiB pages can only be as long as the longest run the
        // free pool holds (the pool's layout is the machine's): ask for that
        // much, up to the size named.
        var bytes = wanted
        if pageSize == "2M" {
            let free = free2M()
            let pool = try MemoryMapping(length: free * (2 << 20), options: .init(backing: .memfd))
            let largest = FragmentationReport(pool).largestRunBytes
            try pool.unmap()
            try #require(largest >= 4 << 20, "the free pool holds no run of two 2 MiB pages")
            bytes = ByteCount.format(min(largest, ByteCount.parse(wanted)!))
        }
        let probe = try RunningCommand(["probe", "--page-size", pageSize, "--contiguous", bytes, "--json", "--hold"])
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

    @Test(.enabled(if: isRoot && free2M() >= 64, "needs root and 64 free 2 MiB hugepages"),
          arguments: ["anonymous", "memfd", "hugetlbfs"])
    func sigkillAtAnyPointLeavesNothingBehind(backing: String) throws {
        let mountDir = NSTemporaryDirectory() + "hugealloc-kill-\(getpid())"
        try FileManager.default.createDirectory(atPath: mountDir, withIntermediateDirectories: true)
        #expect(mount("none", mountDir, "hugetlbfs", 0, "pagesize=2M") == 0)
        defer { umount2(mountDir, Int32(MNT_DETACH)); try? FileManager.default.removeItem(atPath: mountDir) }
        let freeBefore = free2M(), filesBefore = hugetlbfsFiles()
        for attempt in 0..<12 {
            let command = try RunningCommand(["probe", "--page-size", "2M", "--pages", "48", "--backing", backing,
                                              "--mount", mountDir, "--hold"])
            // Kill at spread-out moments: before, during and after mapping.
            usleep(UInt32(attempt * 4_000 + Int.random(in: 0..<3_000)))
            kill(command.process.processIdentifier, SIGKILL)
            command.process.waitUntilExit()
            #expect(command.process.terminationReason == .uncaughtSignal || command.process.terminationStatus == 0)
        }
        var free = free2M()
        for _ in 0..<20 where free != freeBefore { usleep(100_000); free = free2M() }
        #expect(free == freeBefore, "2 MiB pages free before \(freeBefore), after \(free)")
        #expect(hugetlbfsFiles() == filesBefore)
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
    }

    @Test func tooManyPagesExitsOneWithNeededFreeAndCommand() throws {
        let result = try run(["probe", "--page-size", "2M", "--pages", "\(free2M() + 5000)"])
        #expect(result.status == 1)
        let lines = result.err.split(separator: "\n")
        #expect(lines.count == 1)
        #expect(result.err.contains("needed \(free2M() + 5000)") && result.err.contains("echo "))
    }
}
