import ArgumentParser
import Foundation
import HugeAlloc
import HugeAllocTestSupport
import InspectMemoryKit
import Testing

/// The JSON object `inspect-memory --json` prints for `root`, decoded with JSONSerialization.
private func summaryJSON(root: String = "/") throws -> [String: Any] {
    let text = try JSONOutput.string(InventoryReport(SystemInventory.read(root: root)))
    return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

private func object(_ value: Any?) throws -> [String: Any] { try #require(value as? [String: Any]) }
private func objects(_ value: Any?) throws -> [[String: Any]] { try #require(value as? [[String: Any]]) }

private let pool2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"

/// The pools of a decoded report in the shape of `Kernel.pools()`.
private func pools(_ json: [String: Any]) throws -> [Int: [Int]] {
    var pools: [Int: [Int]] = [:]
    for size in try objects(json["hugepage_sizes"]) {
        pools[try #require(size["size_bytes"] as? Int)] = ["total", "free", "reserved", "surplus", "overcommit"]
            .compactMap { size[$0] as? Int }
    }
    return pools
}

@Suite struct SummaryCommandTests {
    @Test func jsonHasExactlyTheDocumentedKeys() throws {
        let json = try summaryJSON(root: fixtureRoot("four-node"))
        #expect(Set(json.keys) == ["kernel", "base_page_size", "hugepage_sizes", "numa", "transparent_hugepages",
                                   "memlock_limit_bytes", "capabilities", "physical_addresses_visible", "iommu"])
        for size in try objects(json["hugepage_sizes"]) {
            #expect(Set(size.keys) == ["size_bytes", "default", "total", "free", "reserved", "surplus",
                                       "overcommit", "mounts", "nodes"])
            for node in try objects(size["nodes"]) { #expect(Set(node.keys) == ["node", "total", "free", "surplus"]) }
        }
        let numa = try object(json["numa"])
        #expect(Set(numa.keys) == ["available", "nodes"])
        for node in try objects(numa["nodes"]) {
            #expect(Set(node.keys) == ["node", "cpus", "mem_total_bytes", "mem_free_bytes", "distances"])
        }
        #expect(Set(try object(json["transparent_hugepages"]).keys) == ["enabled", "defrag"])
        #expect(Set(try object(json["memlock_limit_bytes"]).keys) == ["soft", "hard"])
        #expect(Set(try object(json["capabilities"]).keys) == ["sys_admin", "ipc_lock"])
        #expect(Set(try object(json["iommu"]).keys) == ["groups", "vfio"])
    }

    @Test func jsonValuesOfTheFourNodeFixture() throws {
        let json = try summaryJSON(root: fixtureRoot("four-node"))
        #expect(json["kernel"] as? String == "5.15.0-91-generic")
        #expect(json["base_page_size"] as? Int == Int(getpagesize()))
        let sizes = try objects(json["hugepage_sizes"])
        #expect(sizes.map { $0["size_bytes"] as? Int } == [2 << 20, 1 << 30])
        #expect(sizes.map { $0["default"] as? Bool } == [true, false])
        #expect(sizes.map { $0["mounts"] as? [String] } == [["/dev/hugepages"], ["/mnt/huge1G"]])
        #expect(try pools(json) == [2 << 20: [1000, 940, 20, 0, 0], 1 << 30: [6, 5, 1, 0, 0]])
        let gigNodes = try objects(sizes[1]["nodes"])
        #expect(gigNodes.map { $0["node"] as? Int } == [0, 1, 2, 3])
        #expect(gigNodes.map { $0["total"] as? Int } == [4, 2, 0, 0])
        #expect(gigNodes.map { $0["free"] as? Int } == [3, 2, 0, 0])
        let nodes = try objects(try object(json["numa"])["nodes"])
        #expect(nodes.map { $0["cpus"] as? [Int] } == [[0, 1, 2, 3, 16, 17, 18, 19], [4, 5, 6, 7, 20, 21, 22, 23],
                                                      [8, 9, 10, 11, 24, 25, 26, 27], []])
        #expect(nodes.map { $0["distances"] as? [Int] } == [[10, 16, 16, 22], [16, 10, 22, 16], [16, 22, 10, 16], [22, 16, 16, 10]])
        #expect(nodes.map { $0["mem_total_bytes"] as? Int } == [16 << 30, 16 << 30, 16 << 30, 8 << 30])
        let memlock = try object(json["memlock_limit_bytes"])
        #expect(memlock["soft"] is NSNull && memlock["hard"] is NSNull, "unlimited is null, not absent")
        #expect(json["physical_addresses_visible"] is NSNull, "a fixture cannot say; null, not absent")
        #expect(try object(json["iommu"])["groups"] as? Int == 3)
        #expect(try object(json["iommu"])["vfio"] as? Bool == true)
        #expect(try object(json["capabilities"])["sys_admin"] as? Bool == true)
    }

    @Test func jsonLimitedMemlockAndMissingTHP() throws {
        let limited = try object(try summaryJSON(root: fixtureRoot("one-node"))["memlock_limit_bytes"])
        #expect(limited["soft"] as? Int == 65536)
        #expect(limited["hard"] as? Int == 131072)
        let noNUMA = try summaryJSON(root: fixtureRoot("no-numa"))
        #expect(try object(noNUMA["numa"])["available"] as? Bool == false)
        #expect(try objects(try object(noNUMA["numa"])["nodes"]).isEmpty)
        #expect(try object(noNUMA["transparent_hugepages"])["enabled"] is NSNull)
        #expect(try object(noNUMA["memlock_limit_bytes"])["hard"] is NSNull)
    }

    @Test(.usesHugepagePool) func jsonAgreesWithTheKernelsFiles() throws {
        // Global counters move with other processes: judge a still reading.
        let (kernelPools, json) = try stableReading(Kernel.pools, { try summaryJSON() }, pools)
        #expect(try pools(json) == kernelPools)
        let defaultSize = try Kernel.meminfo("Hugepagesize").map { $0 * 1024 }
        #expect(try objects(json["hugepage_sizes"]).filter { $0["default"] as? Bool == true }.map { $0["size_bytes"] as? Int }
                == [defaultSize])
        #expect(json["kernel"] as? String == (try Kernel.text("/proc/sys/kernel/osrelease")).trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(json["base_page_size"] as? Int == Int(getpagesize()))

        let nodes = try objects(try object(json["numa"])["nodes"])
        #expect(nodes.map { $0["node"] as? Int } == Kernel.nodeIDs())
        for node in nodes {
            let id = try #require(node["node"] as? Int)
            let distance = try Kernel.text("/sys/devices/system/node/node\(id)/distance")
            #expect(node["distances"] as? [Int] == distance.split(whereSeparator: \.isWhitespace).compactMap { Int($0) })
        }

        let limits = try #require(try Kernel.text("/proc/self/limits").split(separator: "\n").first { $0.hasPrefix("Max locked memory") })
        let fields = limits.dropFirst("Max locked memory".count).split(separator: " ")
        let memlock = try object(json["memlock_limit_bytes"])
        #expect(memlock["soft"] as? Int == Int(fields[0]))
        #expect(memlock["hard"] as? Int == Int(fields[1]))
        #expect((memlock["soft"] is NSNull) == (fields[0] == "unlimited"))

        let mask = try Kernel.capEff()
        #expect(try object(json["capabilities"])["sys_admin"] as? Bool == (mask & (1 << 21) != 0))
        #expect(try object(json["capabilities"])["ipc_lock"] as? Bool == (mask & (1 << 14) != 0))
        #expect(json["physical_addresses_visible"] as? Bool == (mask & (1 << 21) != 0))
        let enabled = try Kernel.text("/sys/kernel/mm/transparent_hugepage/enabled")
        #expect(enabled.contains("[\(try #require(try object(json["transparent_hugepages"])["enabled"] as? String))]"))
    }

    /// The one test that changes nr_hugepages: +2 pages of 2 MiB, restored on
    /// the way out, under the lock every writer of nr_hugepages takes.
    @Test(.enabled(if: isRoot && FileManager.default.fileExists(atPath: pool2M),
                   "changing nr_hugepages needs root and a 2 MiB hugepage pool"),
          .usesHugepagePool)
    func jsonFollowsAChangeOfNrHugepages() throws {
        try withHugepageReservationLock(jsonFollowsAChangeOfNrHugepagesHoldingTheLock)
    }

    func jsonFollowsAChangeOfNrHugepagesHoldingTheLock() throws {
        func write(_ value: Int) throws {
            let handle = try #require(FileHandle(forWritingAtPath: pool2M))
            defer { try? handle.close() }
            try handle.write(contentsOf: Data("\(value)\n".utf8))
        }
        let original = try Kernel.integer(pool2M)
        defer { try? write(original) }
        try write(original + 2)
        try #require(try Kernel.integer(pool2M) == original + 2,
                     "the kernel could not add two 2 MiB pages (memory too fragmented?)")

        let (kernelPools, json) = try stableReading(Kernel.pools, { try summaryJSON() }, pools)
        #expect(try pools(json)[2 << 20]?.first == original + 2)
        #expect(try pools(json) == kernelPools)
        if try Kernel.meminfo("Hugepagesize") == 2048 {
            let inventory = try SystemInventory.read()
            #expect(inventory.pool(.huge2M)?.total == (try Kernel.meminfo("HugePages_Total")))
        }
        // Per-node shares add up to the new total.
        let twoMeg = try #require(try objects(json["hugepage_sizes"]).first { $0["size_bytes"] as? Int == 2 << 20 })
        let shares = try objects(twoMeg["nodes"]).compactMap { $0["total"] as? Int }
        #expect(shares.reduce(0, +) == original + 2)
    }

    @Test func textReportIsAligned() throws {
        let text = SummaryCommand.text(try SystemInventory.read(root: fixtureRoot("four-node")))
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.contains("kernel                      5.15.0-91-generic"))
        #expect(lines.contains("memlock limit               soft unlimited, hard unlimited"))
        #expect(lines.contains("physical addresses visible  unknown"))
        let header = try #require(lines.first { $0.hasPrefix("  size  default") })
        let row = try #require(lines.first { $0.hasPrefix("  1G") })
        for column in ["total", "free", "reserved", "mounts"] {
            let start = try #require(header.range(of: column)).lowerBound.utf16Offset(in: header)
            #expect(row.utf16.count > start && row[row.index(row.startIndex, offsetBy: start - 1)] == " "
                    && row[row.index(row.startIndex, offsetBy: start)] != " ", "column \(column) starts where its header does")
        }
        #expect(row.hasSuffix("/mnt/huge1G"))
        #expect(lines.contains { $0.hasPrefix("  3     -  ") && $0.contains(" 8.00 GiB ") }, "memory-only node 3 shows no CPUs")
        #expect(!lines.contains { $0.hasSuffix(" ") }, "no trailing spaces")
    }

    @Test func exitCodes() throws {
        var failing = try #require(try InspectMemory.parseAsRoot(["--root", "/nonexistent-root"]) as? SummaryCommand)
        #expect(throws: ExitCode.failure) { try failing.run() }
        failing.root = fixtureRoot("malformed")
        #expect(throws: ExitCode.failure) { try failing.run() }

        let usage = try #require(throws: (any Error).self) { try InspectMemory.parseAsRoot(["--no-such-option"]) }
        #expect(InspectMemory.exitCode(for: usage).rawValue == 64)
        let json = try #require(try InspectMemory.parseAsRoot(["--json"]) as? SummaryCommand)
        #expect(json.json && json.root == "/")
        #expect(try InspectMemory.parseAsRoot(["summary", "--json"]) is SummaryCommand)
    }
}
