import CHugeAllocShims
import Foundation
import HugeAllocTestSupport
import SystemPackage
import Testing
@testable import HugeAlloc

/// An Ethernet frame of an experimental EtherType (0x88B5) with `payload`
/// pattern bytes.
func experimentalFrame(payload: Int, seed: Int) -> [UInt8] {
    [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0, 0, 0, 0, 2, 0x88, 0xB5] + patternBytes(payload, seed: seed)
}

func isExperimentalFrame(_ bytes: [UInt8]) -> Bool {
    bytes.count > 14 && bytes[12] == 0x88 && bytes[13] == 0xB5
}

/// Copies `frame` into `buffer`'s data (appended after its headroom).
func write(_ frame: [UInt8], into buffer: PacketBuffer) throws {
    let start = try #require(buffer.append(frame.count))
    unsafe frame.withUnsafeBytes { unsafe start.copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
}

/// Leaves stale metadata in every free buffer of `pool` (data moved 50
/// bytes in and 650 long) and returns that data offset and length.
func leaveStaleMetadata(in pool: PacketPool) throws -> (dataOffset: Int, length: Int) {
    let all = try #require(pool.allocate(count: pool.count))
    for b in all { _ = b.append(700); _ = b.trimFront(50) }
    let stale = (all[0].dataOffset, all[0].length)
    pool.free(all)
    return stale
}

/// The error `transmitFrames` throws for `frame` alone, nil when it sends it.
func transmitRefusal(_ socket: borrowing AFXDPSocket, _ frame: AFXDPFrame) -> AFXDPError? {
    do {
        _ = try unsafe [frame].withUnsafeBufferPointer { (b) throws(AFXDPError) in unsafe try socket.transmitFrames(b) }
        return nil
    } catch { return error }
}

@Suite(.usesHugepagePool) struct AFXDPTransmitTests {
    static let gate = canMakePools && canOpenAFXDP && hasIPCommand

    @Test(.enabled(if: gate, "needs root, free 2 MiB hugepages, AF_XDP and iproute2"))
    func AF_XDPTransmitsPacketBuffersThatArriveByteForByteAtThePeer() throws {
        try expectNoLeak {
            try withVethPair { sender, receiver in
                // The peer: an AF_XDP socket on the other end, with its own pool.
                let peerPool = try PacketPool(configuration: .afXDP(count: 1024, chunkSize: 2048))
                let peer = try AFXDPSocket(umemOf: peerPool, fillRingEntries: 512, completionRingEntries: 512)
                #expect(try peer.fill(try #require(peerPool.allocate(count: 512))) == 512)
                try peer.bind(interfaceIndex: receiver, receiveRingEntries: 512, transmitRingEntries: 0, flags: .copy)
                let redirect = try XDPRedirect(interfaceIndex: receiver)
                try redirect.redirect(queue: 0, to: peer)

                // The sender: a TX-only socket bound with need-wakeup in copy mode.
                let pool = try PacketPool(configuration: .afXDP(count: 512, chunkSize: 2048))
                let socket = try AFXDPSocket(umemOf: pool, fillRingEntries: 256, completionRingEntries: 256)
                try socket.bind(interfaceIndex: sender, receiveRingEntries: 0, transmitRingEntries: 256,
                                flags: [.copy, .useNeedWakeup])
                #expect(socket.transmitRingEntries == 256 && socket.receiveRingEntries == 0)

                // 100 frames (more than one kick's budget of 32), 60 to 1514 bytes.
                let frames = (0..<100).map { i in experimentalFrame(payload: 46 + (i * 137) % 1455, seed: i) }
                let buffers = try #require(pool.allocate(count: frames.count))
                for (frame, b) in zip(frames, buffers) { try write(frame, into: b) }
                #expect(try socket.transmit(buffers) == frames.count)
                #expect(socket.kernelOwnedCount + pool.availableCount == pool.count)

                var arrived: [[UInt8]] = []
                var taken: [PacketBuffer] = []
                var completed: [PacketBuffer] = []
                let deadline = Date().addingTimeInterval(3)
                while (arrived.count < frames.count || completed.count < frames.count) && Date() < deadline {
                    try socket.kickTransmitIfNeeded()
                    completed += socket.takeCompleted()
                    for b in peer.receive() {
                        taken.append(b)
                        if isExperimentalFrame(b.contents) { arrived.append(b.contents) }
                    }
                    usleep(1000)
                }
                #expect(arrived.count == frames.count)
                #expect(arrived == frames, "every frame arrived byte for byte, in order")
                #expect(Set(completed) == Set(buffers) && completed.count == buffers.count,
                        "each transmitted buffer came back once on the completion ring")
                #expect(socket.transmitsInFlight == 0 && socket.kernelOwnedCount == 0)
                #expect(pool.availableCount == pool.count - frames.count)
                pool.free(completed)
                #expect(pool.availableCount == pool.count)

                _ = consume redirect
                _ = consume peer
                #expect(peerPool.availableCount == peerPool.count - taken.count)
                peerPool.free(taken)
                #expect(peerPool.availableCount == peerPool.count)
                _ = consume socket
                #expect(pool.availableCount == pool.count)
            }
        }
    }

    @Test(.enabled(if: gate, "needs root, free 2 MiB hugepages, AF_XDP and iproute2"))
    func AF_XDPClosingGivesEveryBufferOnItsFourRingsBackToThePool() throws {
        try expectNoLeak {
            try withVethPair { here, there in
                let pool = try PacketPool(configuration: .afXDP(count: 1024, chunkSize: 2048))
                let socket = try AFXDPSocket(umemOf: pool, fillRingEntries: 512, completionRingEntries: 512)
                #expect(try socket.fill(try #require(pool.allocate(count: 256))) == 256)
                try socket.bind(interfaceIndex: here, receiveRingEntries: 512, transmitRingEntries: 512, flags: .copy)
                let redirect = try XDPRedirect(interfaceIndex: here)
                try redirect.redirect(queue: 0, to: socket)

                // RX ring: frames sent into this end from the other.
                for i in 0..<8 {
                    let frame = experimentalFrame(payload: 100, seed: i)
                    #expect(try Sys.packetSend(interfaceIndex: there, frame: frame) == frame.count)
                }
                // Completion ring: 16 frames sent and kicked, completions not taken.
                let sent = try #require(pool.allocate(count: 16))
                for (i, b) in sent.enumerated() { try write(experimentalFrame(payload: 64, seed: 100 + i), into: b) }
                #expect(try socket.transmit(sent) == 16)
                // TX ring: 8 frames put on the ring and never kicked.
                let queued = try #require(pool.allocate(count: 8))
                for (i, b) in queued.enumerated() { try write(experimentalFrame(payload: 64, seed: 200 + i), into: b) }
                #expect(try socket.transmit(queued, kick: false) == 8)

                let deadline = Date().addingTimeInterval(2)
                while (socket.receiveRingPending < 8 || socket.completionRingPending < 16) && Date() < deadline {
                    usleep(1000)
                }
                // The user takes three received frames and keeps them.
                let held = socket.receive(maximum: 3)
                #expect(held.count == 3)
                #expect(socket.fillRingPending > 0, "fill ring")
                #expect(socket.receiveRingPending >= 5, "RX ring")
                #expect(socket.transmitRingPending == 8, "TX ring")
                #expect(socket.completionRingPending == 16, "completion ring")
                #expect(socket.transmitsInFlight == 24)
                #expect(socket.kernelOwnedCount == 256 + 24 - 3)
                #expect(pool.availableCount == pool.count - 256 - 24)

                _ = consume redirect
                _ = consume socket
                #expect(pool.availableCount == pool.count - held.count, "all but the buffers the user holds")
                pool.free(held)
                #expect(pool.availableCount == pool.count)
            }
        }
    }

    @Test(.enabled(if: gate, "needs root, free 2 MiB hugepages, AF_XDP and iproute2"))
    func AF_XDPFillFromThePoolReceivesIntoBuffersWhoseMetadataWasStale() throws {
        try expectNoLeak {
            try withVethPair { here, there in
                let pool = try PacketPool(configuration: .afXDP(count: 256, chunkSize: 2048))
                _ = try leaveStaleMetadata(in: pool)

                let socket = try AFXDPSocket(umemOf: pool, fillRingEntries: 128, completionRingEntries: 128)
                #expect(socket.fill(count: 1000) == 128, "no more than the ring has room for")
                #expect(socket.fill(count: 1) == 0, "the ring is full")
                #expect(socket.kernelOwnedCount == 128 && pool.availableCount == pool.count - 128)
                try socket.bind(interfaceIndex: here, receiveRingEntries: 128, transmitRingEntries: 0, flags: .copy)
                let redirect = try XDPRedirect(interfaceIndex: here)
                try redirect.redirect(queue: 0, to: socket)

                let frames = (0..<12).map { i in experimentalFrame(payload: 46 + i * 97, seed: 300 + i) }
                for frame in frames {
                    #expect(try Sys.packetSend(interfaceIndex: there, frame: frame) == frame.count)
                }
                var received: [PacketBuffer] = []
                var arrived: [[UInt8]] = []
                let deadline = Date().addingTimeInterval(2)
                while arrived.count < frames.count && Date() < deadline {
                    for b in socket.receive() {
                        received.append(b)
                        if isExperimentalFrame(b.contents) { arrived.append(b.contents) }
                    }
                    usleep(1000)
                }
                #expect(arrived == frames, "data offset and length come from the RX descriptor, not the stale metadata")
                for b in received {
                    #expect(pool.owns(b) && b.segmentCount == 1 && b.packetLength == b.length)
                }
                // The pool is 128 short: fill(count:) takes what it has.
                let kept = try #require(pool.allocate(count: pool.availableCount - 5))
                let refilled = socket.fill(count: received.count)
                #expect(refilled == min(5, received.count))
                #expect(socket.kernelOwnedCount == 128 - received.count + refilled)

                _ = consume redirect
                _ = consume socket
                #expect(pool.availableCount == pool.count - received.count - kept.count)
                pool.free(received)
                pool.free(kept)
                #expect(pool.availableCount == pool.count)
            }
        }
    }

    /// Frames sent as descriptors: 40 buffers written once, their metadata
    /// then emptied (``AFXDPSocket/transmit(_:kick:)-(UnsafeBufferPointer<PacketBuffer>,_)``
    /// would refuse them), sent twice over through a 16-slot TX ring, taken
    /// back with `takeCompleted(into:)` between rounds: 80 frames arrive byte
    /// for byte, and the metadata was never read or written.
    @Test(.enabled(if: gate, "needs root, free 2 MiB hugepages, AF_XDP and iproute2"))
    func AF_XDPTransmitsFramesWithoutTheirBuffersMetadata() throws {
        try expectNoLeak {
            try withVethPair { sender, receiver in
                let peerPool = try PacketPool(configuration: .afXDP(count: 512, chunkSize: 2048))
                let peer = try AFXDPSocket(umemOf: peerPool, fillRingEntries: 256, completionRingEntries: 256)
                #expect(peer.fill(count: 256) == 256)
                try peer.bind(interfaceIndex: receiver, receiveRingEntries: 256, transmitRingEntries: 0, flags: .copy)
                let redirect = try XDPRedirect(interfaceIndex: receiver)
                try redirect.redirect(queue: 0, to: peer)

                let pool = try PacketPool(configuration: .afXDP(count: 64, chunkSize: 2048))
                let socket = try AFXDPSocket(umemOf: pool, fillRingEntries: 16, completionRingEntries: 16)
                try socket.bind(interfaceIndex: sender, receiveRingEntries: 0, transmitRingEntries: 16, flags: [.copy, .useNeedWakeup])
                let contents = (0..<40).map { i in experimentalFrame(payload: 46 + (i * 211) % 1400, seed: 900 + i) }
                let buffers = try #require(pool.allocate(count: contents.count))
                var frames: [AFXDPFrame] = []
                for (frame, b) in zip(contents, buffers) {
                    try write(frame, into: b)
                    frames.append(AFXDPFrame(buffer: b, dataOffset: b.dataOffset, length: frame.count))
                    _ = b.trimFront(b.length)  // empty: transmit(_:) would refuse it
                }
                let completedTable = UnsafeMutableBufferPointer<PacketBuffer>.allocate(capacity: 64)
                defer { unsafe completedTable.deallocate() }

                var arrived: [[UInt8]] = []
                for round in 0..<2 {
                    var next = 0, completed = 0
                    let deadline = Date().addingTimeInterval(3)
                    while (next < frames.count || completed < frames.count) && Date() < deadline {
                        if next < frames.count {
                            next += try unsafe frames[next...].withUnsafeBufferPointer { unsafe try socket.transmitFrames($0) }
                        }
                        try socket.kickTransmitIfNeeded()
                        completed += unsafe socket.takeCompleted(into: completedTable)
                        for b in peer.receive() {
                            if isExperimentalFrame(b.contents) { arrived.append(b.contents) }
                            peerPool.free(b)
                        }
                        _ = peer.fill(count: 256)
                        usleep(500)
                    }
                    #expect(completed == frames.count, "round \(round): every frame came back on the completion ring")
                }
                let waitForLast = Date().addingTimeInterval(2)
                while arrived.count < 2 * contents.count && Date() < waitForLast {
                    for b in peer.receive() {
                        if isExperimentalFrame(b.contents) { arrived.append(b.contents) }
                        peerPool.free(b)
                    }
                    usleep(1000)
                }
                #expect(arrived == contents + contents, "80 frames byte for byte, in order")
                #expect(buffers.allSatisfy { $0.length == 0 }, "no buffer's metadata was written")
                #expect(socket.kernelOwnedCount == 0 && socket.transmitsInFlight == 0)

                // Refusals, each before anything goes on the ring.
                let other = try PacketPool(configuration: .afXDP(count: 64, chunkSize: 2048))
                let foreign = try #require(other.allocate())
                guard case .bufferNotInUMEM = transmitRefusal(socket, AFXDPFrame(buffer: foreign, dataOffset: 256, length: 60)) else {
                    Issue.record("another pool's buffer was sent")
                    return
                }
                other.free(foreign)
                let room = 2048 - PacketBuffer.metadataSize
                for (offset, length) in [(256, 0), (-1, 60), (room - 59, 60), (0, room + 1)] {
                    guard case .frameNotSendable = transmitRefusal(socket, AFXDPFrame(buffer: buffers[0], dataOffset: offset, length: length)) else {
                        Issue.record("offset \(offset), length \(length) was not refused")
                        continue
                    }
                }
                #expect(socket.transmitRingPending == 0)
                // The same buffer twice in one batch: the second ends it.
                let twice = [frames[0], frames[0]]
                #expect(try unsafe twice.withUnsafeBufferPointer { unsafe try socket.transmitFrames($0, kick: false) } == 1)
                #expect(socket.kernelOwnedCount == 1)

                _ = consume redirect
                _ = consume peer
                #expect(peerPool.availableCount == peerPool.count)
                _ = consume socket
                #expect(pool.availableCount == pool.count - buffers.count + 1, "the queued frame's buffer came back at close")
                pool.free(Array(buffers.dropFirst()))
                #expect(pool.availableCount == pool.count)
            }
        }
    }

    /// Frames seen in place and put straight back on a 16-slot fill ring,
    /// three times over: 36 frames through 16 buffers, none of them through
    /// the pool, their metadata never written.
    @Test(.enabled(if: gate, "needs root, free 2 MiB hugepages, AF_XDP and iproute2"))
    func AF_XDPReceivesFramesInPlaceAndRecyclesThemOntoTheFillRing() throws {
        try expectNoLeak {
            try withVethPair { here, there in
                let pool = try PacketPool(configuration: .afXDP(count: 64, chunkSize: 2048))
                let stale = try leaveStaleMetadata(in: pool)

                let socket = try AFXDPSocket(umemOf: pool, fillRingEntries: 16, completionRingEntries: 16)
                #expect(socket.fill(count: 16) == 16)
                try socket.bind(interfaceIndex: here, receiveRingEntries: 16, transmitRingEntries: 0, flags: .copy)
                let redirect = try XDPRedirect(interfaceIndex: here)
                try redirect.redirect(queue: 0, to: socket)
                let table = UnsafeMutableBufferPointer<AFXDPFrame>.allocate(capacity: 16)
                defer { unsafe table.deallocate() }

                var seen = Set<UnsafeMutableRawPointer>()
                var adopted: PacketBuffer?
                for round in 0..<3 {
                    let frames = (0..<12).map { i in experimentalFrame(payload: 46 + i * 113, seed: 700 + round * 12 + i) }
                    for frame in frames { #expect(try Sys.packetSend(interfaceIndex: there, frame: frame) == frame.count) }
                    var arrived: [[UInt8]] = []
                    let deadline = Date().addingTimeInterval(2)
                    while arrived.count < frames.count && Date() < deadline {
                        let n = unsafe socket.receiveFrames(into: table)
                        for i in 0..<n {
                            let f = unsafe table[i]
                            let bytes = unsafe [UInt8](UnsafeRawBufferPointer(start: f.data, count: f.length))
                            #expect(pool.owns(f.buffer) && f.length > 0 && f.dataOffset + f.length <= f.buffer.bufferLength)
                            seen.insert(unsafe f.buffer.metadata)
                            if isExperimentalFrame(bytes) {
                                arrived.append(bytes)
                                if adopted == nil {
                                    // One frame kept as a packet buffer: adopt() writes what receive(into:) would.
                                    let b = f.adopt()
                                    #expect(b.contents == bytes && b.packetLength == f.length && b.segmentCount == 1)
                                    adopted = b
                                    continue
                                }
                                #expect(f.buffer.dataOffset == stale.0 && f.buffer.length == stale.1,
                                        "the buffer's metadata was not touched")
                            }
                            #expect(unsafe socket.recycle(UnsafeBufferPointer(start: table.baseAddress! + i, count: 1)) == 1)
                        }
                        usleep(1000)
                    }
                    #expect(arrived == frames, "round \(round): every frame byte for byte")
                    #expect(socket.kernelOwnedCount == 15, "every frame but the adopted one went back on the fill ring")
                    #expect(pool.availableCount == pool.count - 16, "no buffer went through the pool")
                }
                #expect(seen.count <= 16, "36 frames arrived in the 16 buffers that circulate")
                // A buffer the kernel holds, or another pool's, is not put on the ring again.
                let held = AFXDPFrame(buffer: try #require(adopted), dataOffset: 0, length: 1)
                #expect(unsafe [held].withUnsafeBufferPointer { unsafe socket.recycle($0) } == 1)
                #expect(unsafe [held].withUnsafeBufferPointer { unsafe socket.recycle($0) } == 0, "already on the fill ring")
                let other = try PacketPool(configuration: .afXDP(count: 64, chunkSize: 2048))
                let foreign = try #require(other.allocate())
                let stranger = AFXDPFrame(buffer: foreign, dataOffset: 0, length: 1)
                #expect(unsafe [stranger].withUnsafeBufferPointer { unsafe socket.recycle($0) } == 0, "another pool's buffer")
                other.free(foreign)

                _ = consume redirect
                _ = consume socket
                #expect(pool.availableCount == pool.count, "closing gave back every buffer on the fill and RX rings")
            }
        }
    }

    @Test(.enabled(if: canMakePools && canOpenAFXDP, "needs root, free 2 MiB hugepages and AF_XDP sockets"))
    func AF_XDPRefusesBuffersItCannotSendOrAlreadyHolds() throws {
        let pool = try PacketPool(configuration: .afXDP(count: 256, chunkSize: 2048))
        let other = try PacketPool(configuration: .afXDP(count: 64, chunkSize: 2048))
        let socket = try AFXDPSocket(umemOf: pool, fillRingEntries: 64, completionRingEntries: 64)
        let b = try #require(pool.allocate())
        #expect(throws: AFXDPError.noTransmitRing) { try socket.transmit([b]) }
        #expect(throws: AFXDPError.noReceiveOrTransmitRing) {
            try socket.bind(interfaceIndex: 1, receiveRingEntries: 0, transmitRingEntries: 0)
        }
        #expect(throws: AFXDPError.ringSizeNotPowerOfTwo(entries: 100)) {
            try socket.bind(interfaceIndex: 1, receiveRingEntries: 0, transmitRingEntries: 100)
        }
        try socket.bind(interfaceIndex: 1, receiveRingEntries: 0, transmitRingEntries: 64)  // loopback

        #expect(throws: AFXDPError.frameNotSendable(index: b.index, dataOffset: 256, length: 0, room: 1984, segments: 1)) {
            try socket.transmit([b])
        }
        let foreign = try #require(other.allocate())
        #expect(throws: AFXDPError.bufferNotInUMEM(address: UInt(bitPattern: foreign.metadata), base: socket.layout.base,
                                                   length: socket.layout.length)) {
            try socket.fill([foreign])
        }
        // Filled once: a second fill or a transmit of it is refused, the first stays.
        #expect(try socket.fill([b]) == 1)
        #expect(throws: AFXDPError.bufferAlreadyWithKernel(index: b.index)) { try socket.fill([b]) }
        _ = b.append(60)
        #expect(throws: AFXDPError.bufferAlreadyWithKernel(index: b.index)) { try socket.transmit([b]) }
        // A bad buffer after good ones ends the batch there.
        let good = try #require(pool.allocate(count: 2))
        #expect(try socket.fill(good + [foreign]) == 2)
        #expect(socket.kernelOwnedCount == 3 && socket.fillRingPending == 3)
        let message = AFXDPError.bufferAlreadyWithKernel(index: 7).description
        #expect(message.contains("already the kernel's") && message.contains("takeCompleted"))
        _ = consume socket
        #expect(pool.availableCount == pool.count)
        other.free(foreign)
    }
}
