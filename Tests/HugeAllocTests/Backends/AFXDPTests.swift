import CHugeAllocShims
import Foundation
import SystemPackage
import Testing
@testable import HugeAlloc

/// Whether this kernel lets us open AF_XDP sockets (CONFIG_XDP_SOCKETS, CAP_NET_RAW).
let canOpenAFXDP: Bool = {
    let fd = ha_xsk_socket()
    if fd >= 0 { close(fd) }
    return fd >= 0
}()

@Suite(.serialized) struct AFXDPTests {
    @Test(.enabled(if: canMakePools && canOpenAFXDP, "needs root, free 2 MiB hugepages and AF_XDP sockets"))
    func AF_XDPSocketRegistersAPacketPoolAsUMEMAndFillsItsRing() throws {
        try expectNoProcessLeak {
            let pool = try PacketPool(configuration: .afXDP(count: 4096, chunkSize: 2048))
            let socket = try AFXDPSocket(umemOf: pool, fillRingEntries: 2048, completionRingEntries: 1024)
            let layout = socket.layout
            #expect(layout.base == UInt(bitPattern: pool.mempool.baseAddress) && layout.base % 4096 == 0)
            #expect(layout.chunkSize == 2048 && layout.length == 4096 * 2048 && layout.chunkCount == 4096)
            #expect(layout.headroom == 64, "the metadata block is the UMEM headroom")
            #expect(layout.frameOffset == 64 + 256 && pool.headroom == 256)
            #expect(socket.fillRingEntries == 2048 && socket.completionRingEntries == 1024)

            // The kernel holds this UMEM: a second registration is refused as busy.
            let again = #expect(throws: SystemCallError.self) {
                try Sys.xdpRegisterUMEM(socket.fileDescriptor, base: pool.mempool.baseAddress, length: 2048 * 16,
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
            #expect(socket.fill(buffers) == 2048)
            #expect(socket.fillRingPending == 2048, "nothing is bound, so the kernel takes none")
            #expect(socket.fillRingAddresses == buffers.prefix(2048).map { layout.address(of: $0) })
            #expect(socket.fill(Array(buffers.suffix(52))) == 0, "the ring is full")
            #expect(socket.takeCompleted().isEmpty)
            _ = consume socket
            pool.free(buffers)
        }
    }

    @Test(.enabled(if: canMakePools && canOpenAFXDP, "needs root, free 2 MiB hugepages and AF_XDP sockets"))
    func AF_XDPLayoutRulesAgreeWithTheKernel() throws {
        // The kernel releases a closed socket's UMEM pages from a work queue,
        // a moment later: the leak check allows for that.
        try expectNoProcessLeak { try checkLayoutRulesAgainstTheKernel() }
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

    @Test func AF_XDPRefusesPoolsThatAreNotChunks() throws {
        #expect(throws: AFXDPError.chunkSizeNotPowerOfTwo(chunkSize: 3072)) {
            try AFXDPUMEMLayout.validate(base: 0x20_0000, length: 3072 * 4, chunkSize: 3072, headroom: 0)
        }
        #expect(throws: AFXDPError.headroomTooLarge(headroom: 1345, chunkSize: 2048)) {
            try AFXDPUMEMLayout.validate(base: 0x20_0000, length: 2048 * 4, chunkSize: 2048, headroom: 1345)
        }
        guard canMakePools else { return }
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
}
