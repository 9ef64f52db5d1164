import Foundation
import SystemPackage
import HugeAllocTestSupport
import Testing
import CHugeAllocShims
@testable import HugeAlloc

/// O_DIRECT into AF_XDP packet buffers: a misaligned fixed read is a typed
/// error naming what is misaligned, and the AF_XDP + O_DIRECT preset
/// satisfies both (hostile-inputs #15).
@Suite(.usesHugepagePool, .serialized) struct IOUringDirectIOTests {
    @Test(.enabled(if: canMakePools && directIODirectory() != nil, "needs root, free 2 MiB hugepages and an O_DIRECT-capable directory"))
    func misalignedDirectIOIsATypedErrorAndThePresetWorks() throws {
        let contents = patternBytes(8 * 4096, seed: 7)
        try withTemporaryFile(in: directIODirectory()!, contents: contents) { path in
            let file = try FileDescriptor.open(path, .readOnly, options: [.init(rawValue: HA_O_DIRECT)])
            defer { try? file.close() }
            let alignment = try #require(try Sys.directIOAlignment(file))
            #expect(alignment.memory > 0 && alignment.offset > 0)

            // The plain AF_XDP layout: data 320 bytes into the chunk.
            let plain = try PacketPool(configuration: .afXDP(count: 256, chunkSize: 2048, cacheSize: 0))
            var ring = try IOUring(entries: 8)
            try ring.registerBuffers(of: plain)
            let b = try #require(plain.allocate())
            if UInt(bitPattern: b.data) % UInt(alignment.memory) != 0 {
                do {
                    try ring.queueReadFixed(file, into: b, length: alignment.offset, fileOffset: 0, userData: 1)
                    Issue.record("a misaligned O_DIRECT read was queued")
                } catch let error as IOUringError {
                    guard case .directIOMisaligned("buffer address", _, let required, 320) = error, required == alignment.memory else {
                        Issue.record("\(error)"); return
                    }
                    #expect(error.description.contains("afXDP(count:chunkSize:directIOAlignment: \(alignment.memory))"))
                }
            }
            plain.free(b)
            try ring.unregisterBuffers()

            // The preset for both: the data lands on the alignment, and so does the frame AF_XDP writes.
            let preset = try #require(PacketPoolConfiguration.afXDP(count: 256, chunkSize: 2048, cacheSize: 0,
                                                                     directIOAlignment: max(alignment.memory, 512)))
            let pool = try PacketPool(configuration: preset)
            let umem = try AFXDPUMEMLayout(pool: pool)
            #expect(umem.frameOffset % max(alignment.memory, 512) == 0)
            try ring.registerBuffers(of: pool)
            let blocks = 2
            let size = 512 * (max(alignment.offset, 512) / 512)
            let buffers = try #require(pool.allocate(count: blocks))
            for (i, buffer) in buffers.enumerated() {
                #expect(UInt(bitPattern: buffer.data) % UInt(alignment.memory) == 0)
                try ring.queueReadFixed(file, into: buffer, length: size, fileOffset: i * size, userData: UInt64(i))
            }
            // A length or an offset off the alignment is refused too.
            #expect(throws: IOUringError.directIOMisaligned(what: "length", value: size + 1, alignment: alignment.offset,
                                                            bufferOffset: 512)) {
                try ring.queueReadFixed(file, into: buffers[0], length: size + 1, fileOffset: 0, userData: 9)
            }
            #expect(throws: IOUringError.directIOMisaligned(what: "file offset", value: 100, alignment: alignment.offset,
                                                            bufferOffset: 512)) {
                try ring.queueReadFixed(file, into: buffers[0], length: size, fileOffset: 100, userData: 9)
            }
            for completion in try ring.completions(blocks) {
                #expect(completion.result == Int32(size), "O_DIRECT read result \(completion.result)")
                let i = Int(completion.userData)
                let read = Array(UnsafeRawBufferPointer(start: buffers[i].data, count: size))
                #expect(read == Array(contents[(i * size)..<((i + 1) * size)]))
            }
            pool.free(buffers)
            try ring.unregisterBuffers()
        }
    }

    @Test func presetRefusesWhatCannotFit() {
        #expect(PacketPoolConfiguration.afXDP(count: 1, chunkSize: 2048, directIOAlignment: 4096) == nil)
        #expect(PacketPoolConfiguration.afXDP(count: 1, chunkSize: 2048, directIOAlignment: 3) == nil)
        let c = PacketPoolConfiguration.afXDP(count: 1, chunkSize: 2048, directIOAlignment: 512)
        #expect(c?.headroom == 448 && c?.dataRoom == 1536 && c?.alignment == 2048)
    }
}
