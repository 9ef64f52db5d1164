import HugeAlloc

/// Where should a packet buffer's metadata live? Measures the two designs on
/// the same mempool of 2048-byte chunks, one thread:
///
/// - inline (DPDK mbuf): 64 bytes at the start of each chunk; the handle is
///   the chunk's address.
/// - separate (ixy, AF_XDP): a dense array of 32-byte records indexed by
///   chunk number (offset >> 11); the handle is the index.
///
/// Per packet both do what a receive loop does: take a buffer, reset its
/// metadata, read the first 64 bytes of data (the headers), set a length,
/// and free it. Two working sets: "hot" (a per-thread cache of 512 keeps 32
/// buffers cycling in L1) and "cold" (no cache, a FIFO ring over 65536
/// chunks = 128 MiB, so every buffer comes from memory). The two designs
/// run alternately, five times each for `seconds` / 5, and the best run of
/// each is reported (the machine may be shared).
enum MetadataLayoutExperiment {
    static func run(seconds: Double) throws {
        for (name, count, cache) in [("hot", 16384, 512), ("cold", 65536, 0)] {
            let pool = try Mempool(configuration: MempoolConfiguration(
                count: count, objectSize: 2048, alignment: 2048, cacheSize: cache))
            let base = pool.base
            let records = UnsafeMutableRawPointer.allocate(byteCount: (pool.length >> 11) * 32, alignment: 64)
            records.initializeMemory(as: UInt8.self, repeating: 0, count: (pool.length >> 11) * 32)
            defer { records.deallocate() }
            let table = UnsafeMutablePointer<UnsafeMutableRawPointer>.allocate(capacity: 32)
            let indices = UnsafeMutablePointer<UInt32>.allocate(capacity: 32)
            defer { table.deallocate(); indices.deallocate() }

            func measure(_ body: () -> UInt64) -> Double {
                var sink: UInt64 = 0
                for _ in 0..<64 { sink &+= body() }  // warm up
                let start = Bench.now()
                var rounds = 0
                repeat {
                    for _ in 0..<1024 { sink &+= body() }
                    rounds += 1024
                } while Bench.now() - start < seconds / 5
                let elapsed = Bench.now() - start
                if sink == 42 { print("") }
                return Double(rounds * 32) / elapsed
            }
            var inline = 0.0, separate = 0.0
            for _ in 0..<5 {
                inline = max(inline, measure { inlineRound(pool, table) })
                separate = max(separate, measure { separateRound(pool, table, indices, base, records) })
            }
            print("layout=\(name) buffers=\(count) inline_persec=\(Int(inline)) separate_persec=\(Int(separate)) "
                + "inline/separate=\((inline / separate * 100).rounded() / 100)")
        }
    }

    @inline(never)
    static func inlineRound(_ pool: Mempool, _ table: UnsafeMutablePointer<UnsafeMutableRawPointer>) -> UInt64 {
        guard pool.get(into: table, count: 32) else { fatalError("empty") }
        var sum: UInt64 = 0
        for i in 0..<32 {
            let m = table[i]
            m.storeBytes(of: 0, toByteOffset: 16, as: UInt64.self)
            m.storeBytes(of: 128 | (1 << 32), toByteOffset: 24, as: UInt64.self)
            m.storeBytes(of: 0, toByteOffset: 32, as: UInt32.self)
            let data = m + 64 + 128
            for w in 0..<8 { sum &+= data.load(fromByteOffset: w * 8, as: UInt64.self) }
            m.storeBytes(of: 64, toByteOffset: 26, as: UInt16.self)
            m.storeBytes(of: 64, toByteOffset: 32, as: UInt32.self)
        }
        pool.put(from: table, count: 32)
        return sum
    }

    @inline(never)
    static func separateRound(
        _ pool: Mempool, _ table: UnsafeMutablePointer<UnsafeMutableRawPointer>,
        _ indices: UnsafeMutablePointer<UInt32>, _ base: UnsafeMutableRawPointer, _ records: UnsafeMutableRawPointer
    ) -> UInt64 {
        guard pool.get(into: table, count: 32) else { fatalError("empty") }
        for i in 0..<32 { indices[i] = UInt32(truncatingIfNeeded: (table[i] - base) >> 11) }
        var sum: UInt64 = 0
        for i in 0..<32 {
            let index = Int(indices[i])
            let r = records + index * 32
            r.storeBytes(of: 0, toByteOffset: 0, as: UInt32.self)
            r.storeBytes(of: 128 | (1 << 32), toByteOffset: 4, as: UInt64.self)
            r.storeBytes(of: 0, toByteOffset: 12, as: UInt32.self)
            let data = base + (index << 11) + 128
            for w in 0..<8 { sum &+= data.load(fromByteOffset: w * 8, as: UInt64.self) }
            r.storeBytes(of: 64, toByteOffset: 6, as: UInt16.self)
            r.storeBytes(of: 64, toByteOffset: 12, as: UInt32.self)
        }
        for i in 0..<32 { table[i] = base + (Int(indices[i]) << 11) }
        pool.put(from: table, count: 32)
        return sum
    }
}
