// A process for the multi-process tests: publishes or attaches to a shared
// object, then follows one command per line on standard input and answers
// one line on standard output. Tests spawn several and kill some.
import Foundation
import HugeAlloc
import Synchronization

let arguments = Array(CommandLine.arguments.dropFirst())
func answer(_ line: String) { FileHandle.standardOutput.write((line + "\n").data(using: .utf8)!) }
func fail(_ error: Error) -> Never {
    answer("error \(error)")
    exit(3)
}

guard let mode = arguments.first else {
    FileHandle.standardError.write("usage: hugealloc-share-worker MODE NAME [ARGS]\n".data(using: .utf8)!)
    exit(2)
}
let name = arguments.count > 1 ? arguments[1] : ""

/// Who else may attach, from the environment (SHARE_ALLOW_UID, SHARE_ALLOW_GID).
var options = SharingOptions()
if let uid = ProcessInfo.processInfo.environment["SHARE_ALLOW_UID"].flatMap(UInt32.init) { options.allowedUsers = [uid] }
if let gid = ProcessInfo.processInfo.environment["SHARE_ALLOW_GID"].flatMap(UInt32.init) { options.allowedGroup = gid }

// SHARE_OCCUPY (hexadecimal): map something there first, as a library
// loaded early might, to see attach refuse the occupied range.
if let text = ProcessInfo.processInfo.environment["SHARE_OCCUPY"], let address = UInt(text.replacingOccurrences(of: "0x", with: ""), radix: 16) {
    let p = mmap(UnsafeMutableRawPointer(bitPattern: address), 1 << 21, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
    if p == MAP_FAILED { fail(POSIXError(.init(rawValue: errno)!)) }
}

// SHARE_CLAIM (bytes): claim the shared-object range early, before the
// rest. SHARE_OCCUPY_HINT (hexadecimal): then map 2 MiB with that address
// as a hint only (no MAP_FIXED), as an allocator looking for room would:
// it lands there unless the range is claimed.
if let text = ProcessInfo.processInfo.environment["SHARE_CLAIM"], let bytes = Int(text) {
    do { try SharedAddressReservation.claim(bytes: bytes) } catch { fail(error) }
}
if let text = ProcessInfo.processInfo.environment["SHARE_OCCUPY_HINT"], let address = UInt(text.replacingOccurrences(of: "0x", with: ""), radix: 16) {
    let p = mmap(UnsafeMutableRawPointer(bitPattern: address), 1 << 21, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED { fail(POSIXError(.init(rawValue: errno)!)) }
}

/// The permissions of the /proc/self/maps line holding `address`, or "none".
func permissions(at address: UInt) -> String {
    let maps = (try? String(contentsOfFile: "/proc/self/maps", encoding: .utf8)) ?? ""
    for line in maps.split(separator: "\n") {
        let fields = line.split(separator: " ")
        let bounds = fields[0].split(separator: "-").compactMap { UInt($0, radix: 16) }
        if bounds.count == 2, address >= bounds[0], address < bounds[1] { return String(fields[1]) }
    }
    return "none"
}
// SHARE_NO_REPAIR=1: this process's reclaims leave a dead process's
// backend locks held (the negative control of the crash tests).
if ProcessInfo.processInfo.environment["SHARE_NO_REPAIR"] == "1" { Mempool.repairsLocksOfDeadProcesses(false) }

func integer(_ word: String) -> Int { Int(word)! }
func pointer(_ word: String) -> UnsafeMutableRawPointer { UnsafeMutableRawPointer(bitPattern: UInt(word)!)! }

var mapping: SharedMapping?
var shared: SharedMempool?
var packets: SharedPacketPool?
var ring: SharedRing?
var heap: SharedHeap?
do {
    switch mode {
    case "publish-mapping":
        mapping = try SharedMapping.publish(name: name, length: integer(arguments[2]), options: options)
    case "attach-mapping":
        mapping = try SharedMapping.attach(name: name, options: options)
    case "publish-pool":  // publish-pool NAME COUNT SIZE CACHE CHECKED
        shared = try SharedMempool.publish(
            name: name, configuration: MempoolConfiguration(count: integer(arguments[2]), objectSize: integer(arguments[3]),
                                                            cacheSize: integer(arguments[4]), checked: arguments[5] == "1"),
            options: options)
    case "attach-pool":
        shared = try SharedMempool.attach(name: name, options: options)
    case "publish-heap":  // publish-heap NAME BYTES CHECKED
        heap = try SharedHeap.publish(name: name, bytes: integer(arguments[2]), checked: arguments[3] == "1", options: options)
    case "attach-heap":
        heap = try SharedHeap.attach(name: name, options: options)
    case "attach-packets":  // attach-packets NAME RING
        packets = try SharedPacketPool.attach(name: name, options: options)
        if arguments.count > 2 { ring = try SharedRing.attach(name: arguments[2], options: options) }
    default:
        answer("error unknown mode \(mode)")
        exit(2)
    }
} catch { fail(error) }

if let m = mapping { answer("ready \(UInt(bitPattern: m.base)) \(m.length)") }
if let s = shared { answer("ready \(UInt(bitPattern: s.pool.base)) \(s.pool.count)") }
if let h = heap { answer("ready \(UInt(bitPattern: h.base)) \(h.capacity)") }
if let p = packets { answer("ready \(UInt(bitPattern: p.pool.mempool.base)) \(p.pool.mempool.count)") }

/// Objects this process holds, and the churn thread's switch.
let held = Mutex<[UInt]>([])
/// The pool of the shared object, looked up per use so that nothing here
/// keeps it alive past `exit`.
var pool: Mempool? { shared?.pool ?? packets?.pool.mempool }
let churning = Atomic<Bool>(false)
let churnDone = DispatchSemaphore(value: 0)

/// Gets and puts in random bulks, holding a random number of objects at any
/// moment, until told to stop (or killed).
@Sendable func churn(_ pool: Mempool) {
    var rng = SystemRandomNumberGenerator()
    // What an earlier churn (stopped) or "get" left held is churned on.
    var mine = held.withLock { h in defer { h.removeAll() }; return h }.map { UnsafeMutableRawPointer(bitPattern: $0)! }
    var scratch = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: 64)
    while churning.load(ordering: .relaxed) {
        // Up to 48: more than half a 64-object cache goes straight to the backend.
        let n = Int.random(in: 1...48, using: &rng)
        // Holding at most a quarter of the pool, so that others' gets succeed.
        if mine.isEmpty || (mine.count < pool.count / 4 && Bool.random(using: &rng)) {
            if scratch.withUnsafeMutableBufferPointer({ pool.get(into: $0.baseAddress!, count: n) }) {
                for i in 0..<n { scratch[i].storeBytes(of: UInt64(getpid()), as: UInt64.self) }
                mine.append(contentsOf: scratch[0..<n])
            }
        } else {
            let k = min(n, mine.count)
            let batch = Array(mine.suffix(k))
            mine.removeLast(k)
            _ = batch.withUnsafeBufferPointer { pool.put(from: $0.baseAddress!, count: k) }
        }
    }
    let addresses = mine.map { UInt(bitPattern: $0) }
    held.withLock { $0.append(contentsOf: addresses) }
    churnDone.signal()
}

/// Allocates and frees at random (sizes 1 byte to 20 KB, alignments 64 to
/// 4 KiB), holding up to 64 blocks, each filled with a byte of its own that
/// is checked before the block is freed: a block another process also got
/// would show. Frees everything at the end; "churned N" or what went wrong.
func heapChurn(_ heap: SharedHeap, operations: Int) -> String {
    var rng = SystemRandomNumberGenerator()
    var mine: [(pointer: UnsafeMutableRawPointer, bytes: Int, fill: UInt8)] = []
    func check(_ b: (pointer: UnsafeMutableRawPointer, bytes: Int, fill: UInt8)) -> Bool {
        [0, b.bytes / 2, b.bytes - 1].allSatisfy { b.pointer.load(fromByteOffset: $0, as: UInt8.self) == b.fill }
    }
    do {
        for i in 0..<operations {
            if mine.count < 64, mine.isEmpty || Bool.random(using: &rng) {
                let bytes = Int.random(in: 1...20_000, using: &rng)
                let alignment = [64, 128, 4096].randomElement(using: &rng)!
                guard let p = try? heap.allocate(bytes: bytes, alignment: alignment) else { continue }
                guard UInt(bitPattern: p) % UInt(alignment) == 0 else { return "error misaligned \(p) for \(alignment)" }
                let fill = UInt8(truncatingIfNeeded: i &* 31 &+ Int(getpid()))
                p.initializeMemory(as: UInt8.self, repeating: fill, count: bytes)
                mine.append((p, bytes, fill))
            } else {
                let b = mine.remove(at: Int.random(in: 0..<mine.count, using: &rng))
                guard check(b) else { return "error block \(b.pointer) overwritten" }
                try heap.free(b.pointer)
            }
        }
        for b in mine {
            guard check(b) else { return "error block \(b.pointer) overwritten" }
            try heap.free(b.pointer)
        }
    } catch { return "error \(error)" }
    return "churned \(operations)"
}

while let line = readLine() {
    let words = line.split(separator: " ").map(String.init)
    guard let command = words.first else { continue }
    switch command {
    case "release":  // closes the mapping; answers what is left at its address
        let address = UInt(bitPattern: mapping!.base)
        mapping = nil
        answer("released \(permissions(at: address))")
    case "write":  // write OFFSET VALUE: a 64-bit word at an offset of the mapping, or at an address
        if let m = mapping {
            m.base.storeBytes(of: UInt64(words[2])!, toByteOffset: integer(words[1]), as: UInt64.self)
        } else {
            pointer(words[1]).storeBytes(of: UInt64(words[2])!, as: UInt64.self)
        }
        answer("ok")
    case "read":
        if let m = mapping {
            answer("value \(m.base.load(fromByteOffset: integer(words[1]), as: UInt64.self))")
        } else {
            answer("value \(pointer(words[1]).load(as: UInt64.self))")
        }
    case "physical":  // physical OFFSET: the physical address this process reads for the byte
        guard let m = mapping else { break }
        answer("physical \(m.physicalAddress(of: m.base + integer(words[1]))?.rawValue ?? 0)")
    case "participants":
        let list = mapping?.participants ?? shared?.participants ?? packets?.participants ?? []
        answer("participants \(list.map { "\($0.pid):\($0.isAlive)" }.joined(separator: ","))")
    case "get":  // get N: takes N objects and prints their addresses
        guard let pool else { break }
        var objects = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: integer(words[1]))
        if objects.withUnsafeMutableBufferPointer({ pool.get(into: $0.baseAddress!, count: $0.count) }) {
            let addresses = objects.map { UInt(bitPattern: $0) }
            held.withLock { $0.append(contentsOf: addresses) }
            answer("objects \(objects.map { "\(UInt(bitPattern: $0))" }.joined(separator: " "))")
        } else {
            answer("empty")
        }
    case "put":  // put ADDRESS…: puts objects back, checked when the pool checks
        guard let pool else { break }
        let objects = words.dropFirst().map(pointer)
        do {
            if pool.isChecked {
                try objects.withUnsafeBufferPointer { try pool.putChecked(from: $0.baseAddress!, count: $0.count) }
            } else {
                _ = objects.withUnsafeBufferPointer { pool.put(from: $0.baseAddress!, count: $0.count) }
            }
            let addresses = Set(objects.map { UInt(bitPattern: $0) })
            held.withLock { h in h.removeAll { addresses.contains($0) } }
            answer("ok")
        } catch { answer("error \(error)") }
    case "putheld":
        guard let pool else { break }
        let objects = held.withLock { h in defer { h.removeAll() }; return h }.map { UnsafeMutableRawPointer(bitPattern: $0)! }
        _ = objects.withUnsafeBufferPointer { pool.put(from: $0.baseAddress!, count: $0.count) }
        answer("ok \(objects.count)")
    case "available":
        answer("available \(pool?.availableCount ?? -1)")
    case "flush":
        pool?.flushThreadCache()
        answer("ok")
    case "churn":
        guard let pool else { break }
        churning.store(true, ordering: .relaxed)
        Thread.detachNewThread { churn(pool) }
        answer("churning")
    case "stop":  // "stalled" when the churn thread does not come back: a pool call that never returns
        churning.store(false, ordering: .relaxed)
        if churnDone.wait(timeout: .now() + 10) == .timedOut {
            answer("stalled")
        } else {
            answer("stopped \(held.withLock { $0.count })")
        }
    case "crash-at":  // crash-at POINT OPERATION: dies (SIGKILL) at POINT (1...4) of a backend operation
        guard let pool else { break }
        let point = MempoolSharedBackend.CrashPoint(rawValue: integer(words[1]))!
        let half = max(1, pool.cacheSize / 2)
        var objects = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: pool.count)
        func get(_ n: Int, from offset: Int) -> Bool {
            objects.withUnsafeMutableBufferPointer { pool.get(into: $0.baseAddress! + offset, count: n) }
        }
        func put(_ n: Int, from offset: Int) {
            _ = objects.withUnsafeBufferPointer { pool.put(from: $0.baseAddress! + offset, count: n) }
        }
        switch words[2] {
        case "get-direct":  // more than half a cache: straight from the backend
            Mempool.crashInsideSharedOperations(at: point)
            _ = get(half + 1, from: 0)
        case "put-direct":  // more than the cache takes, more than half of it: straight to the backend
            let n = pool.cacheSize + 1
            guard get(n, from: 0) else { answer("empty \(pool.availableCount) \(pool.backendAvailableCount)"); continue }
            Mempool.crashInsideSharedOperations(at: point)
            put(n, from: 0)
        case "refill":  // an empty cache: a transfer from the backend
            Mempool.crashInsideSharedOperations(at: point)
            _ = get(1, from: 0)
        case "flush":  // a full cache: a transfer to the backend
            guard get(half, from: 0), get(half, from: half), get(half, from: 2 * half) else {
                answer("empty \(pool.availableCount) \(pool.backendAvailableCount)")
                continue
            }
            put(half, from: 0)
            Mempool.crashInsideSharedOperations(at: point)
            put(half, from: half)
        default:
            answer("error unknown operation \(words[2])")
            continue
        }
        answer("survived \(words[2]) \(point)")
    case "arm-crash":  // arm-crash POINT: dies (SIGKILL) at POINT (1...4) of its next backend operation, whichever
        // thread makes it (the watcher's reclaim of a dead process, when this process sits idle)
        Mempool.crashInsideSharedOperations(at: MempoolSharedBackend.CrashPoint(rawValue: integer(words[1]))!)
        answer("armed")
    case "chain":  // chain LENGTH SEED: a packet of LENGTH bytes (a chain of buffers) with a pattern
        guard let p = packets?.pool else { break }
        do {
            let head = try p.allocateFrame(length: integer(words[1]))
            let seed = integer(words[2])
            p.write((0..<integer(words[1])).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ seed) }, into: head)
            answer("chain \(UInt(bitPattern: head.metadata)) \(head.segmentCount)")
        } catch { answer("error \(error)") }
    case "free-chain":  // free-chain HEAD LENGTH SEED: checks a chain another process built, frees it
        guard let p = packets?.pool else { break }
        let head = PacketBuffer(metadata: pointer(words[1]))
        let expected = (0..<integer(words[2])).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ integer(words[3])) }
        guard p.owns(head), head.contents == expected else { answer("error contents differ"); break }
        let segments = head.segmentCount
        p.free(head)
        answer("freed \(segments)")
    case "receive":  // receive N: dequeues N buffers from the ring, checks their frames, frees them
        guard let p = packets?.pool, let r = ring else { break }
        var objects = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: integer(words[1]))
        let ok = objects.withUnsafeMutableBufferPointer { r.dequeue(into: $0.baseAddress!, count: $0.count) }
        guard ok else { answer("empty"); break }
        let tags = objects.map { PacketBuffer(metadata: $0).data.load(as: UInt64.self) }
        for o in objects { p.free(PacketBuffer(metadata: o)) }
        answer("frames \(tags.map(String.init).joined(separator: " "))")
    case "alloc":  // alloc BYTES ALIGNMENT: a block of the shared heap
        guard let h = heap else { break }
        do { answer("block \(UInt(bitPattern: try h.allocate(bytes: integer(words[1]), alignment: integer(words[2]))))") } catch {
            answer("error \(error)")
        }
    case "hfree":  // hfree ADDRESS: frees a block of the shared heap
        guard let h = heap else { break }
        do {
            try h.free(pointer(words[1]))
            answer("ok")
        } catch { answer("error \(error)") }
    case "hphysical":  // hphysical ADDRESS: the physical address this process reads for a heap byte
        guard let h = heap else { break }
        answer("physical \(h.physicalAddress(of: pointer(words[1]))?.rawValue ?? 0)")
    case "free-bytes":
        answer("free \(heap?.freeBytes ?? -1)")
    case "reserve":  // reserve NAME BYTES: a memzone
        guard let h = heap else { break }
        do { answer("zone \(try h.reserveMemzone(name: words[1], bytes: integer(words[2]), alignment: 64).address)") } catch {
            answer("error \(error)")
        }
    case "lookup":  // lookup NAME: a memzone's address and length, or none
        guard let h = heap else { break }
        do {
            if let z = try h.lookupMemzone(name: words[1]) { answer("zone \(z.address) \(z.length)") } else { answer("none") }
        } catch { answer("error \(error)") }
    case "freezone":
        guard let h = heap else { break }
        do {
            try h.freeMemzone(name: words[1])
            answer("ok")
        } catch { answer("error \(error)") }
    case "heap-churn":  // heap-churn OPS: random allocations and frees, each block's bytes checked before it is freed
        guard let h = heap else { break }
        answer(heapChurn(h, operations: integer(words[1])))
    case "die-in-alloc":  // die-in-alloc STEP BYTES ALIGNMENT: SIGKILLs itself at STEP inside the allocation (holding the lock)
        guard let h = heap else { break }
        SharedHeap.stopAt.store(integer(words[1]), ordering: .relaxed)
        let block = try? h.allocate(bytes: integer(words[2]), alignment: integer(words[3]))
        answer("survived \(block.map { UInt(bitPattern: $0) } ?? 0)")
    case "die-in-free":  // die-in-free STEP ADDRESS
        guard let h = heap else { break }
        SharedHeap.stopAt.store(integer(words[1]), ordering: .relaxed)
        try? h.free(pointer(words[2]))
        answer("survived")
    case "crash-ring":  // crash-ring POINT enqueue|dequeue: dies (SIGKILL) at POINT (1...4) of a ring operation
        guard let p = packets?.pool, let r = ring else { break }
        let point = MempoolSharedBackend.CrashPoint(rawValue: integer(words[1]))!
        var objects = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: 8)
        guard objects.withUnsafeMutableBufferPointer({ p.mempool.get(into: $0.baseAddress!, count: 8) }) else {
            answer("empty")
            continue
        }
        if words[2] == "dequeue" {
            guard objects.withUnsafeBufferPointer({ r.enqueue($0.baseAddress!, count: 8) }) else { answer("full"); continue }
            Mempool.crashInsideSharedOperations(at: point)
            _ = objects.withUnsafeMutableBufferPointer { r.dequeue(into: $0.baseAddress!, count: 8) }
        } else {
            Mempool.crashInsideSharedOperations(at: point)
            _ = objects.withUnsafeBufferPointer { r.enqueue($0.baseAddress!, count: 8) }
        }
        answer("survived")
    case "ring-check":  // an enqueue and a dequeue of 8 pointers on another thread: "ring ok", or "stalled"
        guard let r = ring else { break }
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            var words = (1...8).map { UnsafeMutableRawPointer(bitPattern: 4096 * $0)! }
            _ = words.withUnsafeBufferPointer { r.enqueue($0.baseAddress!, count: 8) }
            _ = words.withUnsafeMutableBufferPointer { r.dequeue(into: $0.baseAddress!, count: 8) }
            done.signal()
        }
        answer(done.wait(timeout: .now() + 10) == .timedOut ? "stalled" : "ring ok")
    case "exit":
        heap = nil
        mapping = nil
        shared = nil
        packets = nil
        ring = nil
        answer("bye")
        exit(0)
    default:
        answer("error unknown command \(command)")
    }
}
