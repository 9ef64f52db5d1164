import CHugeAllocShims
import Foundation
import HugeAllocTestSupport
import SystemPackage
import Synchronization
import Testing
@testable import HugeAlloc

/// Whether this kernel lets us open AF_XDP sockets (CONFIG_XDP_SOCKETS, CAP_NET_RAW).
let canOpenAFXDP: Bool = {
    let fd = ha_xsk_socket()
    if fd >= 0 { close(fd) }
    return fd >= 0
}()

/// Runs `ip` with `arguments`; true when it exits 0.
@discardableResult
func runIP(_ arguments: [String]) -> Bool {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
    process.arguments = arguments
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return false }
    process.waitUntilExit()
    return process.terminationStatus == 0
}

let vethPairsMade = Atomic<Int>(0)

/// A veth pair that exists for `body`'s duration: (sender, receiver) interface indexes.
func withVethPair(_ body: (UInt32, UInt32) throws -> Void) throws {
    // Unique per call, so tests running in parallel get their own pairs (15-byte names).
    let n = vethPairsMade.add(1, ordering: .relaxed).newValue % 100
    let a = "hax\(getpid() % 100_000)\(n)a", b = "hax\(getpid() % 100_000)\(n)b"
    runIP(["link", "del", a])
    try #require(runIP(["link", "add", a, "type", "veth", "peer", "name", b]), "ip link add \(a) type veth peer name \(b)")
    defer { runIP(["link", "del", a]) }
    try #require(runIP(["link", "set", a, "up"]) && runIP(["link", "set", b, "up"]))
    // The kernel finishes bringing a link up (carrier, queueing) from a work
    // queue; a frame sent before that is dropped. Wait until both say so.
    let deadline = Date().addingTimeInterval(5)
    func operational(_ name: String) -> Bool {
        (try? Kernel.text("/sys/class/net/\(name)/operstate")) == "up\n"
    }
    while !(operational(a) && operational(b)) && Date() < deadline { usleep(1_000) }
    try #require(operational(a) && operational(b), "veth pair \(a)/\(b) not up after 5 s")
    let sender = if_nametoindex(a), receiver = if_nametoindex(b)
    try #require(sender != 0 && receiver != 0)
    try body(sender, receiver)
}

let hasIPCommand = FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip")

@Suite(.usesHugepagePool) struct AFXDPTests {
    @Test(.enabled(if: canMakePools && canOpenAFXDP, "needs root, free 2 MiB hugepages and AF_XDP sockets"))
    func AF_XDPSocketRegistersAPacketPoolAsUMEMAndFillsItsRing() throws {
        try expectNoLeak {
            let pool = try PacketPool(configuration: .afXDP(count: 4096, chunkSize: 2048))
            let socket = try AFXDPSocket(umemOf: pool, fillRingEntries: 2048, completionRingEntries: 1024)
            let layout = socket.layout
            #expect(layout.base == UInt(bitPattern: pool.mempool.base) && layout.base % 4096 == 0)
            #expect(layout.chunkSize == 2048 && layout.length == 4096 * 2048 && layout.chunkCount == 4096)
            #expect(layout.headroom == 64, "the metadata block is the UMEM headroom")
            #expect(layout.frameOffset == 64 + 256 && pool.headroom == 256)
            #expect(socket.fillRingEntries == 2048 && socket.completionRingEntries == 1024)

            // The kernel holds this UMEM: a second registration is refused as busy.
            let again = #expect(throws: SystemCallError.self) {
                try Sys.xdpRegisterUMEM(socket.fileDescriptor, base: pool.mempool.base, length: 2048 * 16,
                                        chunkSize: 2048, headroom: 0, flags: 0)
            }
            #expect(again?.errno == .resourceBusy)

            // Buffer index <-> UMEM address.
            for i in [0, 1, 2047, 4095] {
                let b = try #require(pool.buffer(at: i))
                #expect(layout.address(of: b) == UInt64(i * 2048))
                #expect(layout.address(ofBufferIndex: i) == UInt64(i * 2048))
                #expect(layout.bufferIndex(ofAddress: UInt64(i * 2048 + 64 + 256 + 17)) == i)
                #expect(layout.buffer(atAddress: UInt64(i * 2048 + 700)) == b)
                #expect(UInt(bitPattern: b.data) - layout.base == UInt(i * 2048 + layout.frameOffset),
                        "the kernel writes frames where the buffer's data starts")
            }
            #expect(layout.bufferIndex(ofAddress: UInt64(4096 * 2048)) == nil)

            // Allocated buffers go onto the fill ring, up to its size.
            let buffers = try #require(pool.allocate(count: 2100))
            #expect(try socket.fill(buffers) == 2048)
            #expect(socket.fillRingPending == 2048, "nothing is bound, so the kernel takes none")
            #expect(socket.fillRingAddresses == buffers.prefix(2048).map { layout.address(of: $0) })
            #expect(try socket.fill(Array(buffers.suffix(52))) == 0, "the ring is full")
            #expect(socket.takeCompleted().isEmpty)
            #expect(socket.kernelOwnedCount == 2048)
            #expect(pool.availableCount == 4096 - 2100)
            // Closing gives the 2048 on the fill ring back; the 52 left are ours.
            _ = consume socket
            #expect(pool.availableCount == 4096 - 52)
            pool.free(Array(buffers.suffix(52)))
            #expect(pool.availableCount == 4096)
        }
    }

    @Test(.enabled(if: canMakePools && canOpenAFXDP, "needs root, free 2 MiB hugepages and AF_XDP sockets"))
    func AF_XDPLayoutRulesAgreeWithTheKernel() throws {
        // The kernel releases a closed socket's UMEM pages from a work queue,
        // a moment later: the leak check allows for that.
        try expectNoLeak { try checkLayoutRulesAgainstTheKernel() }
    }

    func checkLayoutRulesAgainstTheKernel() throws {
        let mapping = try MemoryMapping(length: 2 << 20, options: MappingOptions(pageSize: .huge2M))
        let base = UInt(bitPattern: mapping.base)
        // (chunk size, headroom, length, offset of the base)
        let cases: [(Int, Int, Int, Int)] = [
            (2048, 0, 2048 * 16, 0), (4096, 64, 4096 * 16, 0), (2048, 1344, 2048 * 4, 0), (2048, 1345, 2048 * 4, 0),
            (4096, 3392, 4096 * 4, 0), (4096, 3393, 4096 * 4, 0), (2048, 2048 - 257, 2048 * 4, 0),
            (2048, 2048 - 256, 2048 * 4, 0), (4096, 4096 - 256, 4096 * 4, 0),
            (3072, 0, 3072 * 8, 0), (1024, 0, 1024 * 16, 0), (8192, 0, 8192 * 16, 0),
            (2048, 0, 2048 * 16, 64), (2048, 0, 2048 * 16 + 100, 0), (2048, 0, 0, 0), (2048, 0, 2048, 4096),
        ]
        for (chunk, headroom, length, offset) in cases {
            let ours: AFXDPError?
            do {
                try AFXDPUMEMLayout.validate(base: base + UInt(offset), length: length, chunkSize: chunk, headroom: headroom)
                ours = nil
            } catch { ours = error }
            let fd = try Sys.xdpSocket()
            defer { Sys.close(fd) }
            let kernel: SystemCallError?
            do {
                try Sys.xdpRegisterUMEM(
                    fd, base: mapping.base + offset, length: length, chunkSize: chunk, headroom: headroom, flags: 0)
                kernel = nil
            } catch { kernel = error }
            #expect((ours == nil) == (kernel == nil),
                    "chunk \(chunk) headroom \(headroom) length \(length) offset \(offset): ours \(String(describing: ours)), kernel \(String(describing: kernel))")
            if let kernel { #expect(kernel.errno == .invalidArgument) }
        }
    }

    @Test func AF_XDPRefusesLayoutsBreakingTheRules() throws {
        #expect(throws: AFXDPError.chunkSizeNotPowerOfTwo(chunkSize: 3072)) {
            try AFXDPUMEMLayout.validate(base: 0x20_0000, length: 3072 * 4, chunkSize: 3072, headroom: 0)
        }
        #expect(throws: AFXDPError.headroomTooLarge(headroom: 1345, chunkSize: 2048)) {
            try AFXDPUMEMLayout.validate(base: 0x20_0000, length: 2048 * 4, chunkSize: 2048, headroom: 1345)
        }
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func AF_XDPRefusesPoolsThatAreNotChunks() throws {
        let plain = try makePacketPool(count: 64)
        #expect(throws: AFXDPError.packetHeadroomTooSmall(headroom: 128, minimum: 256)) {
            _ = try AFXDPUMEMLayout(pool: plain)
        }
        let padded = try makePacketPool(count: 64, headroom: 256, dataRoom: 1700)
        #expect(throws: AFXDPError.bufferNotChunk(bufferStride: 2048, bufferSize: 2020, chunkSize: 2048)) {
            _ = try AFXDPUMEMLayout(pool: padded)
        }
        // 64 + 256 + 1728 bytes at a 64-byte alignment happen to tile 2048-byte chunks.
        let exact = try makePacketPool(count: 64, headroom: 256, dataRoom: 1728)
        #expect(try AFXDPUMEMLayout(pool: exact).chunkSize == 2048)
        #expect(throws: AFXDPError.ringSizeNotPowerOfTwo(entries: 1000)) {
            _ = try AFXDPSocket(umemOf: exact, fillRingEntries: 1000)
        }
    }

    @Test(.enabled(if: canMakePools && canOpenAFXDP && hasIPCommand, "needs root, free 2 MiB hugepages, AF_XDP and iproute2"))
    func AF_XDPReceivesFramesSentOverAVethPairIntoPacketBuffers() throws {
        try expectNoLeak {
            try withVethPair { sender, receiver in
                let pool = try PacketPool(configuration: .afXDP(count: 2048, chunkSize: 2048))
                let socket = try AFXDPSocket(umemOf: pool, fillRingEntries: 1024, completionRingEntries: 1024)
                let filled = try #require(pool.allocate(count: 1024))
                #expect(try socket.fill(filled) == 1024)
                try socket.bind(interfaceIndex: receiver, queue: 0, flags: .copy)
                let redirect = try XDPRedirect(interfaceIndex: receiver)
                try redirect.redirect(queue: 0, to: socket)

                // Eight frames of an experimental EtherType, each a different length.
                let frames = (0..<8).map { i -> [UInt8] in
                    [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0, 0, 0, 0, 1, 0x88, 0xB5]
                        + patternBytes(100 + i * 50, seed: i)
                }
                for frame in frames { #expect(try Sys.packetSend(interfaceIndex: sender, frame: frame) == frame.count) }

                var received: [PacketBuffer] = []
                var taken: [PacketBuffer] = []
                let deadline = Date().addingTimeInterval(2)
                while received.count < frames.count && Date() < deadline {
                    for b in socket.receive() {
                        taken.append(b)
                        let bytes = b.contents
                        // Other traffic (IPv6 neighbour discovery) lands too; all buffers are freed below.
                        if bytes.count > 14 && bytes[12] == 0x88 && bytes[13] == 0xB5 { received.append(b) }
                    }
                    usleep(1000)
                }
                #expect(received.count == frames.count)
                let filledSet = Set(filled)
                for b in received {
                    #expect(frames.contains(b.contents), "a frame arrived byte for byte")
                    #expect(filledSet.contains(b), "into a buffer from the fill ring")
                    #expect(b.data == b.metadata + 64 + 256, "where the buffer's data starts")
                    #expect(b.length == b.packetLength && b.segmentCount == 1)
                    #expect(b.dataPhysicalAddress?.rawValue == Kernel.physicalAddress(UInt(bitPattern: b.data)))
                }
                #expect(socket.fillRingPending <= 1024 - frames.count)
                #expect(socket.kernelOwnedCount == 1024 - taken.count)
                _ = consume redirect
                _ = consume socket
                #expect(pool.availableCount == 2048 - taken.count, "closing gave back what the kernel held")
                pool.free(taken)
                #expect(pool.availableCount == 2048)
            }
        }
    }
}
