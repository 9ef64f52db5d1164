import ArgumentParser
import Foundation
import HugeAlloc

#if canImport(Glibc)
import Glibc
#endif

/// AF_XDP both ways in copy mode on a veth pair, from packet buffers: one
/// thread sends frames from an AF_XDP socket on one end and receives them
/// with a second AF_XDP socket on the other. Per round: free the completed
/// TX buffers to their pool, allocate a batch, set each one's length,
/// transmit (kicks included), receive a batch, free it and put the same
/// number of free buffers from the pool on the fill ring. The same loop against libxdp is
/// tools/afxdp-bench/afxdp_bench.c; tools/compare-afxdp runs both.
/// Prints `tx_persec=N` (frames completed per second) and `rx_persec=N`
/// (frames received per second) last, after the same per CPU second
/// (`tx_per_cpu_second`, `rx_per_cpu_second`).
struct AFXDPBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "afxdp",
        abstract: "AF_XDP transmit + receive over a veth pair in copy mode; last lines tx_persec=N, rx_persec=N."
    )

    @Option(help: "Seconds to run.") var seconds = 2.0
    @Option(help: "Frames per transmit and per receive.") var batch = 64
    @Option(help: "Bytes per frame (60...1514).") var frameSize = 64
    @Option(help: "Buffers kept on the receiving socket's fill ring (--batch...2048; the ring has 2048 slots).")
    var fill = 2048
    @Option(help: "How received frames go back to the kernel: 'frames' (receiveFrames(into:), then recycle(_:) onto the fill ring, no buffer memory touched, as the libxdp loop does) or 'buffers' (receive(into:) writes each buffer's data offset and length, the pool takes them back, fill(count:) refills).")
    var rxPath: Path = .frames
    @Option(help: "How frames go out: 'frames' (transmitFrames(_:) from a stack of frames written once, takeCompleted(into:) back onto it: no buffer memory touched, as the libxdp loop does) or 'buffers' (allocate from the pool, set the length, transmit(_:), freeCompleted()).")
    var txPath: Path = .frames
    @Option(help: "Sending interface (one end of a veth pair); with --rx-interface. Default: a veth pair made for the run.")
    var txInterface: String?
    @Option(help: "Receiving interface (the other end).") var rxInterface: String?

    /// How frames move in one direction: as descriptors only, or through packet-buffer metadata.
    enum Path: String, ExpressibleByArgument, CaseIterable { case frames, buffers }

    static let ring = 2048
    static let buffers = 4096

    func validate() throws {
        guard batch >= 1, batch <= 256 else { throw ValidationError("--batch must be 1...256") }
        guard frameSize >= 60, frameSize <= 1514 else { throw ValidationError("--frame-size must be 60...1514") }
        guard fill >= batch, fill <= Self.ring else { throw ValidationError("--fill must be --batch...\(Self.ring)") }
        guard (txInterface == nil) == (rxInterface == nil) else {
            throw ValidationError("give both --tx-interface and --rx-interface, or neither (a veth pair is made)")
        }
    }

    func run() throws {
        if let tx = txInterface, let rx = rxInterface {
            try measure(tx: tx, rx: rx)
            return
        }
        // A veth pair of our own, deleted at the end.
        let a = "habench\(getpid() % 100_000)a", b = "habench\(getpid() % 100_000)b"
        guard shell("ip link add \(a) type veth peer name \(b) && ip link set \(a) up && ip link set \(b) up") else {
            throw ValidationError("could not make a veth pair with `ip link add` (needs root and iproute2)")
        }
        defer { _ = shell("ip link del \(a)") }
        var waited = 0
        while !(operational(a) && operational(b)) && waited < 5000 { usleep(1000); waited += 1 }
        try measure(tx: a, rx: b)
    }

    func shell(_ command: String) -> Bool { system(command + " >/dev/null 2>&1") == 0 }

    func operational(_ name: String) -> Bool {
        guard let f = fopen("/sys/class/net/\(name)/operstate", "r") else { return false }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 16)
        return fgets(&line, 16, f) != nil && line.prefix(2) == [0x75, 0x70]  // "up"
    }

    func measure(tx: String, rx: String) throws {
        let txIndex = if_nametoindex(tx), rxIndex = if_nametoindex(rx)
        guard txIndex != 0, rxIndex != 0 else { throw ValidationError("no interface named \(tx) or \(rx)") }
        let ring = Self.ring

        // Receiving end: a socket with `fill` buffers on its fill ring, and the redirect program.
        let rxPool = try PacketPool(configuration: .afXDP(count: Self.buffers, chunkSize: 2048))
        let receiver = try AFXDPSocket(umemOf: rxPool, fillRingEntries: ring, completionRingEntries: ring)
        try receiver.fill(rxPool.allocate(count: fill)!)
        try receiver.bind(interfaceIndex: rxIndex, receiveRingEntries: ring, transmitRingEntries: 0, flags: [.copy, .useNeedWakeup])
        let redirect = try XDPRedirect(interfaceIndex: rxIndex)
        try redirect.redirect(queue: 0, to: receiver)

        // Sending end: every buffer holds the same frame, written once.
        let txPool = try PacketPool(configuration: .afXDP(count: Self.buffers, chunkSize: 2048))
        let sender = try AFXDPSocket(umemOf: txPool, fillRingEntries: ring, completionRingEntries: ring)
        try sender.bind(interfaceIndex: txIndex, receiveRingEntries: 0, transmitRingEntries: ring, flags: [.copy, .useNeedWakeup])
        var frame: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0, 0, 0, 0, 1, 0x88, 0xB5]
        for i in frame.count..<frameSize { frame.append(UInt8(truncatingIfNeeded: i)) }
        let all = txPool.allocate(count: txPool.count)!
        for b in all {
            let start = b.append(frameSize)!
            unsafe frame.withUnsafeBytes { unsafe start.copyMemory(from: $0.baseAddress!, byteCount: frameSize) }
        }
        txPool.free(all)

        let cpuBefore = Self.cpuSeconds(), userBefore = Self.cpuSeconds(userOnly: true)
        let result = try AFXDPLoop.run(
            sender: sender, receiver: receiver, batch: batch, frameSize: frameSize, seconds: seconds, rxPath: rxPath, txPath: txPath)
        let cpu = Self.cpuSeconds() - cpuBefore, user = Self.cpuSeconds(userOnly: true) - userBefore
        print("afxdp hugealloc batch=\(batch) frame=\(frameSize) fill=\(fill) rx-path=\(rxPath.rawValue) tx-path=\(txPath.rawValue) copy mode: sent \(result.sent), "
            + "completed \(result.completed), received \(result.received) in \(result.seconds) s, \(cpu) s of CPU")
        _ = consume redirect
        _ = consume receiver
        _ = consume sender
        guard rxPool.availableCount == rxPool.count, txPool.availableCount == txPool.count else {
            throw ValidationError("buffers missing after close: rx \(rxPool.availableCount)/\(rxPool.count), "
                + "tx \(txPool.availableCount)/\(txPool.count)")
        }
        // Per CPU second (user + system time of this process, which the
        // kernel's sending and receiving softirqs are charged to): the rate a
        // whole CPU would give, less moved by other processes on a shared machine.
        // User time of the loop alone per frame received: the library's share of the work
        // (the kernel's copy path, charged as system time, is most of each frame's cost).
        print("user_ns_per_frame=\(String(format: "%.1f", user * 1e9 / Double(max(result.received, 1))))")
        print("tx_per_cpu_second=\(Int(Double(result.completed) / cpu))")
        print("rx_per_cpu_second=\(Int(Double(result.received) / cpu))")
        print("tx_persec=\(Int(Double(result.completed) / result.seconds))")
        print("rx_persec=\(Int(Double(result.received) / result.seconds))")
    }

    /// User + system (or only user) time of this process so far, from `getrusage(2)`.
    static func cpuSeconds(userOnly: Bool = false) -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let user = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        return userOnly ? user : user + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    }
}

enum AFXDPLoop {
    struct Result {
        var sent = 0, completed = 0, received = 0
        var seconds = 0.0
    }

    static func run(
        sender: borrowing AFXDPSocket, receiver: borrowing AFXDPSocket, batch: Int, frameSize: Int, seconds: Double,
        rxPath: AFXDPBench.Path, txPath: AFXDPBench.Path
    ) throws(AFXDPError) -> Result {
        let txPool = sender.pool, rxPool = receiver.pool
        let table = UnsafeMutableBufferPointer<PacketBuffer>.allocate(capacity: max(batch, 256))
        let frames = UnsafeMutableBufferPointer<AFXDPFrame>.allocate(capacity: batch)
        // The frames TX path: every buffer of the pool, as a frame, on a stack (the C loop's free addresses).
        var stack = Stack(capacity: txPath == .frames ? txPool.count : 0)
        if txPath == .frames {
            guard let all = txPool.allocate(count: txPool.count) else { throw .noTransmitRing }
            for b in all { stack.push(AFXDPFrame(buffer: b, dataOffset: b.dataOffset, length: frameSize)) }
        }
        defer {
            // Frames on the stack are ours; the kernel's come back to the pool when the socket closes.
            for i in 0..<stack.count { unsafe txPool.free(stack.items[i].buffer) }
            unsafe stack.items.deallocate()
            unsafe table.deallocate()
            unsafe frames.deallocate()
        }
        var r = Result()
        let start = Bench.now()
        repeat {
            if txPath == .frames {
                r.completed += unsafe completeRound(sender, table, &stack, dataOffset: txPool.headroom, frameSize: frameSize)
                r.sent += try frameRound(sender, &stack, batch: batch)
            } else {
                r.completed += sender.freeCompleted()
                r.sent += try unsafe round(sender, txPool, table, batch: batch, frameSize: frameSize)
            }
            if rxPath == .frames {
                r.received += unsafe recycleRound(receiver, rxPool, frames)
            } else {
                r.received += try unsafe receiveRound(receiver, rxPool, table)
            }
            r.seconds = Bench.now() - start
        } while r.seconds < seconds
        return r
    }

    /// Frames not with the kernel, last in first out.
    struct Stack {
        let items: UnsafeMutableBufferPointer<AFXDPFrame>
        var count = 0
        init(capacity: Int) { unsafe items = .allocate(capacity: max(capacity, 1)) }
        mutating func push(_ frame: AFXDPFrame) {
            unsafe items[count] = frame
            count += 1
        }
    }

    /// Completed buffers back onto the stack as frames (each still holds the frame it was written with).
    @inline(never)
    static func completeRound(
        _ sender: borrowing AFXDPSocket, _ table: UnsafeMutableBufferPointer<PacketBuffer>, _ stack: inout Stack,
        dataOffset: Int, frameSize: Int
    ) -> Int {
        let n = unsafe sender.takeCompleted(into: table)
        for i in 0..<n { unsafe stack.push(AFXDPFrame(buffer: table[i], dataOffset: dataOffset, length: frameSize)) }
        return n
    }

    /// Up to `batch` frames off the stack and out, all or nothing as ``round``.
    @inline(never)
    static func frameRound(_ sender: borrowing AFXDPSocket, _ stack: inout Stack, batch: Int) throws(AFXDPError) -> Int {
        guard stack.count >= batch else { return 0 }
        let top = stack.count - batch
        let sent = try unsafe sender.transmitFrames(UnsafeBufferPointer(rebasing: stack.items[top..<(top + batch)]))
        // What the ring had no room for stays on the stack, below.
        if sent < batch {
            for i in 0..<(batch - sent) { unsafe stack.items[top + i] = stack.items[top + sent + i] }
        }
        stack.count -= sent
        return sent
    }

    /// Allocates up to `batch` buffers, sets their length and transmits them.
    @inline(never)
    static func round(
        _ sender: borrowing AFXDPSocket, _ pool: PacketPool, _ table: UnsafeMutableBufferPointer<PacketBuffer>,
        batch: Int, frameSize: Int
    ) throws(AFXDPError) -> Int {
        // All or nothing: when the pool is short, completions refill it next round.
        let n = batch
        guard unsafe pool.allocate(into: table.baseAddress!, count: n) else { return 0 }
        for i in 0..<n { unsafe table[i].length = frameSize }
        let sent = try unsafe sender.transmit(UnsafeBufferPointer(rebasing: table[..<n]))
        if sent < n { unsafe pool.free(UnsafeBufferPointer(rebasing: table[sent..<n])) }
        return sent
    }

    /// Received frames straight back onto the fill ring, their buffers untouched.
    @inline(never)
    static func recycleRound(
        _ receiver: borrowing AFXDPSocket, _ pool: PacketPool, _ frames: UnsafeMutableBufferPointer<AFXDPFrame>
    ) -> Int {
        let n = unsafe receiver.receiveFrames(into: frames)
        guard n > 0 else { return 0 }
        let back = unsafe receiver.recycle(UnsafeBufferPointer(rebasing: frames[..<n]))
        // The fill ring had room for every frame the RX ring gave back; should it not, the pool takes the rest.
        for i in back..<n { unsafe pool.free(frames[i].buffer) }
        return n
    }

    /// Receives up to a table of frames, frees them and puts as many free
    /// buffers from the pool on the fill ring (`fill(count:)`).
    @inline(never)
    static func receiveRound(
        _ receiver: borrowing AFXDPSocket, _ pool: PacketPool, _ table: UnsafeMutableBufferPointer<PacketBuffer>
    ) throws(AFXDPError) -> Int {
        let n = unsafe receiver.receive(into: table)
        guard n > 0 else { return 0 }
        unsafe pool.free(UnsafeBufferPointer(rebasing: table[..<n]))
        receiver.fill(count: n)
        return n
    }
}
