import Foundation
import Testing
import HugeAlloc
import HugeAllocTestSupport

/// The commands as an operator runs them: exit statuses, one-line errors, JSON shapes.
@Suite struct InspectMemoryCommandLineTests {
    /// Every bad input exits 64 (usage) or 1 (failure) with exactly one line
    /// on stderr and no crash. Setup runs against a fixture copy so a missed
    /// validation could never touch the live pools.
    @Test func badInputIsOneLineAndTheRightStatus() throws {
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer { copy.remove() }
        let cases: [([String], Int32)] = [
            (["setup", "--pages", "3M:5"], 64),
            (["setup", "--pages", "2M:-1"], 64),
            (["setup", "--pages", "2M:0"], 64),
            (["setup", "--pages", "2M:999999999"], 64),
            (["setup", "--pages", "2M"], 64),
            (["setup", "--pages", "2M:4", "--node", "7"], 64),
            (["setup", "--pages", "2M:4", "--mount", "relative/dir"], 64),
            (["setup"], 64),
            (["process", "abc"], 64),
            (["process", "0"], 64),
            (["process", "-5"], 64),
            (["process", "2147483000"], 1),
            (["translate", "--pid", "1", "0xZZ"], 64),
            (["translate", "--pid", "1", "0x12345678901234567"], 64),
            (["translate", "--pid", "1"], 64),
            (["translate", "--pid", "2147483000", "0x1000"], 1),
            (["numa", "--node", "9"], 64),
            (["hugepages", "--mount", "/nonexistent"], 64),
            (["no-such-command"], 64),
        ]
        for (arguments, status) in cases {
            let result = try run(arguments + ["--root", copy.root])
            #expect(result.status == status, "\(arguments): \(result.err)")
            let lines = result.err.split(separator: "\n")
            #expect(lines.count == 1, "\(arguments): \(result.err)")
            #expect(lines.first?.hasPrefix("inspect-memory: ") == true, "\(arguments): \(result.err)")
            #expect(!result.err.contains("Fatal error") && !result.err.contains("Stack dump"))
        }
        // Nothing was written to the fixture's pools.
        let pool = try String(contentsOfFile: copy.root + "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", encoding: .utf8)
        #expect(pool == "512\n")
    }

    @Test func hugepagesJSONHasHoldersAndStaleFiles() throws {
        let result = try run(["hugepages", "--json", "--root", fixtureRoot("two-node-dpdk-host")])
        #expect(result.status == 0, "\(result.err)")
        let object = try #require(try jsonObject(result.out) as? [String: Any])
        let holders = try #require(object["holders"] as? [[String: Any]])
        #expect(holders.count == 2)
        #expect(Set(holders[0].keys) == ["pid", "command", "page_size", "bytes"])
        #expect(holders[0]["pid"] as? Int == 4242 && holders[0]["command"] as? String == "l2fwd")
        let stale = try #require(object["stale_files"] as? [[String: Any]])
        #expect(stale.map { $0["path"] as? String } == ["/mnt/huge/held", "/mnt/huge/rtemap_1", "/mnt/huge/sub/rtemap_2"])
        #expect(stale.allSatisfy { Set($0.keys) == ["path", "bytes"] && ($0["bytes"] as? Int ?? 0) > 0 })
        let pools = try #require(object["pools"] as? [[String: Any]])
        #expect(pools.contains { $0["page_size"] as? Int == 2 << 20 && $0["node"] is NSNull && $0["total"] as? Int == 512 })
    }

    @Test func processJSONListsMappingsWithHexAddresses() throws {
        let result = try run(["process", "4242", "--json", "--root", fixtureRoot("two-node-dpdk-host")])
        #expect(result.status == 0, "\(result.err)")
        let object = try #require(try jsonObject(result.out) as? [String: Any])
        let mappings = try #require(object["mappings"] as? [[String: Any]])
        #expect(mappings.count == 3)  // two hugetlb mappings and one locked
        let first = try #require(mappings.first)
        for key in ["start", "end", "bytes", "page_size", "nodes", "locked", "path"] {
            #expect(first[key] != nil, "missing \(key)")
        }
        #expect(first["start"] as? String == "0x7f4000000000" && first["page_size"] as? Int == 2 << 20)
        #expect(mappings[1]["nodes"] as? [Int] == [0, 1] && mappings[1]["locked"] as? Bool == true)
    }

    @Test func doctorExitsOneOnAnyFailAndZeroOtherwise() throws {
        let failing = try run(["doctor", "--root", fixtureRoot("empty-hugepage-pool")])
        #expect(failing.status == 1)
        #expect(failing.out.split(separator: "\n").contains { $0.hasPrefix("FAIL  hugepages") && $0.contains("fix: inspect-memory setup --pages 2M:512") })
        #expect(failing.err.split(separator: "\n").count == 1)
        let warning = try run(["doctor", "--json", "--root", fixtureRoot("two-node-dpdk-host")])
        #expect(warning.status == 0, "\(warning.err)")
        let object = try #require(try jsonObject(warning.out) as? [String: Any])
        #expect(object["ok"] as? Bool == true)
        let checks = try #require(object["checks"] as? [[String: Any]])
        #expect(checks.allSatisfy { ["OK", "WARN", "FAIL"].contains($0["status"] as? String ?? "") })
    }

    @Test func setupReportsGrantAgainstAFixtureTree() throws {
        let copy = try FixtureCopy("two-node-dpdk-host")
        defer { copy.remove() }
        let result = try run(["setup", "--pages", "2M:64,1G:1", "--node", "1", "--json", "--root", copy.root])
        #expect(result.status == 0, "\(result.err)")
        let object = try #require(try jsonObject(result.out) as? [String: Any])
        let grants = try #require(object["grants"] as? [[String: Any]])
        #expect(grants.map { $0["granted"] as? Int } == [64, 1])
        #expect(grants.map { $0["previous"] as? Int } == [0, 1])
        #expect(grants.allSatisfy { $0["node"] as? Int == 1 })
    }
}
