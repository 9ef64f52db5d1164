import ArgumentParser
import Foundation
import HugeAlloc

/// `hugealloc-bench pipeline --batch 32 --seconds 2 (--threads 2 | --processes 2)`:
/// a producer allocates packet buffers in bulk from a shared packet pool,
/// writes a 64-byte frame in each and passes them through a shared ring; a
/// consumer takes them off the ring, reads each frame and frees them in
/// bulk. The same code runs on two threads of one process, or in two
/// processes attached to the one published pool and ring (the consumer is
/// this program again, started with `--role consumer`). The last line is
/// `rate_persec=`, buffers per second through the ring.
struct PipelineBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "Packet buffers from a producer to a consumer through a shared pool and ring, two threads or two processes.")

    @Option(help: "Buffers per bulk allocation, ring operation and free.") var batch = 32
    @Option(help: "Seconds to run.") var seconds = 2.0
    @Option(help: "Run producer and consumer as threads of this process (2).") var threads: Int?
    @Option(help: "Run producer and consumer as two processes (2).") var processes: Int?
    @Option(help: "Buffers in the packet pool.") var count = 16384
    @Option(help: "Slots in the ring.") var ringSize = 4096
    @Option(help: .hidden) var role: String?
    @Option(help: .hidden) var name: String?

    func validate() throws {
        guard batch >= 1, batch <= 512 else { throw ValidationError("--batch must be 1 to 512") }
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
        if role == nil {
            guard (threads == 2) != (processes == 2), threads ?? 2 == 2, processes ?? 2 == 2 else {
                throw ValidationError("give --threads 2 or --processes 2 (a producer and a consumer)")
            }
        }
        guard count >= 4 * batch, ringSize >= batch else { throw ValidationError("--count must be at least 4 × --batch and --ring-size at least --batch") }
    }

    /// Allocates, writes a frame, enqueues, until `deadline`; returns buffers sent.
    static func produce(pool: PacketPool, ring: SharedRing, batch: Int, deadline: Double) -> Int {
        var buffers = [PacketBuffer](repeating: PacketBuffer(metadata: UnsafeMutableRawPointer(bitPattern: 64)!), count: batch)
        var objects = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 64)!, count: batch)
        var sent = 0
        var sequence: UInt64 = 0
        while Bench.now() < deadline {
            guard buffers.withUnsafeMutableBufferPointer({ pool.allocate(into: $0) }) else { continue }
            for i in 0..<batch {
                let frame = buffers[i].data
                for word in 0..<8 { frame.storeBytes(of: sequence &+ UInt64(word), toByteOffset: word * 8, as: UInt64.self) }
                sequence &+= 1
                objects[i] = buffers[i].metadata
            }
            while !objects.withUnsafeBufferPointer({ ring.enqueue($0.baseAddress!, count: batch) }) {
                if Bench.now() >= deadline {
                    buffers.withUnsafeBufferPointer { pool.free($0) }
                    return sent
                }
            }
            sent += batch
        }
        return sent
    }

    /// Dequeues, reads each frame, frees, until `deadline`; returns buffers received.
    static func consume(pool: PacketPool, ring: SharedRing, batch: Int, deadline: Double) -> (received: Int, checksum: UInt64) {
        var objects = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 64)!, count: batch)
        var buffers = [PacketBuffer](repeating: PacketBuffer(metadata: UnsafeMutableRawPointer(bitPattern: 64)!), count: batch)
        var received = 0
        var checksum: UInt64 = 0
        var polls = 0
        while true {
            if objects.withUnsafeMutableBufferPointer({ ring.dequeue(into: $0.baseAddress!, count: batch) }) {
                for i in 0..<batch {
                    buffers[i] = PacketBuffer(metadata: objects[i])
                    let frame = buffers[i].data
                    for word in 0..<8 { checksum &+= frame.load(fromByteOffset: word * 8, as: UInt64.self) }
                }
                buffers.withUnsafeBufferPointer { pool.free($0) }
                received += batch
            }
            polls += 1
            if polls & 63 == 0, Bench.now() >= deadline { break }
        }
        return (received, checksum)
    }

    func run() throws {
        let options = SharingOptions()
        if role == "consumer", let name {
            let shared = try SharedPacketPool.attach(name: name + "-pool", options: options)
            let ring = try SharedRing.attach(name: name + "-ring", options: options)
            FileHandle.standardOutput.write("ready\n".data(using: .utf8)!)
            guard let go = readLine(), go == "go" else { return }
            let result = Self.consume(pool: shared.pool, ring: ring, batch: batch, deadline: Bench.now() + seconds)
            FileHandle.standardOutput.write("received \(result.received) \(result.checksum)\n".data(using: .utf8)!)
            return
        }
        let base = "bench-pipeline-\(getpid())"
        let shared = try SharedPacketPool.publish(
            name: base + "-pool", configuration: PacketPoolConfiguration(count: count, dataRoom: 2048, cacheSize: 256), options: options)
        let ring = try SharedRing.publish(name: base + "-ring", capacity: ringSize, options: options)
        let pool = shared.pool
        let batch = self.batch, seconds = self.seconds
        var sent = 0
        var received = 0
        if threads == 2 {
            let samples = Bench.onThreads(2) { i in
                let deadline = Bench.now() + seconds
                if i == 0 {
                    return Bench.Sample(objects: Self.produce(pool: pool, ring: ring, batch: batch, deadline: deadline), seconds: seconds)
                }
                return Bench.Sample(objects: Self.consume(pool: pool, ring: ring, batch: batch, deadline: deadline).received, seconds: seconds)
            }
            sent = samples[0].objects
            received = samples[1].objects
        } else {
            let child = Process()
            child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
            child.arguments = ["pipeline", "--role", "consumer", "--name", base, "--batch", "\(batch)", "--seconds", "\(seconds)"]
            let input = Pipe(), output = Pipe()
            child.standardInput = input
            child.standardOutput = output
            try child.run()
            var lines = LineReader(output.fileHandleForReading)
            guard lines.next() == "ready" else { throw ValidationError("the consumer process did not attach") }
            try? NUMAPlacement.pinCurrentThread(toCPUs: [0])
            input.fileHandleForWriting.write("go\n".data(using: .utf8)!)
            sent = Self.produce(pool: pool, ring: ring, batch: batch, deadline: Bench.now() + seconds)
            let reply = lines.next() ?? ""
            child.waitUntilExit()
            received = Int(reply.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        print("mode=\(threads == 2 ? "threads" : "processes") batch=\(batch) seconds=\(seconds) sent=\(sent) received=\(received)")
        print("rate_persec=\(Int(Double(received) / seconds))")
    }
}

/// Lines from a pipe, blocking.
struct LineReader {
    let handle: FileHandle
    var buffer = Data()
    init(_ handle: FileHandle) { self.handle = handle }
    mutating func next() -> String? {
        while true {
            if let newline = buffer.firstIndex(of: 10) {
                let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                buffer.removeSubrange(buffer.startIndex...newline)
                return line
            }
            let chunk = handle.availableData
            if chunk.isEmpty { return nil }
            buffer.append(chunk)
        }
    }
}
