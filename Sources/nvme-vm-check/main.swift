// nvme-vm-check: an emulated NVMe drive reads and writes DMA-heap memory
// through the HugeAllocNVMe user-space driver.
//
// Runs as root inside the QEMU guest that tools/dma-vm-test boots, with a
// `-device nvme,serial=ha0` that no kernel driver owns, backed by a zeroed
// raw file on the host. Checks, without an IOMMU (physical addresses):
//   - the controller and namespace identify themselves (serial "ha0");
//   - every queue and the PRP list sit where /proc/self/pagemap (read here,
//     separately) says the heap's addresses are, and so do the data pages of
//     a 128 KiB write (PRP1 + a PRP list);
//   - writes of distinct patterns at random, non-overlapping LBAs — single
//     blocks, two pages (PRP2 = the second page) and up to 128 KiB (PRP
//     lists), some starting mid-page — all read back equal, whole and block
//     by block;
//   - a command the controller rejects is a typed error.
// It prints the seed and every extent written; the host then checks the
// drive file (tools/lib/dma_vm_host.py derives the patterns from seed and LBA).
//
// With --vfio (intel-iommu, the controller bound to vfio-pci) the heap is
// attached to a VFIO container first and the same driver runs through it.
//
// Usage: nvme-vm-check [--writes N] [--seed S] [--break] [--vfio]
//   --break   shifts every data page address given to the controller by
//             4 KiB (the negative control; the run must then fail)
// Prints one PASS/FAIL line per check and `N passed, M failed` last; exits 1
// when any check failed.

import Glibc
import HugeAlloc
import HugeAllocNVMe
import VMCheckSupport

func finish() -> Never {
    print("\(passed) passed, \(failed) failed")
    fflush(nil)
    exit(failed == 0 ? 0 : 1)
}

/// The command line: --writes N, --seed S, --break, --vfio.
func options() -> (writes: Int, seed: UInt64, breakAddresses: Bool, vfio: Bool) {
    var result = (writes: 1000, seed: UInt64.random(in: 1...UInt64.max), breakAddresses: false, vfio: false)
    var arguments = CommandLine.arguments.dropFirst()
    while let argument = arguments.popFirst() {
        switch argument {
        case "--writes": result.writes = arguments.popFirst().flatMap { Int($0) } ?? result.writes
        case "--seed": result.seed = arguments.popFirst().flatMap { UInt64($0) } ?? result.seed
        case "--break": result.breakAddresses = true
        case "--vfio": result.vfio = true
        default:
            print("usage: nvme-vm-check [--writes N] [--seed S] [--break] [--vfio]")
            exit(2)
        }
    }
    return result
}
let (writeCount, seed, breakAddresses, useVFIO) = options()

// MARK: - the patterns both sides agree on (tools/lib/dma_vm_host.py computes the same)

/// Word `k` (8 bytes, little-endian) of logical block `lba`: distinct within
/// a block and between blocks.
@inline(__always) func patternWord(_ lba: UInt64, _ k: Int) -> UInt64 {
    seed ^ (lba &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(k) &* 0xD1B5_4A32_D192_ED03)
}

func fillPattern(_ buffer: UnsafeMutableRawPointer, lba: UInt64, blocks: Int, blockSize: Int) {
    let words = buffer.assumingMemoryBound(to: UInt64.self)
    let perBlock = blockSize / 8
    for b in 0..<blocks {
        for k in 0..<perBlock { words[b * perBlock + k] = patternWord(lba + UInt64(b), k).littleEndian }
    }
}

/// The first block of `blocks` at `buffer` that differs from its pattern, nil when all are equal.
func firstMismatch(_ buffer: UnsafeRawPointer, lba: UInt64, blocks: Int, blockSize: Int) -> Int? {
    let words = buffer.assumingMemoryBound(to: UInt64.self)
    let perBlock = blockSize / 8
    for b in 0..<blocks {
        for k in 0..<perBlock where UInt64(littleEndian: words[b * perBlock + k]) != patternWord(lba + UInt64(b), k) {
            return b
        }
    }
    return nil
}

/// SplitMix64: the extents' LBAs, sizes and buffer offsets.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: - setup

print("nvme-vm-check: \(useVFIO ? "VFIO, IOVA = virtual address" : "no IOMMU, physical addresses"), \(writeCount) writes, seed \(seed)\(breakAddresses ? ", data addresses shifted by 4096 (--break)" : "")")

/// The VFIO objects and the heap's attachment, alive for the whole run.
final class VFIOSession {
    var container: VFIOContainer
    let group: VFIOGroup
    let device: VFIODevice
    let attachment: DMAHeapAttachment
    init(_ pci: PCIDevice, heap: DMAHeap) throws(VFIOError) {
        var container = try VFIOContainer()
        let group = try VFIOGroup(device: pci, container: &container)
        device = try group.device(pci.address)
        // Before the driver allocates: from here on heap.iova(of:) is the container's IOVA.
        attachment = try container.attach(heap)
        self.group = group
        self.container = container
    }
}

let heap: DMAHeap
let nvme: NVMe
var session: VFIOSession? = nil
do {
    guard let device = try PCIDevice.all().first(where: { $0.classCode == 0x01_08_02 }) else {
        throw CheckFailure("no PCI device of class 010802 (NVM Express)")
    }
    print("device: \(device)")
    heap = try DMAHeap()
    let skew = breakAddresses ? 4096 : 0
    if useVFIO {
        let s = try VFIOSession(device, heap: heap)
        session = s
        nvme = try NVMe(vfio: s.device, heap: heap, dataAddressSkew: skew)
    } else {
        nvme = try NVMe(device: device, heap: heap, dataAddressSkew: skew)
    }
} catch {
    print("FAIL setup: \(error)")
    failed += 1
    finish()
}

/// The address the controller must be given for `pointer`: what pagemap
/// says, or through VFIO the virtual address (IOVA = VA).
func expectedDeviceAddress(_ pointer: UnsafeRawPointer) -> UInt64? {
    useVFIO ? UInt64(UInt(bitPattern: pointer)) : pagemapPhysicalAddress(pointer)
}

func hex(_ value: UInt64?) -> String { value.map { "0x" + String($0, radix: 16) } ?? "nil" }

check("controller identified") {
    let c = nvme.controller
    try expect(c.serialNumber == "ha0", "serial \"\(c.serialNumber)\", want \"ha0\" (Identify data not where it was asked)")
    return "\(c.modelNumber) \(c.firmwareRevision), NVMe \(c.version), serial \(c.serialNumber), \(c.namespaceCount) namespace IDs, "
        + "MDTS \(c.maximumDataTransferBytes.map { "\($0 >> 10) KiB" } ?? "none"), CAP.TO \(nvme.readyTimeoutMilliseconds) ms, doorbell stride \(nvme.doorbellStride)"
}
let blockSize = nvme.namespace.blockSize
let blockCount = nvme.namespace.blockCount
check("namespace 1") {
    try expect(blockSize >= 512 && blockSize & (blockSize - 1) == 0, "block size \(blockSize)")
    try expect(blockCount >= 4096, "only \(blockCount) blocks")
    return "\(blockCount) blocks of \(blockSize) bytes (\(nvme.namespace.capacityBytes >> 20) MiB)"
}
print("nvme-vm-check: namespace blocks=\(blockCount) block=\(blockSize)")
check("queue and PRP list addresses") {
    var wrong: [String] = []
    for entry in nvme.queueMemory {
        let expected = expectedDeviceAddress(entry.pointer)
        if entry.deviceAddress != expected { wrong.append("\(entry.name): driver \(hex(entry.deviceAddress)), expected \(hex(expected))") }
    }
    try expect(wrong.isEmpty, wrong.joined(separator: "; "))
    return "\(nvme.queueMemory.count) areas = \(useVFIO ? "virtual address (IOVA)" : "pagemap")"
}

// MARK: - the extents

/// 128 KiB, plus a page for mid-page starts and a page for --break's shift,
/// so a shifted transfer stays inside the buffer.
let transferLimit = min(128 << 10, nvme.maximumTransferSize)
let bufferBytes = transferLimit + 2 * 4096
let writeBuffer: UnsafeMutableRawPointer
let readBuffer: UnsafeMutableRawPointer
do {
    writeBuffer = try heap.allocate(bufferBytes, alignment: 4096)
    readBuffer = try heap.allocate(bufferBytes, alignment: 4096)
} catch {
    print("FAIL data buffers: \(error)")
    failed += 1
    finish()
}

struct Extent {
    var lba: UInt64
    var blocks: Int
    /// Where the data starts in the buffer: 0, or mid-page (PRP1 with an offset).
    var offset: Int
}

var random = SplitMix64(state: seed)
let maxBlocks = transferLimit / blockSize
let pageBlocks = max(1, 4096 / blockSize)
var used = [Bool](repeating: false, count: Int(blockCount))
var extents: [Extent] = []
for i in 0..<writeCount {
    let blocks: Int
    var offset = 0
    switch i {
    case 0: blocks = maxBlocks                      // 128 KiB from a page start: PRP1 + a list
    case 1: blocks = maxBlocks; offset = blockSize  // 128 KiB from mid-page: one more page
    default:
        let kind = Int.random(in: 0..<20, using: &random)
        if kind < 10 {
            blocks = 1
        } else if kind < 13 {
            blocks = Int.random(in: 2...min(2 * pageBlocks, maxBlocks), using: &random)
        } else {
            // Log-uniform up to 128 KiB: most need a PRP list.
            let low = Double(min(2 * pageBlocks + 1, maxBlocks)), high = Double(maxBlocks)
            blocks = Int((low * pow(high / low, Double.random(in: 0...1, using: &random))).rounded())
        }
        if Int.random(in: 0..<4, using: &random) == 0 { offset = blockSize * Int.random(in: 1..<pageBlocks, using: &random) }
    }
    // A random place no earlier extent touches.
    for _ in 0..<100 {
        let lba = Int.random(in: 0...(Int(blockCount) - blocks), using: &random)
        if !used[lba..<(lba + blocks)].contains(true) {
            for b in lba..<(lba + blocks) { used[b] = true }
            extents.append(Extent(lba: UInt64(lba), blocks: blocks, offset: offset))
            break
        }
    }
}
let totalBlocks = extents.reduce(0) { $0 + $1.blocks }

/// Pages a transfer touches in the buffer: 1 (PRP1), 2 (PRP2 = a page), more (PRP2 = a list).
func pageCount(_ e: Extent) -> Int { (e.offset % 4096 + e.blocks * blockSize + 4095) / 4096 }

// For the host: the seed and every extent (lba+blocks), 16 to a line.
print("nvme-vm-check: extents seed=\(seed) block=\(blockSize) count=\(extents.count) blocks=\(totalBlocks)")
for start in stride(from: 0, to: extents.count, by: 16) {
    print("nvme-vm-check: extent " + extents[start..<min(start + 16, extents.count)].map { "\($0.lba)+\($0.blocks)" }.joined(separator: " "))
}
fflush(nil)

// MARK: - write, read back, compare

let clock = ContinuousClock()
func milliseconds(since start: ContinuousClock.Instant) -> Int64 {
    let elapsed = (clock.now - start).components
    return elapsed.seconds * 1000 + elapsed.attoseconds / 1_000_000_000_000_000
}
var prpCheck: String? = nil
let writeStart = clock.now
check("write \(extents.count) extents, \(totalBlocks) blocks") {
    for (i, e) in extents.enumerated() {
        fillPattern(writeBuffer + e.offset, lba: e.lba, blocks: e.blocks, blockSize: blockSize)
        try nvme.write(from: writeBuffer + e.offset, lba: e.lba, blocks: e.blocks)
        if i == 0 {
            // The data pages of the 128 KiB write as the controller was given them.
            let expected = (0..<pageCount(e)).map { expectedDeviceAddress(writeBuffer + $0 * 4096) }
            let given = nvme.lastDataPages.map { Optional($0) }
            prpCheck = given == expected ? "\(given.count) pages" :
                "driver \(given.prefix(2).map(hex)) …, expected \(expected.prefix(2).map(hex)) …"
        }
    }
    let byKind = extents.reduce(into: [0, 0, 0]) { $0[min(pageCount($1), 3) - 1] += 1 }
    return "\(byKind[0]) of one page, \(byKind[1]) of two, \(byKind[2]) with a PRP list; \(extents.filter { $0.offset != 0 }.count) start mid-page; \(milliseconds(since: writeStart)) ms"
}
check("data page addresses of a 128 KiB write (PRP1 + PRP list)") {
    guard let prpCheck else { throw CheckFailure("the first write did not complete") }
    try expect(prpCheck.hasSuffix("pages"), prpCheck)
    return "\(prpCheck) = \(useVFIO ? "virtual addresses (IOVA)" : "pagemap")"
}
check("flush") {
    try nvme.flush()
    return "volatile write cache committed"
}

var order = Array(extents.indices)
order.shuffle(using: &random)
let readStart = clock.now
check("read back \(extents.count) extents in another order, byte for byte") {
    var bad: [String] = []
    for i in order {
        let e = extents[i]
        let target = readBuffer + e.offset
        target.initializeMemory(as: UInt8.self, repeating: 0xEE, count: e.blocks * blockSize)
        try nvme.read(into: target, lba: e.lba, blocks: e.blocks)
        if let b = firstMismatch(target, lba: e.lba, blocks: e.blocks, blockSize: blockSize) {
            bad.append("LBA \(e.lba)+\(e.blocks) (offset \(e.offset)): block \(b) differs")
        }
    }
    try expect(bad.isEmpty, "\(bad.count) of \(extents.count) extents differ; \(bad.prefix(3).joined(separator: "; "))")
    return "\(totalBlocks) blocks equal; \(milliseconds(since: readStart)) ms"
}
check("single blocks from inside multi-block extents") {
    let multi = extents.filter { $0.blocks > 1 }
    var bad: [String] = []
    for _ in 0..<min(200, multi.count * 4) {
        let e = multi.randomElement(using: &random)!
        let lba = e.lba + UInt64(Int.random(in: 0..<e.blocks, using: &random))
        readBuffer.initializeMemory(as: UInt8.self, repeating: 0xEE, count: blockSize)
        try nvme.read(into: readBuffer, lba: lba, blocks: 1)
        if firstMismatch(readBuffer, lba: lba, blocks: 1, blockSize: blockSize) != nil { bad.append("LBA \(lba)") }
    }
    try expect(bad.isEmpty, "\(bad.count) blocks differ: \(bad.prefix(5).joined(separator: ", "))")
    return "\(min(200, multi.count * 4)) blocks equal"
}

// MARK: - errors

check("a command the controller rejects is a typed error") {
    do {
        _ = try nvme.identifyNamespace(0)
        throw CheckFailure("Identify Namespace 0 succeeded")
    } catch NVMeError.commandFailed(let command, let status) {
        try expect(status.type == .generic && status.code == 0x0B, "\(command): \(status), want Invalid Namespace or Format")
        return "\(command): \(status)"
    }
}
check("a transfer past the namespace is refused before it is sent") {
    do {
        try nvme.read(into: readBuffer, lba: blockCount - 1, blocks: 2)
        throw CheckFailure("reading past the end succeeded")
    } catch NVMeError.invalidTransfer(let why) {
        return why
    }
}
check("shutdown") {
    try nvme.shutdown()
    return "CSTS.SHST = complete, controller disabled"
}
finish()
