import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

/// A DMA heap shared between this test process and spawned worker
/// processes: blocks allocated in one and freed in another at the same
/// addresses and frames, memzones found by name, typed errors, a dead
/// process's blocks reclaimed, and a process killed holding the heap's lock
/// (at every step of an allocation and a free) repaired after.
@Suite(.usesHugepagePool, .serialized) struct SharedHeapTests {
    func address(_ reply: String, prefix: String) -> UnsafeMutableRawPointer? {
        let words = reply.split(separator: " ")
        guard words.count >= 2, words[0] == prefix else { return nil }
        return UInt(words[1]).flatMap { UnsafeMutableRawPointer(bitPattern: $0) }
    }

    /// Waits for a worker that killed itself; true when SIGKILL ended it.
    func diedOfSIGKILL(_ worker: ShareWorker) -> Bool {
        worker.process.waitUntilExit()
        return worker.process.terminationReason == .uncaughtSignal && worker.process.terminationStatus == SIGKILL
    }

    /// Reclaims until `pid` is reported (the watcher may have done it first).
    func reclaimed(_ heap: SharedHeap, pid: Int32) -> SharedReclaim? {
        let deadline = Date().addingTimeInterval(10)
        var found: SharedReclaim? = nil
        while Date() < deadline, found == nil {
            found = heap.reclaim().first { $0.pid == pid }
            if found == nil { usleep(10_000) }
        }
        return found
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func blocksCrossBothWaysAtTheSameAddressesAndFrames() throws {
        let sandbox = try SharingSandbox()
        var frames: [UInt64] = []
        try expectNoLeak {
            let heap = try SharedHeap.publish(name: "heap-a", bytes: 8 << 20, options: sandbox.options)
            frames = stride(from: 0, to: heap.capacity, by: 2 << 20).compactMap { heap.physicalAddress(of: heap.base + $0)?.rawValue }
            let initial = heap.freeBytes
            #expect(initial == 8 << 20 && heap.capacity == 8 << 20)
            let worker = try ShareWorker(["attach-heap", "heap-a"], sandbox: sandbox)
            #expect(worker.readyWords == ["\(UInt(bitPattern: heap.base))", "\(8 << 20)"], "the same address: \(worker.greeting)")

            // Allocated and written there, read and freed here.
            let theirs = try #require(address(worker.send("alloc 4096 4096"), prefix: "block"))
            #expect(UInt(bitPattern: theirs) % 4096 == 0, "aligned to 4 KiB")
            #expect(worker.send("write \(UInt(bitPattern: theirs)) 48879") == "ok")
            #expect(theirs.load(as: UInt64.self) == 48879)
            #expect(heap.freeBytes < initial)
            try heap.free(theirs)
            #expect(heap.freeBytes == initial, "the free bytes are back")
            #expect(throws: SharedHeapError.doubleFree(name: "heap-a", address: UInt(bitPattern: theirs))) { try heap.free(theirs) }

            // Allocated and written here, read and freed there.
            let mine = try heap.allocate(bytes: 1000)
            mine.storeBytes(of: 4242, as: UInt64.self)
            #expect(worker.send("read \(UInt(bitPattern: mine))") == "value 4242")
            #expect(worker.send("hfree \(UInt(bitPattern: mine))") == "ok")
            #expect(worker.send("hfree \(UInt(bitPattern: mine))").contains("double free"), "a double free is seen there too")
            #expect(heap.freeBytes == initial && worker.send("free-bytes") == "free \(initial)")

            // The same frame in both processes' pagemap; another block's is another.
            let a = try heap.allocate(bytes: 4096, alignment: 4096)
            let b = try heap.allocate(bytes: 3 << 20, alignment: 2 << 20)
            let physicalA = try #require(Kernel.physicalAddress(UInt(bitPattern: a)))
            #expect(heap.physicalAddress(of: a)?.rawValue == physicalA)
            #expect(worker.send("hphysical \(UInt(bitPattern: a))") == "physical \(physicalA)")
            let physicalB = try #require(Kernel.physicalAddress(UInt(bitPattern: b)))
            #expect(worker.send("hphysical \(UInt(bitPattern: b))") == "physical \(physicalB)")
            #expect(physicalB != physicalA, "negative control: another block, another physical address")

            // Typed errors, no crash.
            #expect(throws: SharedHeapError.foreignPointer(name: "heap-a", address: UInt(bitPattern: a) + 64)) { try heap.free(a + 64) }
            let outside = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
            #expect(throws: SharedHeapError.foreignPointer(name: "heap-a", address: UInt(bitPattern: outside))) { try heap.free(outside) }
            outside.deallocate()
            #expect(throws: SharedHeapError.badAlignment(requested: 48, maximum: 2 << 20)) { _ = try heap.allocate(bytes: 64, alignment: 48) }
            #expect(throws: SharedHeapError.badAlignment(requested: 4 << 20, maximum: 2 << 20)) { _ = try heap.allocate(bytes: 64, alignment: 4 << 20) }
            #expect(throws: SharedHeapError.invalidSize(requested: 0, capacity: 8 << 20)) { _ = try heap.allocate(bytes: 0) }
            do {
                _ = try heap.allocate(bytes: 6 << 20)
                Issue.record("6 MiB fit in a heap with 3 MiB taken")
            } catch let error as SharedHeapError {
                guard case let .outOfMemory(_, requested, _, largest, free, capacity) = error else { Issue.record("\(error)"); return }
                #expect(requested == 6 << 20 && capacity == 8 << 20 && free == heap.freeBytes && largest < 6 << 20)
                #expect(error.description.contains("publish the heap with more bytes"))
            } catch { Issue.record("\(error)") }
            #expect(worker.send("alloc 8388608 64").hasPrefix("error shared heap \"heap-a\" has no free block"), "and there")
            #expect(try heap.invariantViolation() == nil)
            // Negative control: a block's size word changed is seen.
            let sizeWord = a - 56
            let size = sizeWord.load(as: UInt64.self)
            sizeWord.storeBytes(of: size + 64, as: UInt64.self)
            #expect(try heap.invariantViolation() != nil)
            sizeWord.storeBytes(of: size, as: UInt64.self)
            #expect(try heap.invariantViolation() == nil)
            try heap.free(a)
            try heap.free(b)
            #expect(heap.freeBytes == initial)
            let stats = try heap.statistics()
            #expect(stats.blocksInUse == 0 && stats.largestAllocation == heap.capacity - 64, "one free block again: \(stats)")

            // zeroed: a block whose bytes were written before comes back zero-filled.
            let dirty = try heap.allocate(bytes: 8192, alignment: 4096)
            dirty.initializeMemory(as: UInt8.self, repeating: 0xAB, count: 8192)
            try heap.free(dirty)
            let clean = try heap.allocate(bytes: 8192, alignment: 4096, zeroed: true)
            #expect(clean == dirty, "first fit gives the same block")
            #expect(UnsafeRawBufferPointer(start: clean, count: 8192).allSatisfy { $0 == 0 })
            try heap.free(clean)
            try heap.check()
            #expect(try heap.invariantViolation() == nil)
            worker.exit()
            #expect(heap.participants.map(\.pid) == [getpid()])
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
        #expect(!frames.isEmpty)
        for frame in frames { #expect(Kernel.mapCount(physical: frame) == 0, "frame \(String(frame, radix: 16)) still mapped") }
    }

    /// Random allocations (1 byte to 300 KB, alignments 64 bytes to 2 MiB)
    /// and frees in one process, the invariants checked after every call and
    /// no two live blocks overlapping; out of memory only when the largest
    /// free block is too small.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func randomCallsKeepEveryInvariant() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let heap = try SharedHeap.publish(name: "heap-f", bytes: 6 << 20, options: sandbox.options)
            var rng = SystemRandomNumberGenerator()
            var live: [(start: UInt, end: UInt)] = []
            for _ in 0..<1500 {
                if live.count < 40, live.isEmpty || Int.random(in: 0..<3, using: &rng) > 0 {
                    let bytes = Int.random(in: 1...300_000, using: &rng)
                    let alignment = 1 << Int.random(in: 6...21, using: &rng)
                    do {
                        let p = try heap.allocate(bytes: bytes, alignment: alignment)
                        let start = UInt(bitPattern: p)
                        #expect(start % UInt(alignment) == 0)
                        #expect(!live.contains { start < $0.end && $0.start < start + UInt(bytes) }, "overlap")
                        live.append((start, start + UInt(bytes)))
                    } catch let error as SharedHeapError {
                        guard case let .outOfMemory(_, _, _, largest, _, _) = error else { Issue.record("\(error)"); return }
                        // A free block of 128 + alignment + the rounded size always fits (a front split needs 128 bytes).
                        #expect(largest < bytes + 63 + 128 + alignment, "refused while a block of \(largest) was free")
                    }
                } else {
                    let b = live.remove(at: Int.random(in: 0..<live.count, using: &rng))
                    try heap.free(UnsafeMutableRawPointer(bitPattern: b.start)!)
                }
                if let broken = try heap.invariantViolation() {
                    Issue.record("\(broken)")
                    return
                }
            }
            for b in live { try heap.free(UnsafeMutableRawPointer(bitPattern: b.start)!) }
            let largest = try heap.statistics().largestAllocation
            #expect(heap.freeBytes == heap.capacity && largest == heap.capacity - 64)
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    /// Three processes allocate and free at random at once, each checking
    /// its blocks' bytes before freeing them (a block handed to two
    /// processes would show); afterwards the heap is one free block again.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func threeProcessesAllocateAndFreeAtOnce() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let heap = try SharedHeap.publish(name: "heap-r", bytes: 8 << 20, options: sandbox.options)
            let workers = try (0..<2).map { _ in try ShareWorker(["attach-heap", "heap-r"], sandbox: sandbox) }
            for w in workers {
                #expect(w.isReady, "\(w.greeting)")
                w.post("heap-churn 3000")
            }
            var rng = SystemRandomNumberGenerator()
            var mine: [(pointer: UnsafeMutableRawPointer, bytes: Int)] = []
            for i in 0..<3000 {
                if mine.count < 64, mine.isEmpty || Bool.random(using: &rng) {
                    let bytes = Int.random(in: 1...20_000, using: &rng)
                    let p = try heap.allocate(bytes: bytes, alignment: [64, 4096].randomElement(using: &rng)!)
                    p.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: i), count: bytes)
                    mine.append((p, bytes))
                } else {
                    let b = mine.remove(at: Int.random(in: 0..<mine.count, using: &rng))
                    try heap.free(b.pointer)
                }
            }
            for b in mine { try heap.free(b.pointer) }
            #expect(try heap.invariantViolation() == nil, "while the others churn")
            for w in workers { #expect(w.readLine(timeout: 60) == "churned 3000") }
            #expect(try heap.invariantViolation() == nil)
            let stats = try heap.statistics()
            #expect(heap.freeBytes == heap.capacity && stats.blocksInUse == 0 && stats.largestAllocation == heap.capacity - 64, "\(stats)")
            for w in workers { w.exit() }
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func memzonesAreFoundByNameInEveryProcess() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let heap = try SharedHeap.publish(name: "heap-z", bytes: 4 << 20, checked: true, options: sandbox.options)
            let initial = heap.freeBytes
            let worker = try ShareWorker(["attach-heap", "heap-z"], sandbox: sandbox)
            #expect(worker.isReady, "\(worker.greeting)")

            // Reserved here, found there: the same address and bytes.
            let rx = try heap.reserveMemzone(name: "rx-ring", bytes: 65536, alignment: 4096)
            #expect(rx.address % 4096 == 0 && rx.length == 65536)
            #expect(rx.pointer.load(fromByteOffset: 65528, as: UInt64.self) == 0, "zero-filled")
            rx.pointer.storeBytes(of: 777, toByteOffset: 8, as: UInt64.self)
            #expect(worker.send("lookup rx-ring") == "zone \(rx.address) 65536")
            #expect(worker.send("read \(rx.address + 8)") == "value 777")
            #expect(worker.send("reserve rx-ring 64").hasPrefix("error a memzone \"rx-ring\" exists already"), "a duplicate is refused there")

            // Reserved there, found here; a duplicate refused here.
            let tx = try #require(address(worker.send("reserve tx 8192"), prefix: "zone"))
            #expect(try heap.lookupMemzone(name: "tx")?.address == UInt(bitPattern: tx))
            #expect(throws: SharedHeapError.memzoneExists(name: "tx", address: UInt(bitPattern: tx), bytes: 8192)) {
                _ = try heap.reserveMemzone(name: "tx", bytes: 64)
            }
            #expect(throws: SharedHeapError.foreignPointer(name: "heap-z", address: UInt(bitPattern: tx))) { try heap.free(tx) }
            #expect(try heap.lookupMemzone(name: "nothing") == nil)
            #expect(throws: SharedHeapError.memzoneNotFound(name: "nothing")) { try heap.freeMemzone(name: "nothing") }

            // A memzone outlives the process that reserved it, even in checked mode.
            #expect(worker.send("reserve kept 4096").hasPrefix("zone"))
            worker.kill()
            _ = reclaimed(heap, pid: worker.pid)
            let kept = try #require(try heap.lookupMemzone(name: "kept"))
            #expect(kept.length == 4096)
            #expect(try heap.memzones().map(\.name).sorted() == ["kept", "rx-ring", "tx"])
            #expect(try heap.invariantViolation() == nil)

            for zone in ["kept", "rx-ring", "tx"] { try heap.freeMemzone(name: zone) }
            #expect(try heap.lookupMemzone(name: "tx") == nil)
            #expect(heap.freeBytes == initial)
            // The name is free again.
            _ = try heap.reserveMemzone(name: "tx", bytes: 64)
            try heap.freeMemzone(name: "tx")
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func checkedModeReclaimsTheBlocksOfAKilledProcess() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let heap = try SharedHeap.publish(name: "heap-c", bytes: 4 << 20, checked: true, options: sandbox.options)
            let initial = heap.freeBytes
            let mine = try heap.allocate(bytes: 500)
            let worker = try ShareWorker(["attach-heap", "heap-c"], sandbox: sandbox)
            for bytes in [64, 1000, 4096, 70000, 300_000] { #expect(worker.send("alloc \(bytes) 64").hasPrefix("block")) }
            let usage = try heap.processUsage()
            #expect(usage.first { $0.pid == worker.pid }?.blocks == 5 && usage.first { $0.pid == getpid() }?.blocks == 1, "\(usage)")
            worker.kill()
            let record = try #require(reclaimed(heap, pid: worker.pid))
            #expect(record.heldObjects == 5 || heap.reclaimedTotals.blocks == 5, "\(record)")
            #expect(heap.freeBytes == initial - 576, "only this process's block of 500 (+ header) is still allocated")
            try heap.free(mine)
            #expect(heap.freeBytes == initial)
            #expect(try heap.processUsage().isEmpty)
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func withoutCheckedModeAKilledProcessKeepsItsBlocks() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let heap = try SharedHeap.publish(name: "heap-u", bytes: 2 << 20, options: sandbox.options)
            let initial = heap.freeBytes
            let worker = try ShareWorker(["attach-heap", "heap-u"], sandbox: sandbox)
            #expect(worker.send("alloc 1000 64").hasPrefix("block"))
            worker.kill()
            let record = try #require(reclaimed(heap, pid: worker.pid))
            #expect(record.heldObjects == 0 && record.heldBytes == 0)
            #expect(heap.freeBytes == initial - 1024 - 64, "the dead process's block stays allocated, as in DPDK")
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    /// A worker kills itself (SIGKILL) holding the heap's lock at each step
    /// of an allocation and of a free; the next locker finds the owner dead
    /// (`EOWNERDEAD`), rebuilds the free lists from the block headers, and
    /// the heap is whole: every byte free again once the dead process's
    /// blocks are reclaimed, in one free block.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func aProcessKilledHoldingTheLockIsRepairedByTheNext() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let heap = try SharedHeap.publish(name: "heap-k", bytes: 4 << 20, checked: true, options: sandbox.options)
            let initial = heap.freeBytes
            // Something allocated here, so the chain has more than one block.
            let mine = try heap.allocate(bytes: 10000)
            let steps: [(step: Int, command: String)] = [
                (1, "die-in-alloc 1 64 64"), (2, "die-in-alloc 2 100000 4096"), (3, "die-in-alloc 3 100000 4096"),
                (4, "die-in-alloc 4 100000 4096"), (5, "die-in-free 5"),
            ]
            var repairs = try heap.statistics().repairs
            for (step, command) in steps {
                let worker = try ShareWorker(["attach-heap", "heap-k"], sandbox: sandbox)
                #expect(worker.isReady, "\(worker.greeting)")
                var line = command
                if step == 5 {
                    let block = try #require(address(worker.send("alloc 100000 4096"), prefix: "block"))
                    line += " \(UInt(bitPattern: block))"
                }
                worker.post(line)
                #expect(diedOfSIGKILL(worker), "the worker stopped at step \(step)")
                // The next allocation here succeeds: the heap was repaired (here or by the watcher).
                let probe = try heap.allocate(bytes: 4096, alignment: 4096)
                try heap.free(probe)
                #expect(try heap.invariantViolation() == nil, "step \(step): the repaired heap is consistent")
                _ = reclaimed(heap, pid: worker.pid)
                let stats = try heap.statistics()
                #expect(stats.repairs == repairs + 1, "step \(step): one repair")
                repairs = stats.repairs
                #expect(heap.freeBytes == initial - 10112, "step \(step): every byte of the dead process is free again")
                #expect(stats.blocksInUse == 1, "step \(step): only this process's block: \(stats)")
            }
            try heap.free(mine)
            let stats = try heap.statistics()
            #expect(heap.freeBytes == initial && stats.largestAllocation == heap.capacity - 64, "one free block again: \(stats)")
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    /// Negative control: with repairs disabled, the next locker reports the
    /// dead owner instead of going on with a heap it did not repair.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func withoutRepairTheDeadOwnerIsReported() throws {
        let sandbox = try SharingSandbox()
        SharedHeap.repairsEnabled.store(false, ordering: .relaxed)
        defer { SharedHeap.repairsEnabled.store(true, ordering: .relaxed) }
        try expectNoLeak {
            let heap = try SharedHeap.publish(name: "heap-n", bytes: 2 << 20, options: sandbox.options)
            let worker = try ShareWorker(["attach-heap", "heap-n"], sandbox: sandbox)
            worker.post("die-in-alloc 1 64 64")
            #expect(diedOfSIGKILL(worker))
            #expect(throws: SharedHeapError.lockOwnerDied(name: "heap-n", pid: worker.pid)) { _ = try heap.allocate(bytes: 64) }
            // Given up unrepaired, the lock stays unusable for everyone.
            #expect(throws: SharedHeapError.lockOwnerDied(name: "heap-n", pid: worker.pid)) { _ = try heap.allocate(bytes: 64) }
            _ = reclaimed(heap, pid: worker.pid)
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }
}
