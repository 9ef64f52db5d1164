import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

/// `inspect-memory pools`: the shared objects of a runtime directory, what
/// each attached process holds, and stale entries that --clean removes.
@Suite(.usesHugepagePool, .serialized) struct PoolsCommandTests {
    static let canRun = isRoot && freeHugepages(.huge2M) >= 16

    func poolsJSON(_ directory: String, clean: Bool = false) throws -> [String: Any] {
        let result = try run(["pools", "--json", "--runtime-directory", directory] + (clean ? ["--clean"] : []))
        #expect(result.status == 0, "\(result.err)")
        return try #require(JSONSerialization.jsonObject(with: Data(result.out.utf8)) as? [String: Any])
    }

    @Test(.enabled(if: canRun, "needs root and 16 free 2 MiB hugepages"))
    func aLiveCheckedPoolShowsWhatThisProcessHoldsAndAStaleEntryIsCleaned() throws {
        let directory = "/tmp/hugealloc-pools-test.\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let options = SharingOptions(runtimeDirectory: directory)
        let shared = try SharedMempool.publish(
            name: "listed", configuration: MempoolConfiguration(count: 500, objectSize: 64, checked: true), options: options)
        var held = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 64)!, count: 7)
        #expect(held.withUnsafeMutableBufferPointer { shared.pool.get(into: $0.baseAddress!, count: 7) })

        // A publisher killed with SIGKILL leaves a stale entry.
        let killed = Process()
        killed.executableURL = URL(fileURLWithPath: builtProductPath("hugealloc-share-worker"))
        killed.arguments = ["publish-mapping", "gone", "\(2 << 20)"]
        killed.environment = ["HUGEALLOC_RUNTIME_DIR": directory]
        let output = Pipe()
        killed.standardOutput = output
        killed.standardInput = Pipe()
        try killed.run()
        _ = output.fileHandleForReading.availableData  // its "ready" line
        kill(killed.processIdentifier, SIGKILL)
        killed.waitUntilExit()

        let report = try poolsJSON(directory)
        let pools = try #require(report["pools"] as? [[String: Any]])
        let listed = try #require(pools.first { $0["name"] as? String == "listed" })
        #expect(listed["kind"] as? String == "mempool" && listed["stale"] as? Bool == false)
        #expect(listed["objects_total"] as? Int == 500 && listed["objects_available"] as? Int == 493)
        let processes = try #require(listed["processes"] as? [[String: Any]])
        #expect(processes.count == 1 && processes.first?["pid"] as? Int == Int(getpid()))
        #expect(processes.first?["held_objects"] as? Int == 7, "the owner tags say this process holds 7: \(processes)")
        let gone = try #require(pools.first { $0["name"] as? String == "gone" })
        #expect(gone["stale"] as? Bool == true && gone["kind"] as? String == "mapping")

        // --clean removes the stale entry, never the live one.
        let cleaned = try poolsJSON(directory, clean: true)
        #expect((cleaned["removed"] as? [String]) == ["\(directory)/gone"])
        #expect((cleaned["pools"] as? [[String: Any]])?.map { $0["name"] as? String } == ["listed"])
        #expect(!FileManager.default.fileExists(atPath: "\(directory)/gone"))

        // The text form names the pool and the holder.
        let text = try run(["pools", "--runtime-directory", directory])
        #expect(text.status == 0 && text.out.contains("listed") && text.out.contains("held 7") && text.out.contains("live"))

        for object in held { shared.pool.put(object) }
        withExtendedLifetime(shared) {}
    }

    @Test(.enabled(if: canRun, "needs root and 16 free 2 MiB hugepages"))
    func aSharedHeapIsListedInBytesWithTheBlocksThisProcessHolds() throws {
        let directory = "/tmp/hugealloc-pools-heap-test.\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let heap = try SharedHeap.publish(name: "dma", bytes: 4 << 20, checked: true, options: SharingOptions(runtimeDirectory: directory))
        let blocks = [try heap.allocate(bytes: 100), try heap.allocate(bytes: 5000)]

        let pools = try #require(try poolsJSON(directory)["pools"] as? [[String: Any]])
        let listed = try #require(pools.first { $0["name"] as? String == "dma" })
        #expect(listed["kind"] as? String == "heap" && listed["stale"] as? Bool == false)
        #expect(listed["objects_total"] as? Int == 4 << 20 && listed["objects_available"] as? Int == heap.freeBytes, "bytes: \(listed)")
        let processes = try #require(listed["processes"] as? [[String: Any]])
        #expect(processes.first?["held_objects"] as? Int == 2, "this process holds 2 blocks: \(processes)")
        let text = try run(["pools", "--runtime-directory", directory])
        #expect(text.out.contains("dma") && text.out.contains("heap") && text.out.contains("held 2"))

        for b in blocks { try heap.free(b) }
    }
}
