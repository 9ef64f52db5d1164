import Foundation
import SystemPackage
import Testing
import CHugeAllocShims
import HugeAllocTestSupport
@testable import HugeAlloc

/// A directory on a file system that accepts O_DIRECT (tmpfs before Linux
/// 6.6 refuses it): the first candidate where a file opens with O_DIRECT.
func directIODirectory() -> String? {
    let candidates = [NSTemporaryDirectory(), "/var/tmp", FileManager.default.currentDirectoryPath]
    for dir in candidates {
        let path = dir + "/hugealloc-odirect-probe-\(getpid())"
        let fd = open(path, O_CREAT | O_RDWR | HA_O_DIRECT, 0o600)
        unlink(path)
        if fd >= 0 { close(fd); return dir }
    }
    return nil
}

/// A file of `bytes` in `directory`, removed by `body`'s end.
func withTemporaryFile<T>(in directory: String, contents bytes: [UInt8], _ body: (String) throws -> T) throws -> T {
    let path = directory + "/hugealloc-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    defer { unlink(path) }
    return try body(path)
}

func patternBytes(_ count: Int, seed: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 2654435761 &+ seed &* 40503) >> 7) }
}

@Suite(.usesHugepagePool) struct IOUringTests {
    @Test(.enabled(if: canMakePools && directIODirectory() != nil, "needs root, free 2 MiB hugepages and an O_DIRECT-capable directory"))
    func io_uringReadFixedFillsPacketBuffersFromAnODirectFile() throws {
        try expectNoLeak {
            // 4 KiB-aligned data starts, as O_DIRECT wants: 64 bytes of
            // metadata + 4032 bytes of headroom put the data 4096 bytes in.
            let pool = try PacketPool(configuration: PacketPoolConfiguration(
                count: 64, headroom: 4096 - 64, dataRoom: 4096, alignment: 4096, cacheSize: 0))
            let blocks = 16
            let contents = patternBytes(blocks * 4096, seed: 1)
            try withTemporaryFile(in: directIODirectory()!, contents: contents) { path in
                let file = try FileDescriptor.open(path, .readOnly, options: [.init(rawValue: HA_O_DIRECT)])
                defer { try? file.close() }
                var ring = try IOUring(entries: 32)
                let pinnedBefore = processPinnedBytes()
                try ring.registerBuffers(of: pool)
                // The kernel's count of pages io_uring pinned for us: the
                // pool's memory lies in one 2 MiB hugepage, counted whole.
                #expect(processPinnedBytes() - pinnedBefore == 2 << 20)
                let registered = ring.fixedBuffers
                let plan = try #require(registered)
                #expect(plan.regions.count == 1, "a pool under 1 GiB is one region")
                #expect(plan.regions[0].bufferCount == 64)

                let buffers = try #require(pool.allocate(count: blocks))
                for b in buffers {
                    #expect(UInt(bitPattern: b.data) % 4096 == 0)
                    b.data.initializeMemory(as: UInt8.self, repeating: 0xAA, count: 4096)
                }
                for (i, b) in buffers.enumerated() {
                    try ring.queueReadFixed(file, into: b, length: 4096, fileOffset: i * 4096, userData: UInt64(i))
                }
                let done = try ring.completions(blocks)
                #expect(Set(done.map(\.userData)) == Set((0..<blocks).map(UInt64.init)))
                for c in done {
                    #expect(c.result == 4096, "READ_FIXED of block \(c.userData): \(c.result)")
                    let b = buffers[Int(c.userData)]
                    b.length = Int(c.result)
                    let block = Int(c.userData)
                    #expect(Array(b.bytes) == Array(contents[block * 4096 ..< (block + 1) * 4096]))
                }

                // The kernel holds reads to the registered memory: a buffer of
                // another pool named as region 0 is refused with EFAULT.
                let other = try makePacketPool(count: 8)
                let stranger = try #require(other.allocate())
                #expect(Sys.uringQueue(
                    ring.ring, opcode: HA_IORING_OP_READ_FIXED, fd: file.rawValue, address: stranger.data, length: 4096,
                    offset: 0, buffer: 0, flags: 0, userData: 99))
                let refused = try ring.completions(1)
                #expect(refused[0].userData == 99 && refused[0].result == -EFAULT)
                #expect(throws: IOUringError.bufferNotRegistered(address: UInt(bitPattern: stranger.data))) {
                    try ring.queueReadFixed(file, into: stranger, length: 100, fileOffset: 0, userData: 0)
                }
                #expect(throws: IOUringError.lengthExceedsBuffer(length: 4097, room: 4096)) {
                    try ring.queueReadFixed(file, into: buffers[0], length: 4097, fileOffset: 0, userData: 0)
                }
                other.free(stranger)
                try ring.unregisterBuffers()
                #expect(processPinnedBytes() == pinnedBefore, "unregistering unpins")
                pool.free(buffers)
            }
        }
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func io_uringRegionsSplitAtTheLimitAndEachServesItsBuffers() throws {
        try expectNoLeak {
            let pool = try makePacketPool(count: 3000, cacheSize: 0)
            let limit = 1 << 20
            let plan = try IOUringFixedBuffers(pool: pool, maximumRegionLength: limit)
            #expect(plan.regions.count >= 6)
            var next = 0
            for r in plan.regions {
                #expect(r.length <= limit && r.length >= pool.bufferSize)
                #expect(r.firstBufferIndex == next, "regions hold consecutive buffers, each once")
                let first = try #require(pool.buffer(at: r.firstBufferIndex))
                let last = try #require(pool.buffer(at: r.firstBufferIndex + r.bufferCount - 1))
                #expect(UInt(bitPattern: first.metadata) == r.address)
                #expect(UInt(bitPattern: last.metadata) + UInt(pool.bufferSize) == r.address + UInt(r.length))
                next += r.bufferCount
            }
            #expect(next == 3000)

            let contents = patternBytes(3 * 1500, seed: 2)
            try withTemporaryFile(in: NSTemporaryDirectory(), contents: contents) { path in
                let file = try FileDescriptor.open(path, .readWrite)
                defer { try? file.close() }
                var ring = try IOUring(entries: 8)
                try ring.registerBuffers(of: pool, maximumRegionLength: limit)
                let chosen = [0, 1700, 2999].map { pool.buffer(at: $0)! }
                #expect(Set(chosen.map { plan.regionIndex(of: $0)! }).count == 3, "three different regions")
                for (i, b) in chosen.enumerated() {
                    try ring.queueReadFixed(file, into: b, length: 1500, fileOffset: i * 1500, userData: UInt64(i))
                }
                for c in try ring.completions(3) {
                    #expect(c.result == 1500)
                    let b = chosen[Int(c.userData)]
                    b.length = 1500
                    #expect(Array(b.bytes) == Array(contents[Int(c.userData) * 1500 ..< Int(c.userData + 1) * 1500]))
                }
                // WRITE_FIXED the last buffer's bytes back at the file's end.
                try ring.queueWriteFixed(file, from: chosen[2], fileOffset: contents.count, userData: 7)
                let written = try ring.completions(1)
                #expect(written[0].result == 1500)
                let after = try Array(Data(contentsOf: URL(fileURLWithPath: path)))
                #expect(Array(after[contents.count...]) == Array(contents[3000..<4500]))
            }
        }
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func io_uringLimitsAreTypedErrors() throws {
        try expectNoLeak {
            let pool = try makePacketPool(count: 16385, cacheSize: 0)
            #expect(throws: IOUringError.regionTooLarge(bytes: 2240, maximum: 2048)) {
                _ = try IOUringFixedBuffers(pool: pool, maximumRegionLength: 2048)
            }
            #expect(throws: IOUringError.tooManyRegions(needed: 16385, maximum: 16384)) {
                _ = try IOUringFixedBuffers(pool: pool, maximumRegionLength: 2240)
            }
            var ring = try IOUring(entries: 4)
            try ring.registerBuffers(of: pool)
            #expect(throws: IOUringError.alreadyRegistered) { try ring.registerBuffers(of: pool) }
            // A clone in the registered pool whose data lies in an unregistered one is refused.
            let other = try makePacketPool(count: 8)
            let outside = try #require(other.allocate())
            let clone = try #require(pool.clone(outside))
            #expect(throws: IOUringError.bufferNotRegistered(address: UInt(bitPattern: outside.data))) {
                try ring.queueReadFixed(FileDescriptor(rawValue: 0), into: clone, length: 10, fileOffset: 0, userData: 0)
            }
            pool.free(clone)
            other.free(outside)
            #expect(other.availableCount == 8)
            #expect(throws: IOUringError.invalidRingEntries(requested: 3)) {
                try ring.registerProvidedBuffers([], from: pool, group: 1, entries: 3)
            }
            #expect(IOUringError.tooManyRegions(needed: 16385, maximum: 16384).description.contains("IORING_MAX_REG_BUFFERS"))
        }
    }

    @Test func io_uringMemlockShortageSaysHowToFixIt() throws {
        #expect(MemlockCheck.shortage(needed: 4 << 20, alreadyLocked: 0, limit: 8 << 20, hasIPCLock: false) == nil)
        #expect(MemlockCheck.shortage(needed: 4 << 20, alreadyLocked: 0, limit: 1 << 20, hasIPCLock: true) == nil)
        #expect(MemlockCheck.shortage(needed: 4 << 20, alreadyLocked: 0, limit: nil, hasIPCLock: false) == nil)
        let shortage = try #require(MemlockCheck.shortage(needed: 4 << 20, alreadyLocked: 1 << 20, limit: 2 << 20, hasIPCLock: false))
        let error = IOUringError.memlockLimitTooLow(shortage)
        let (needed, limit, fix) = (shortage.needed, shortage.limit, shortage.fix)
        #expect(needed == 4 << 20 && limit == 2 << 20)
        #expect(fix.contains("ulimit -l 5120") && fix.contains("CAP_IPC_LOCK"))
        #expect(error.description.contains("RLIMIT_MEMLOCK"))
    }

    @Test(.enabled(if: canMakePools, "needs root and free 2 MiB hugepages"))
    func io_uringProvidedBufferRingHandsPacketBuffersToReads() throws {
        try expectNoLeak {
            let pool = try makePacketPool(count: 64, cacheSize: 0)
            let contents = patternBytes(9 * 1000, seed: 3)
            try withTemporaryFile(in: NSTemporaryDirectory(), contents: contents) { path in
                let file = try FileDescriptor.open(path, .readOnly)
                defer { try? file.close() }
                var ring = try IOUring(entries: 16)
                let provided = try #require(pool.allocate(count: 8))
                try ring.registerProvidedBuffers(provided, from: pool, group: 7, entries: 8)
                for i in 0..<8 { try ring.queueRead(file, group: 7, length: 1000, fileOffset: i * 1000, userData: UInt64(i)) }
                var used: [PacketBuffer] = []
                for c in try ring.completions(8) {
                    #expect(c.result == 1000)
                    let picked = ring.providedBuffer(for: c, group: 7)
                    let b = try #require(picked)
                    #expect(provided.contains(b), "the kernel picked one of the provided buffers")
                    #expect(b.length == 1000)
                    let i = Int(c.userData)
                    #expect(Array(b.bytes) == Array(contents[i * 1000 ..< (i + 1) * 1000]))
                    used.append(b)
                }
                #expect(Set(used).count == 8, "each buffer used once")

                // The ring is empty now: the next read finds no buffer.
                try ring.queueRead(file, group: 7, length: 1000, fileOffset: 8000, userData: 8)
                let starved = try ring.completions(1)
                #expect(starved[0].result == -ENOBUFS && starved[0].bufferID == nil)
                // Give one back and the read goes through.
                try ring.provide([used[3]], group: 7)
                try ring.queueRead(file, group: 7, length: 1000, fileOffset: 8000, userData: 8)
                let fed = try ring.completions(1)
                #expect(fed[0].result == 1000 && fed[0].bufferID == UInt16(used[3].index))
                #expect(Array(used[3].bytes) == Array(contents[8000..<9000]))
                pool.free(provided)
            }
        }
    }
}
