import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

/// A mapping published by one process and attached by others (spawned
/// processes, not threads): the same addresses, the same bytes and pages,
/// the rendezvous handed on when the creator exits, permissions enforced.
/// Claims need fixed addresses, which ThreadSanitizer's runtime cannot have.
let claimGateReason: Comment = "early claims are not supported under ThreadSanitizer"

@Suite(.usesHugepagePool, .serialized) struct SharedMappingTests {
    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func anAttachedProcessSeesTheSameAddressBytesAndPages() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let shared = try SharedMapping.publish(name: "mapping-a", length: 4 << 20, options: sandbox.options)
            let worker = try ShareWorker(["attach-mapping", "mapping-a"], sandbox: sandbox)
            #expect(worker.isReady, "\(worker.greeting)")
            #expect(worker.readyWords.first == "\(UInt(bitPattern: shared.base))", "the same virtual address in both processes")
            #expect(worker.readyWords.dropFirst().first == "\(4 << 20)")

            shared.base.storeBytes(of: 0xFEED_F00D, toByteOffset: 4096, as: UInt64.self)
            #expect(worker.send("read 4096") == "value \(0xFEED_F00D)", "the worker reads what this process wrote")
            #expect(worker.send("write \(3 << 20) 4242") == "ok")
            #expect(shared.base.load(fromByteOffset: 3 << 20, as: UInt64.self) == 4242, "and this process what it wrote")

            // The pages are the same frames: both processes' pagemap agree.
            for offset in [0, 2 << 20, (4 << 20) - 8] {
                let mine = try #require(Kernel.physicalAddress(UInt(bitPattern: shared.base) + UInt(offset)))
                #expect(worker.send("physical \(offset)") == "physical \(mine)")
                #expect(shared.physicalAddress(of: shared.base + offset)?.rawValue == mine)
            }
            // Negative control: another offset's frame is not this one's.
            let other = try #require(Kernel.physicalAddress(UInt(bitPattern: shared.base) + UInt(2 << 20)))
            #expect(worker.send("physical 0") != "physical \(other)")

            #expect(Set(shared.participants.map(\.pid)) == [getpid(), worker.pid])
            worker.exit()
            #expect(shared.participants.map(\.pid) == [getpid()], "a process that exits leaves the table")
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func theCreatorExitsAndAThirdProcessAttachesThroughTheSecond() throws {
        let sandbox = try SharingSandbox()
        let creator = try ShareWorker(["publish-mapping", "mapping-b", "\(2 << 20)"], sandbox: sandbox)
        #expect(creator.isReady, "\(creator.greeting)")
        #expect(creator.send("write 64 77") == "ok")
        let second = try ShareWorker(["attach-mapping", "mapping-b"], sandbox: sandbox)
        #expect(second.isReady, "\(second.greeting)")
        creator.exit()
        let third = try ShareWorker(["attach-mapping", "mapping-b"], sandbox: sandbox)
        #expect(third.isReady, "the third process attaches with the creator gone: \(third.greeting)")
        #expect(third.readyWords.first == creator.readyWords.first, "at the creator's address")
        #expect(third.send("read 64") == "value 77", "and sees what the creator wrote")
        #expect(third.send("participants").hasPrefix("participants ") && !third.send("participants").contains("\(creator.pid):"))
        second.exit()
        third.exit()
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")

        // Negative control: with every process gone, nothing is published.
        let late = try ShareWorker(["attach-mapping", "mapping-b"], sandbox: sandbox)
        #expect(late.greeting.hasPrefix("error nothing is published as \"mapping-b\""), "\(late.greeting)")
        late.exit()
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func anUnauthorisedUserIsRefused() throws {
        let sandbox = try SharingSandbox()
        let nobody: UInt32 = 65534
        do {
            // The default: only the publisher's user; the directory keeps others out.
            let shared = try SharedMapping.publish(name: "mapping-c", length: 2 << 20, options: sandbox.options)
            let refused = try ShareWorker(["attach-mapping", "mapping-c"], sandbox: sandbox, asUser: nobody)
            #expect(refused.greeting.hasPrefix("error user \(nobody) may not attach to \"mapping-c\""), "\(refused.greeting)")
            #expect(refused.greeting.contains("permissions"))
            refused.exit()
            withExtendedLifetime(shared) {}
        }
        do {
            // Others may reach the socket, but the credentials (SO_PEERCRED) decide.
            var options = sandbox.options
            options.allowedUsers = [12345]
            let shared = try SharedMapping.publish(name: "mapping-d", length: 2 << 20, options: options)
            let refused = try ShareWorker(["attach-mapping", "mapping-d"], sandbox: sandbox, asUser: nobody)
            #expect(refused.greeting.contains("refused this user by its credentials (SO_PEERCRED)"), "\(refused.greeting)")
            refused.exit()
            // Negative control: the same user, allowed, attaches.
            options.allowedUsers = [nobody]
            let open = try SharedMapping.publish(name: "mapping-e", length: 2 << 20, options: options)
            let allowed = try ShareWorker(["attach-mapping", "mapping-e"], sandbox: sandbox, asUser: nobody)
            #expect(allowed.isReady, "\(allowed.greeting)")
            open.base.storeBytes(of: 31337, as: UInt64.self)
            #expect(allowed.send("read 0") == "value 31337")
            allowed.exit()
            withExtendedLifetime((shared, open)) {}
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func anOccupiedAddressRangeIsATypedErrorNamingTheOccupant() throws {
        let sandbox = try SharingSandbox()
        let shared = try SharedMapping.publish(name: "mapping-f", length: 4 << 20, options: sandbox.options)
        let address = UInt(bitPattern: shared.base) + (1 << 20)
        let blocked = try ShareWorker(["attach-mapping", "mapping-f"], sandbox: sandbox,
                                      environment: ["SHARE_OCCUPY": String(address, radix: 16)])
        #expect(blocked.greeting.hasPrefix("error cannot map \"mapping-f\" at 0x"), "\(blocked.greeting)")
        #expect(blocked.greeting.contains("\(String(address, radix: 16))-\(String(address + (2 << 20), radix: 16)) r--p"),
                "the occupant from /proc/self/maps: \(blocked.greeting)")
        #expect(blocked.greeting.contains("HUGEALLOC_BASE_ADDRESS"), "and the way out")
        blocked.exit()
        // Negative control: the same attach without the occupant works.
        let free = try ShareWorker(["attach-mapping", "mapping-f"], sandbox: sandbox)
        #expect(free.isReady, "\(free.greeting)")
        free.exit()
        withExtendedLifetime(shared) {}
    }

    /// A process that claims the range early keeps it: a later mapping that
    /// would have landed there (an mmap hint, as an allocator looking for
    /// room gives) goes elsewhere, and the attach maps over the claim.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason), .enabled(if: SharedAddressReservation.isSupported, claimGateReason))
    func anEarlyClaimKeepsTheRangeForAttach() throws {
        let sandbox = try SharingSandbox()
        try expectNoLeak {
            let shared = try SharedMapping.publish(name: "mapping-claim", length: 4 << 20, options: sandbox.options)
            let hint = String(UInt(bitPattern: shared.base) + (1 << 20) + (1 << 20), radix: 16)
            // Negative control: without a claim the hinted mapping lands in
            // the range and the attach is refused.
            let unclaimed = try ShareWorker(["attach-mapping", "mapping-claim"], sandbox: sandbox, environment: ["SHARE_OCCUPY_HINT": hint])
            #expect(unclaimed.greeting.hasPrefix("error cannot map \"mapping-claim\""), "\(unclaimed.greeting)")
            unclaimed.exit()

            let claimed = try ShareWorker(["attach-mapping", "mapping-claim"], sandbox: sandbox,
                                          environment: ["SHARE_CLAIM": "\(1 << 40)", "SHARE_OCCUPY_HINT": hint])
            #expect(claimed.isReady, "\(claimed.greeting)")
            #expect(claimed.readyWords.first == "\(UInt(bitPattern: shared.base))")
            shared.base.storeBytes(of: 0xC1A1, toByteOffset: 2 << 20, as: UInt64.self)
            #expect(claimed.send("read \(2 << 20)") == "value \(0xC1A1)")
            // Closed, the object's range is a bare reservation again: still claimed.
            #expect(claimed.send("release") == "released ---p")
            claimed.exit()
            withExtendedLifetime(shared) {}
        }
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    /// A publisher with a claim places its objects inside it and keeps the
    /// range reserved when they close; without one the range is unmapped.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason), .enabled(if: SharedAddressReservation.isSupported, claimGateReason))
    func aPublisherPlacesObjectsInsideItsClaim() throws {
        let sandbox = try SharingSandbox()
        let claim = SharingOptions.defaultBaseAddress..<(SharingOptions.defaultBaseAddress + (1 << 40))
        let publisher = try ShareWorker(["publish-mapping", "mapping-inside", "\(2 << 20)"], sandbox: sandbox,
                                        environment: ["SHARE_CLAIM": "\(1 << 40)"])
        #expect(publisher.isReady, "\(publisher.greeting)")
        let base = try #require(publisher.readyWords.first.flatMap { UInt($0) })
        #expect(claim.contains(base), "0x\(String(base, radix: 16)) inside the claim")
        #expect(publisher.send("release") == "released ---p")
        publisher.exit()
        // Negative control: no claim, nothing left at the address after close.
        let plain = try ShareWorker(["publish-mapping", "mapping-plain", "\(2 << 20)"], sandbox: sandbox)
        #expect(plain.isReady, "\(plain.greeting)")
        #expect(plain.send("release") == "released none")
        plain.exit()
        #expect(sandbox.leftovers.isEmpty, "left in the runtime directory: \(sandbox.leftovers)")
    }

    /// A claim over a range this process already uses names the occupant.
    @Test(.enabled(if: canRunSharingTests, sharingGateReason), .enabled(if: SharedAddressReservation.isSupported, claimGateReason))
    func aClaimOverAnOccupiedRangeIsATypedError() throws {
        let sandbox = try SharingSandbox()
        let shared = try SharedMapping.publish(name: "mapping-occupied", length: 2 << 20, options: sandbox.options)
        var options = SharingOptions()
        let start = UInt(bitPattern: shared.base) / (1 << 30) * (1 << 30)
        options.baseAddress = start
        do {
            try SharedAddressReservation.claim(bytes: 1 << 30, options: options)
            Issue.record("claimed a range this process maps")
        } catch {
            guard case .addressRangeOccupied(_, let address, _, let occupants, _) = error else { Issue.record("\(error)"); return }
            #expect(address == start)
            #expect(!occupants.isEmpty, "the occupant from /proc/self/maps")
            #expect(error.description.hasPrefix("cannot reserve 0x"), "\(error)")
        }
        options.baseAddress = (1 << 30) + 1
        #expect(throws: SharingError.self) { try SharedAddressReservation.claim(bytes: 1 << 30, options: options) }
        #expect(throws: SharingError.self) { try SharedAddressReservation.claim(bytes: 0) }
        #expect(SharedAddressReservation.claimed.isEmpty, "a refused claim leaves nothing claimed")
        withExtendedLifetime(shared) {}
    }

    @Test(.enabled(if: canRunSharingTests, sharingGateReason))
    func badNamesAndMissingObjectsAreTypedErrors() throws {
        let sandbox = try SharingSandbox()
        for bad in ["", "../x", ".hidden", "a/b", String(repeating: "n", count: 65), "sp ace"] {
            #expect(throws: SharingError.self, "name \"\(bad)\"") {
                _ = try SharedMapping.publish(name: bad, length: 2 << 20, options: sandbox.options)
            }
        }
        do {
            _ = try SharedMapping.attach(name: "absent", options: sandbox.options)
            Issue.record("attached to nothing")
        } catch {
            guard case .notPublished(let name, _, _) = error else { Issue.record("\(error)"); return }
            #expect(name == "absent")
        }
        let first = try SharedMapping.publish(name: "twice", length: 2 << 20, options: sandbox.options)
        do {
            _ = try SharedMapping.publish(name: "twice", length: 2 << 20, options: sandbox.options)
            Issue.record("published a name twice")
        } catch {
            guard case .nameInUse(_, _, let pids) = error else { Issue.record("\(error)"); return }
            #expect(pids == [getpid()])
        }
        withExtendedLifetime(first) {}
    }
}
