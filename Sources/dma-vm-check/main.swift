// dma-vm-check: DMA by a real (emulated) NIC into HugeAlloc packet-pool buffers.
//
// Runs as root inside the QEMU guest that tools/dma-vm-test boots, with an
// e1000 (82540EM) that no kernel driver owns; the other end of its link is
// the host side of the test. Checks, without an IOMMU (physical addresses):
//   - every RX descriptor holds the physical address of its buffer, as the
//     library reports it and as /proc/self/pagemap (read here, separately) says;
//   - the frames the host sends arrive byte for byte in packet-pool buffers;
//   - frames sent from packet-pool buffers are completed (the host checks their bytes).
//
// With --vfio (the guest booted with intel-iommu and the device bound to
// vfio-pci) the same driver runs through VFIO: IOVA = virtual address, and
// the descriptors must hold each buffer's virtual address.
//
// Usage: dma-vm-check [--frames N] [--break] [--vfio]
//   --break   shifts every RX buffer address given to the device by 4 KiB
//             (the negative control; the run must then fail)
// Prints one PASS/FAIL line per check and `N passed, M failed` last; exits 1
// when any check failed.

import Glibc
import HugeAlloc
import VMCheckSupport
import HugeAllocE1000

// MARK: - harness

// check, expect, CheckFailure and the tally come from VMCheckSupport.

func finish() -> Never {
    print("\(passed) passed, \(failed) failed")
    fflush(nil)
    exit(failed == 0 ? 0 : 1)
}

var frameCount = 64
var breakAddresses = false
var useVFIO = false
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    switch argument {
    case "--frames": frameCount = arguments.popFirst().flatMap { Int($0) } ?? frameCount
    case "--break": breakAddresses = true
    case "--vfio": useVFIO = true
    default:
        print("usage: dma-vm-check [--frames N] [--break] [--vfio]")
        exit(2)
    }
}

// MARK: - the frames both sides agree on (tools/lib/dma_vm_host.py builds the same)

/// Frame `index` of a direction: broadcast destination, a source MAC naming
/// the sender (1 host, 2 guest), EtherType 0x88b5 (local experimental), the
/// index big-endian at 14, then a pattern of the index and position.
func frameLength(_ index: Int) -> Int {
    switch index {
    case 0: 60
    case 1: 1514
    default: 60 + (index * 331) % 1455
    }
}

func frameBytes(_ index: Int, sender: UInt8) -> [UInt8] {
    var frame = [UInt8](repeating: 0, count: frameLength(index))
    for j in 0..<6 { frame[j] = 0xff }
    frame[6] = 0x02; frame[11] = sender
    frame[12] = 0x88; frame[13] = 0xb5
    frame[14] = UInt8(index >> 8); frame[15] = UInt8(index & 0xff)
    for j in 16..<frame.count { frame[j] = UInt8(truncatingIfNeeded: j &* 7 &+ index &* 13 &+ Int(sender) &* 0x5a) }
    return frame
}

// MARK: - setup

print("dma-vm-check: \(useVFIO ? "VFIO, IOVA = virtual address" : "no IOMMU, physical addresses"), \(frameCount) frames each way\(breakAddresses ? ", RX addresses shifted by 4096 (--break)" : "")")
/// The VFIO objects, alive for the whole run.
final class VFIOSession {
    var container: VFIOContainer
    let group: VFIOGroup
    let device: VFIODevice
    init(_ pci: PCIDevice) throws(VFIOError) {
        var container = try VFIOContainer()
        let group = try VFIOGroup(device: pci, container: &container)
        device = try group.device(pci.address)
        self.group = group
        self.container = container
    }
}

let device: PCIDevice
let pool: PacketPool
let nic: E1000
var session: VFIOSession? = nil
do {
    device = try PCIDevice.find(PCIDeviceID(vendor: 0x8086, device: 0x100e))
    print("device: \(device)")
    pool = try PacketPool(configuration: PacketPoolConfiguration(count: 1024, headroom: 128, dataRoom: 2048))
    if useVFIO {
        let s = try VFIOSession(device)
        session = s
        let info = try s.container.iommuInfo()
        print("iommu: group \(s.group.number), page sizes 0x\(String(info.pageSizes, radix: 16)), IOVA ranges "
              + info.ranges.map { "0x\(String($0.lowerBound, radix: 16))…0x\(String($0.upperBound, radix: 16))" }.joined(separator: ", "))
        nic = try E1000(vfio: s.device, container: s.container, pool: pool, rxAddressSkew: breakAddresses ? 4096 : 0)
    } else {
        nic = try E1000(device: device, pool: pool, rxAddressSkew: breakAddresses ? 4096 : 0)
    }
} catch {
    print("FAIL setup: \(error)")
    failed += 1
    finish()
}

/// Set when a check saw the device given a wrong address: frames then land
/// on other buffers' metadata, and the pool must not be used further.
nonisolated(unsafe) var misdirected = false

/// Every posted RX descriptor holds the library's physical address of its
/// buffer, and that address is what pagemap says now; through VFIO, the
/// buffer's virtual address (IOVA = VA).
@MainActor func checkPostedAddresses(_ name: String) {
    check(name) {
        var wrong: [String] = []
        let posted = nic.postedReceiveDescriptors()
        for (slot, entry) in posted.enumerated() {
            if useVFIO {
                let virtual = UInt64(UInt(bitPattern: entry.buffer.data))
                if entry.descriptorAddress.rawValue != virtual {
                    wrong.append("slot \(slot): descriptor \(entry.descriptorAddress), virtual address 0x\(String(virtual, radix: 16))")
                }
                continue
            }
            let library = entry.buffer.dataPhysicalAddress
            let kernel = pagemapPhysicalAddress(entry.buffer.data)
            if entry.descriptorAddress != library || library?.rawValue != kernel {
                wrong.append("slot \(slot): descriptor \(entry.descriptorAddress), library \(library.map { "\($0)" } ?? "nil"), pagemap \(kernel.map { "0x" + String($0, radix: 16) } ?? "nil")")
            }
        }
        if !wrong.isEmpty { misdirected = true }
        try expect(wrong.isEmpty, "\(wrong.count) of \(posted.count) wrong; first: \(wrong.first ?? "")")
        return useVFIO ? "\(posted.count) descriptors = buffer virtual address (IOVA)" : "\(posted.count) descriptors = library = pagemap"
    }
}

check("link up") {
    try expect(nic.linkUp, "STATUS.LU clear")
    return "e1000 at \(device.address)"
}
checkPostedAddresses("RX descriptor addresses (initial fill)")

// MARK: - receive

print("dma-vm-check: ready to receive")  // the host starts sending on this line
fflush(nil)
var received: [PacketBuffer] = []
let clock = ContinuousClock()
let deadline = clock.now + .seconds(45)
while received.count < frameCount && clock.now < deadline {
    if nic.receive(into: &received) == 0 { usleep(1000) }
}
check("receive \(frameCount) frames") {
    try expect(received.count == frameCount, "received \(received.count) of \(frameCount) within 45 s")
    return "\(received.count) frames into packet-pool buffers"
}
check("received frames byte for byte") {
    var seen = Set<Int>()
    var problems: [String] = []
    for (n, buffer) in received.enumerated() {
        // A frame written to the wrong address may have overwritten this
        // buffer's metadata: check it before following its data pointer.
        let expectedData = buffer.metadata + PacketBuffer.metadataSize + pool.headroom
        guard buffer.data == expectedData, buffer.length <= pool.dataRoom else {
            misdirected = true
            problems.append("frame \(n): buffer metadata overwritten (data \(buffer.data), length \(buffer.length))")
            continue
        }
        let bytes = Array(UnsafeRawBufferPointer(buffer.bytes))
        let index = bytes.count >= 16 ? Int(bytes[14]) << 8 | Int(bytes[15]) : -1
        guard index >= 0 && index < frameCount else {
            problems.append("frame \(n): length \(bytes.count), index bytes unreadable (\(index))")
            continue
        }
        seen.insert(index)
        let want = frameBytes(index, sender: 1)
        if bytes != want {
            let at = zip(bytes, want).enumerated().first { $0.element.0 != $0.element.1 }?.offset
            misdirected = true
            problems.append("frame \(index): length \(bytes.count) (want \(want.count)), first difference at \(at.map(String.init) ?? "end")")
        }
        if !pool.owns(buffer) || buffer.packetLength != bytes.count {
            problems.append("frame \(index): not a well-formed buffer of the pool")
        }
    }
    try expect(problems.isEmpty, "\(problems.count) bad; \(problems.prefix(3).joined(separator: "; "))")
    try expect(seen.count == frameCount, "\(seen.count) distinct frames of \(frameCount)")
    let lengths = received.map(\.length)
    return "\(received.count) frames, \(lengths.min() ?? 0)…\(lengths.max() ?? 0) bytes, all equal"
}
if misdirected {
    // Frames went to wrong addresses and may have overwritten metadata of
    // buffers in the pool: stop here rather than use them.
    check("transmit") { throw CheckFailure("skipped: receive DMA went to wrong addresses, the pool's memory is not trustworthy") }
    finish()
}
pool.free(received)
checkPostedAddresses("RX descriptor addresses (after bulk refill)")

// MARK: - transmit

check("transmit \(frameCount) frames from packet-pool buffers") {
    guard let buffers = pool.allocate(count: frameCount) else { throw CheckFailure("pool exhausted") }
    for (index, buffer) in buffers.enumerated() {
        let frame = frameBytes(index, sender: 2)
        guard let room = buffer.append(frame.count) else { throw CheckFailure("buffer too small for \(frame.count)") }
        frame.withUnsafeBytes { room.copyMemory(from: $0.baseAddress!, byteCount: frame.count) }
    }
    var queued = 0
    let until = clock.now + .seconds(20)
    while queued < buffers.count && clock.now < until {
        queued += nic.transmit(buffers[queued...])
        if queued < buffers.count { usleep(1000) }
    }
    while nic.transmitInFlight > 0 && clock.now < until {
        nic.reclaimTransmitted()
        usleep(1000)
    }
    try expect(queued == buffers.count && nic.transmitInFlight == 0,
               "queued \(queued), \(nic.transmitInFlight) not completed")
    return "\(queued) frames sent and completed; the host checks their bytes"
}

// MARK: - IOMMU: a descriptor at an IOVA the container does not map

/// The kernel log's lines, from /dev/kmsg (one record per read, non-blocking to the end).
func kernelLogLines() -> [String] {
    let fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK)
    guard fd >= 0 else { return [] }
    defer { close(fd) }
    var lines: [String] = []
    var buffer = [UInt8](repeating: 0, count: 8192)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n < 0 && errno == EPIPE { continue }  // a record was overwritten: go on
        if n <= 0 { break }
        lines.append(String(decoding: buffer[..<n], as: UTF8.self))
    }
    return lines
}

func dmarFaults() -> [String] { kernelLogLines().filter { $0.contains("DMAR: [DMA Write") } }

/// Asks the host for frame `index` and waits for it; nil after 10 s.
@MainActor func receiveOne(_ index: Int) -> PacketBuffer? {
    print("dma-vm-check: send 1 frame from \(index)")
    fflush(nil)
    var got: [PacketBuffer] = []
    let until = clock.now + .seconds(10)
    while got.isEmpty && clock.now < until {
        if nic.receive(into: &got, maximum: 1) == 0 { usleep(1000) }
    }
    return got.first
}

if useVFIO {
    check("DMAR fault at an unmapped IOVA leaves the sentinel page intact") {
        // A hugepage the container does not map, filled with a pattern.
        let sentinel = try MemoryMapping(length: PageSize.huge2M.bytes)
        sentinel.base.initializeMemory(as: UInt8.self, repeating: 0xA5, count: sentinel.length)
        let faultsBefore = dmarFaults().count
        nic.overrideNextReceiveAddress(PhysicalAddress(UInt64(UInt(bitPattern: sentinel.base + 4096))))
        guard let stale = receiveOne(frameCount) else { throw CheckFailure("the device did not complete the descriptor") }
        defer { pool.free(stale) }
        let intact = UnsafeRawBufferPointer(start: sentinel.base, count: sentinel.length).allSatisfy { $0 == 0xA5 }
        try expect(intact, "the device wrote into the sentinel page through an unmapped IOVA")
        var faultLine: String? = nil
        let until = clock.now + .seconds(5)
        while faultLine == nil && clock.now < until {
            let lines = dmarFaults()
            if lines.count > faultsBefore { faultLine = lines.last } else { usleep(10_000) }
        }
        try expect(faultLine != nil, "no DMAR fault line in the kernel log")
        let bytes = Array(UnsafeRawBufferPointer(stale.bytes))
        try expect(bytes != frameBytes(frameCount, sender: 1), "the frame arrived although its IOVA is unmapped")
        return "sentinel intact; kernel: \(faultLine!.split(separator: ";", maxSplits: 1).last.map(String.init)?.filter { $0 != "\n" } ?? "")"
    }
    check("the device still works after the fault") {
        guard let next = receiveOne(frameCount + 1) else { throw CheckFailure("no frame after the fault") }
        defer { pool.free(next) }
        try expect(Array(UnsafeRawBufferPointer(next.bytes)) == frameBytes(frameCount + 1, sender: 1), "frame \(frameCount + 1) differs")
        return "frame \(frameCount + 1) received byte for byte"
    }
}

check("statistics") {
    let stats = nic.readStatistics()
    try expect(stats.txPackets == frameCount, "GPTC \(stats.txPackets), want \(frameCount)")
    try expect(stats.rxPackets >= frameCount, "GPRC \(stats.rxPackets), want ≥ \(frameCount)")
    return "rx \(stats.rxPackets) packets / \(stats.rxBytes) bytes, tx \(stats.txPackets) / \(stats.txBytes), missed \(stats.rxMissed)"
}
check("pool balance") {
    try expect(pool.inUseCount == 256, "\(pool.inUseCount) buffers in use, want the 256 posted")
    return "only the posted RX buffers are out"
}
finish()
