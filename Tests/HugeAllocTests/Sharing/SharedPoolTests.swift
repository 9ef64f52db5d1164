import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

/// Pools shared between this test process and spawned worker processes:
/// objects and packet chains cross in both directions, a shared ring hands
/// buffers over, and processes killed at random under load lose nothing.
@Suite(.usesHugepagePool, .serialized) struct SharedPoolTests {
    func addresses(_ reply: String, prefix: String) -> [UnsafeMutableRawPointer] {
        guard reply.hasPrefix(prefix + " ") else { return [] }
        return reply.split(separator: " ").dropFirst().compactMap { UInt($0).flatMap { UnsafeMutableRawPointer(bitPattern: $0) } }
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func objectsCrossBothWaysAndADoubleFreeIsCaughtAcrossProcesses() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let shared = try SharedMempool.publish(
                name: "pool-a", configuration: MempoolConfiguration(count: 1000, objectSize: 100, cacheSize: 32, checked: true),
                options: sandbox.options)
            let pool = shared.pool
            let worker = try ShareWorker(["attach-pool", "pool-a"], sandbox: sandbox)
            #expect(worker.isReady && worker.readyWords == ["\(UInt(bitPattern: pool.base))", "1000"], "\(worker.greeting)")

            // This process's objects, written here, read and put back there.
            var mine = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: 5)
            #expect(mine.withUnsafeMutableBufferPointer { pool.get(into: $0.baseAddress!, count: 5) })
            for (i, object) in mine.enumerated() { object.storeBytes(of: UInt64(1000 + i), as: UInt64.self) }
            #expect(worker.send("read \(UInt(bitPattern: mine[3]))") == "value 1003", "a pointer from here is valid there")
            #expect(worker.send("put \(mine.map { "\(UInt(bitPattern: $0))" }.joined(separator: " "))") == "ok")
            // Putting one of them again, here, is a double free: the state is shared.
            #expect(throws: MempoolError.self) { try pool.putChecked(mine[0]) }

            // The worker's objects, written there, read and put back here.
            let theirs = addresses(worker.send("get 4"), prefix: "objects")
            #expect(theirs.count == 4 && theirs.allSatisfy { pool.contains($0) })
            #expect(worker.send("write \(UInt(bitPattern: theirs[0])) 4242") == "ok")
            #expect(theirs[0].load(as: UInt64.self) == 4242)
            let usage = Dictionary(uniqueKeysWithValues: shared.processUsage().map { ($0.pid, $0) })
            #expect(usage[worker.pid]?.heldObjects == 4, "the worker holds 4 (owner tags): \(usage)")
            for object in theirs { try pool.putChecked(object) }
            #expect(worker.send("put \(UInt(bitPattern: theirs[1]))").hasPrefix("error"), "and there, a double free")
            #expect(worker.send("available") == "available 1000")
            #expect(pool.availableCount == 1000)
            worker.exit()
            #expect(pool.availableCount == 1000)
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func aPacketChainBuiltInOneProcessIsFreedInAnother() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let shared = try SharedPacketPool.publish(
                name: "packets-a", configuration: PacketPoolConfiguration(count: 512, dataRoom: 1024, cacheSize: 16),
                options: sandbox.options)
            let pool = shared.pool
            let worker = try ShareWorker(["attach-packets", "packets-a"], sandbox: sandbox)
            #expect(worker.isReady, "\(worker.greeting)")

            // Built there, read and freed here.
            let reply = worker.send("chain 5000 9").split(separator: " ")
            let head = PacketBuffer(metadata: try #require(UInt(reply.count == 3 ? String(reply[1]) : "").flatMap { UnsafeMutableRawPointer(bitPattern: $0) }))
            #expect(reply.last == "5", "5000 bytes over 1024-byte buffers: five segments")
            #expect(pool.owns(head) && head.segmentCount == 5 && head.packetLength == 5000)
            #expect(head.contents == (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 9) }, "every byte as the worker wrote it")
            pool.free(head)
            // Built here, read and freed there.
            let mine = try pool.allocateFrame(length: 3000)
            pool.write((0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 4) }, into: mine)
            #expect(worker.send("free-chain \(UInt(bitPattern: mine.metadata)) 3000 4") == "freed 3")
            // Negative control: a wrong pattern is noticed there.
            let other = try pool.allocateFrame(length: 100)
            pool.write([UInt8](repeating: 1, count: 100), into: other)
            #expect(worker.send("free-chain \(UInt(bitPattern: other.metadata)) 100 4") == "error contents differ")
            pool.free(other)
            #expect(worker.send("available") == "available 512")
            worker.exit()
            #expect(pool.availableCount == 512)
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func aSharedRingHandsBuffersToAnotherProcess() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let shared = try SharedPacketPool.publish(
                name: "packets-b", configuration: PacketPoolConfiguration(count: 1024, cacheSize: 32), options: sandbox.options)
            let ring = try SharedRing.publish(name: "ring-b", capacity: 256, options: sandbox.options)
            let pool = shared.pool
            let worker = try ShareWorker(["attach-packets", "packets-b", "ring-b"], sandbox: sandbox)
            #expect(worker.isReady, "\(worker.greeting)")
            for round in 0..<4 {
                guard let buffers = pool.allocate(count: 64) else { Issue.record("pool empty"); return }
                for (i, b) in buffers.enumerated() { b.data.storeBytes(of: UInt64(round * 1000 + i), as: UInt64.self) }
                let objects = buffers.map(\.metadata)
                #expect(objects.withUnsafeBufferPointer { ring.enqueue($0.baseAddress!, count: 64) })
                #expect(ring.count == 64)
                #expect(worker.send("receive 64") == "frames \((0..<64).map { "\(round * 1000 + $0)" }.joined(separator: " "))")
                #expect(ring.count == 0)
            }
            #expect(worker.send("receive 1") == "empty", "negative control: an empty ring gives nothing")
            #expect(pool.availableCount == 1024, "every buffer freed in the other process is back")
            worker.exit()
            withExtendedLifetime(ring) {}
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    /// A process killed at each point (lock taken, journal written,
    /// pointers copied, committed) of a SharedRing enqueue and dequeue: the
    /// ring's watcher in a survivor repairs the side it held, and another
    /// process's enqueue and dequeue return (within a timeout) after each.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func aProcessKilledInsideARingOperationDoesNotStallTheRing() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let shared = try SharedPacketPool.publish(
                name: "packets-kill", configuration: PacketPoolConfiguration(count: 1024, cacheSize: 32), options: sandbox.options)
            let ring = try SharedRing.publish(name: "ring-kill", capacity: 256, options: sandbox.options)
            let steady = try ShareWorker(["attach-packets", "packets-kill", "ring-kill"], sandbox: sandbox)
            #expect(steady.send("ring-check") == "ring ok")
            for operation in ["enqueue", "dequeue"] {
                for point in 1...4 {
                    let victim = try ShareWorker(["attach-packets", "packets-kill", "ring-kill"], sandbox: sandbox)
                    let reply = victim.send("crash-ring \(point) \(operation)", timeout: 10)
                    #expect(reply.hasPrefix("no answer"), "the victim died at point \(point) of \(operation): \(reply)")
                    victim.kill()
                    let deadline = Date().addingTimeInterval(10)
                    while Date() < deadline, ring.participants.contains(where: { $0.pid == victim.pid }) { usleep(10_000) }
                    #expect(!ring.participants.contains { $0.pid == victim.pid }, "the ring's watcher reclaimed \(victim.pid)")
                    #expect(steady.send("ring-check", timeout: 30) == "ring ok", "after point \(point) of \(operation)")
                }
            }
            steady.exit()
            _ = shared.reclaim()
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    /// Workers attach, get and put at random under load and are killed with
    /// SIGKILL after a random time, while churning: at any instruction of a
    /// get or put (cache, refill, flush, a bulk straight to the backend,
    /// checked mode's owner words), holding objects and cached objects,
    /// while another process keeps churning. After every kill the survivors
    /// reclaim what the dead one held, repairing a backend operation it died
    /// inside, so that nothing stalls (the survivor's churn stops when told,
    /// within a timeout), available + held by live processes is the total,
    /// and nothing is mapped once every process is gone.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason), arguments: [MempoolConfiguration.Backend.ring, .stack])
    func processesKilledUnderLoadLoseNothing(backend: MempoolConfiguration.Backend) throws {
        try killTest(backend: backend, name: "pool-kill-\(backend)") { victim in
            #expect(victim.send("churn") == "churning")
            usleep(UInt32.random(in: 5_000...120_000))
            victim.kill()
        }
    }

    /// The same, each victim killing itself at a chosen point of a chosen
    /// backend operation (the lock taken; the journal written; the objects
    /// copied and, for a checked get, marked; committed), so that every
    /// crash window is proven, not only hit by chance.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason), arguments: [MempoolConfiguration.Backend.ring, .stack])
    func processesKilledInsideEachOperationWindowLoseNothing(backend: MempoolConfiguration.Backend) throws {
        var cases = ["get-direct", "put-direct", "refill", "flush"].flatMap { op in (1...4).map { (op, $0) } }.makeIterator()
        try killTest(backend: backend, name: "pool-window-\(backend)", victims: 16) { victim in
            guard let (operation, point) = cases.next() else { return }
            let reply = victim.send("crash-at \(point) \(operation)", timeout: 10)
            #expect(reply.hasPrefix("no answer"), "the victim died at point \(point) of \(operation): \(reply)")
            victim.kill()
        }
    }

    /// Several processes dead before any survivor runs: one holding the put
    /// side's lock, one holding the get side's (with objects in its cache
    /// and in hand, which its reclaim must put back through the put side),
    /// and one killed while it waited for the get side's lock. The survivors
    /// (publisher and a worker, neither in the test process) are stopped
    /// with SIGSTOP meanwhile, so their watchers meet all three deaths at
    /// once, in an order of their own. The victims watch each other too: a
    /// victim still running reclaims one already dead, and is killed in the
    /// middle of it, so its reclaim must be taken over. A reclaim that
    /// repaired only its own process's locks could stall on a lock another
    /// dead process holds; every dead holder's lock is repaired, a reclaim
    /// whose reclaimer died is run again, so nothing stalls and every
    /// object comes back.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func processesDeadAtOnceHoldingBothRingLocksAreAllReclaimed() throws {
        let sandbox = try SharingSandbox()
        let name = "pool-dead-at-once"
        try expectNoLeak {
            let (publisher, steady, victims) = try publishPool(name, attachers: 3, sandbox: sandbox)
            #expect(steady.send("get 100").hasPrefix("objects"))
            #expect(victims[0].send("get 8").hasPrefix("objects"), "objects in hand and in the cache")
            for survivor in [publisher, steady] { Foundation.kill(survivor.pid, SIGSTOP) }
            #expect(victims[1].send("crash-at 1 put-direct", timeout: 5).hasPrefix("no answer"), "died holding the put side")
            #expect(victims[0].send("crash-at 1 get-direct", timeout: 5).hasPrefix("no answer"), "died holding the get side")
            // Its get waits for the get side's lock, which a dead process holds.
            #expect(victims[2].send("crash-at 4 put-direct", timeout: 1).hasPrefix("no answer"), "waiting for the get side")
            for victim in victims { victim.kill() }
            for survivor in [publisher, steady] { Foundation.kill(survivor.pid, SIGCONT) }

            // The survivors' watchers reclaim all three.
            expectAllReclaimed(victims.map(\.pid), publisher: publisher, steady: steady)
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    /// A reclaimer killed in the middle of a reclaim, at each point of its
    /// first backend operation (lock taken, journal written, objects copied,
    /// committed): the transfer of the dead process's cache back, or the
    /// checked put of the objects it held. The survivors are stopped meanwhile, so the victim's
    /// only watcher is the reclaimer. Once they run, they take the reclaim
    /// over (its reclaimer is dead) and reclaim the reclaimer: every object
    /// comes back once, nothing stalls. Before reclaims could be taken
    /// over, the first victim stayed "reclaiming" forever with its objects.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason), arguments: 1...4, [true, false])
    func aReclaimerKilledInTheMiddleIsTakenOver(point: Int, cached: Bool) throws {
        let sandbox = try SharingSandbox()
        let name = "pool-reclaimer-\(point)-\(cached)"
        try expectNoLeak {
            let (publisher, steady, others) = try publishPool(name, attachers: 2, sandbox: sandbox)
            let victim = others[0], reclaimer = others[1]
            // Straight from the backend; then, with `cached`, a refill fills the cache, whose
            // transfer back is the reclaim's first backend operation (else its checked put is).
            #expect(victim.send("get 300").hasPrefix("objects"))
            if cached { #expect(victim.send("get 5").hasPrefix("objects")) }
            #expect(reclaimer.send("arm-crash \(point)") == "armed")
            for survivor in [publisher, steady] { Foundation.kill(survivor.pid, SIGSTOP) }
            victim.kill()
            // The reclaimer's watcher reclaims the victim and dies at the point.
            let died = Date().addingTimeInterval(10)
            while Date() < died, reclaimer.isRunning { usleep(10_000) }
            #expect(!reclaimer.isRunning, "the reclaimer died inside its reclaim")
            reclaimer.kill()
            for survivor in [publisher, steady] { Foundation.kill(survivor.pid, SIGCONT) }

            expectAllReclaimed([victim.pid, reclaimer.pid], publisher: publisher, steady: steady)
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    /// A pool of 4096 objects published by one worker, a steady worker
    /// attached to it and `attachers` more, all ready: the cast of the
    /// reclaim tests (``expectAllReclaimed(_:publisher:steady:)`` ends them).
    func publishPool(
        _ name: String, attachers: Int, sandbox: SharingSandbox
    ) throws -> (publisher: ShareWorker, steady: ShareWorker, others: [ShareWorker]) {
        let publisher = try ShareWorker(["publish-pool", name, "4096", "64", "64", "1"], sandbox: sandbox)
        try #require(publisher.isReady, "publish failed: \(publisher.greeting)")
        let steady = try ShareWorker(["attach-pool", name], sandbox: sandbox)
        let others = try (0..<attachers).map { _ in try ShareWorker(["attach-pool", name], sandbox: sandbox) }
        try #require(steady.isReady && others.allSatisfy(\.isReady), "attach failed")
        return (publisher, steady, others)
    }

    /// Waits (15 s at most) until the publisher's table names none of
    /// `dead`; then the steady worker's churn must stop (no lock left held
    /// by the dead), it gives back what it holds and exits, and every one
    /// of the pool's 4096 objects must be back; the publisher exits.
    func expectAllReclaimed(_ dead: [Int32], publisher: ShareWorker, steady: ShareWorker) {
        var table = ""
        let deadline = Date().addingTimeInterval(15)
        repeat {
            table = publisher.send("participants")
            if !dead.contains(where: { table.contains("\($0):") }) { break }
            usleep(20_000)
        } while Date() < deadline
        #expect(!dead.contains { table.contains("\($0):") }, "every dead process was reclaimed: \(table)")
        #expect(steady.send("churn") == "churning")
        usleep(200_000)
        #expect(steady.send("stop", timeout: 30).hasPrefix("stopped"), "no lock is left held by the dead")
        #expect(steady.send("putheld").hasPrefix("ok"))
        #expect(steady.send("flush") == "ok")
        steady.exit()
        let settle = Date().addingTimeInterval(10)
        var available = ""
        repeat {
            available = publisher.send("available")
            if available == "available 4096" { break }
            usleep(20_000)
        } while Date() < settle
        #expect(available == "available 4096", "every object is back, once: \(available)")
        publisher.exit()
    }

    /// The negative control: with the repair of dead processes' backend
    /// locks turned off, a process killed inside a backend operation (after
    /// it copied objects out, before its commit) stalls the pool for the
    /// others: the survivor's churn never comes back.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func withoutRepairAProcessKilledInsideAnOperationStallsThePool() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let shared = try SharedMempool.publish(
                name: "pool-stall", configuration: MempoolConfiguration(count: 4096, objectSize: 64, cacheSize: 64, checked: true),
                options: sandbox.options)
            shared.pool.repairsDeadLocks.store(false, ordering: .relaxed)
            let noRepair = ["SHARE_NO_REPAIR": "1"]
            let steady = try ShareWorker(["attach-pool", "pool-stall"], sandbox: sandbox, environment: noRepair)
            #expect(steady.send("churn") == "churning")
            let victim = try ShareWorker(["attach-pool", "pool-stall"], sandbox: sandbox, environment: noRepair)
            #expect(victim.send("crash-at 3 get-direct", timeout: 10).hasPrefix("no answer"))
            victim.kill()
            _ = shared.reclaim()
            #expect(steady.send("stop", timeout: 30) == "stalled", "the pool stalls without the repair")
            steady.kill()
        }
    }

    /// A pool of `backend` shared with a churning survivor; `victims`
    /// workers attach one after another and are killed by `kill`; after
    /// each, the dead one is reclaimed and the survivor must still be able
    /// to stop (no stall); at the end, available + held == total, and
    /// nothing is left mapped or in the runtime directory.
    func killTest(
        backend: MempoolConfiguration.Backend, name: String, victims: Int = 24, kill: (ShareWorker) -> Void
    ) throws {
        let sandbox = try SharingSandbox()
        var frames: [UInt64] = []
        try expectNoLeak {
            let shared = try SharedMempool.publish(
                name: name,
                configuration: MempoolConfiguration(count: 4096, objectSize: 64, cacheSize: 64, backend: backend, checked: true),
                options: sandbox.options)
            let pool = shared.pool
            frames = stride(from: 0, to: pool.length, by: 2 << 20).compactMap { pool.physicalAddress(of: pool.base + $0)?.rawValue }
            let steady = try ShareWorker(["attach-pool", name], sandbox: sandbox)
            #expect(steady.send("churn") == "churning")
            var reclaimed: [SharedReclaim] = []
            var kills = 0
            for _ in 0..<victims {
                let victim = try ShareWorker(["attach-pool", name], sandbox: sandbox)
                guard victim.isReady else { Issue.record("attach failed: \(victim.greeting)"); continue }
                kill(victim)
                kills += 1
                // The watcher (a pidfd per participant) or reclaim() puts it back.
                let deadline = Date().addingTimeInterval(10)
                while Date() < deadline, !reclaimed.contains(where: { $0.pid == victim.pid }) {
                    reclaimed += shared.reclaim()
                    if !reclaimed.contains(where: { $0.pid == victim.pid }) { usleep(10_000) }
                }
                #expect(reclaimed.contains { $0.pid == victim.pid } || shared.reclaimedTotals.processes >= kills,
                        "process \(victim.pid) was reclaimed")
                #expect(!shared.participants.contains { $0.pid == victim.pid }, "and left the table")
                // No stall: the survivor's calls all return.
                let stopped = steady.send("stop", timeout: 30)
                #expect(stopped.hasPrefix("stopped"), "after killing \(victim.pid): \(stopped)")
                guard stopped.hasPrefix("stopped") else { steady.kill(); return }
                #expect(steady.send("churn") == "churning")
            }
            #expect(kills == victims)
            #expect(reclaimed.reduce(0) { $0 + $1.heldObjects + $1.cachedObjects } > 0, "the killed processes held objects: \(reclaimed)")

            // Quiet the survivor, then count: available + held by live processes == total.
            #expect(steady.send("stop").hasPrefix("stopped"))
            let held = shared.processUsage().reduce(0) { $0 + ($1.heldObjects ?? 0) }
            #expect(pool.availableCount + held == pool.count, "available \(pool.availableCount) + held \(held) == \(pool.count)")
            #expect(steady.send("putheld").hasPrefix("ok"))
            steady.exit()
            // A worker whose churn threads still held the pool at exit(3)
            // leaves its slot to a survivor's reclaim.
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline, shared.participants.count > 1 {
                _ = shared.reclaim()
                usleep(10_000)
            }
            #expect(pool.availableCount == pool.count)
            #expect(shared.participants.map(\.pid) == [getpid()])
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
        // Every process is gone: no page table maps the pool's frames.
        #expect(!frames.isEmpty)
        for frame in frames { #expect(Kernel.mapCount(physical: frame) == 0, "frame \(String(frame, radix: 16)) still mapped") }
    }
}
