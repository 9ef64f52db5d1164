import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Synchronization
import Testing

/// The heap suites map at most a few dozen 2 MiB pages at a time.
let canRunHeapTests = isRoot && freeHugepages(.huge2M) >= 64
let heapGateReason: Comment = "needs root (physical addresses from pagemap) and 64 free 2 MiB hugepages: run tools/test as root"

let twoMiB = 2 << 20

extension DMAHeap.Options {
    /// The tests' heaps: a large block's run is looked for among all but 64
    /// of the pages a test run counts on (``hugepagesForATestRun``), not
    /// within the default bounded look. On a fragmented machine the free pool's runs of
    /// two and more pages are few and scattered (512 pages reserved after
    /// compaction here came in 322 runs, 232 of one page), so a bounded
    /// look can miss every one; the suites that are about something else
    /// must not fail for it. The bounded look itself is tested on its own.
    static func forTests(retentionBytes: Int = 0, checked: Bool = false, maximumBytes: Int = 64 << 30) -> Self {
        Self(retentionBytes: retentionBytes, checked: checked, maximumBytes: maximumBytes,
             contiguousSearchBytes: (hugepagesForATestRun - 64) * twoMiB)
    }
}

/// The physical address of every 4 KiB page touching `[address, address + length)`,
/// from one `pread(2)` of `/proc/self/pagemap` opened for this call (never the
/// heap's own table); nil for a page that is not present or whose frame is hidden.
func freshPhysicalPages(_ address: UInt, length: Int) -> [UInt64?] {
    let page = UInt(getpagesize())
    let first = address / page
    let last = (address + UInt(max(length, 1)) - 1) / page
    let count = Int(last - first + 1)
    var words = [UInt64](repeating: 0, count: count)
    let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return Array(repeating: nil, count: count) }
    defer { close(fd) }
    let bytes = words.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(first * 8)) }
    guard bytes == count * 8 else { return Array(repeating: nil, count: count) }
    return words.map { word in
        let pfn = word & ((1 << 55) - 1)
        return word & (1 << 63) != 0 && pfn != 0 ? pfn * UInt64(page) : nil
    }
}

/// Where `[start, start + length)` is not IOVA-contiguous from
/// `expectedIOVA`: for the first byte of each 4 KiB page of the range (and
/// its first byte), the physical address in a fresh pagemap read must be
/// `expectedIOVA + offset`. Empty when the whole range is contiguous there.
func contiguityMismatches(_ start: UInt, length: Int, expectedIOVA: UInt64) -> [String] {
    let page = UInt(getpagesize())
    let frames = freshPhysicalPages(start, length: length)
    var mismatches: [String] = []
    for (i, frame) in frames.enumerated() {
        let pageStart = (start / page + UInt(i)) * page
        let byte = max(pageStart, start)
        let offset = UInt64(byte - start)
        let expected = expectedIOVA + offset
        let actual = frame.map { $0 + UInt64(byte % page) }
        if actual != expected {
            mismatches.append("offset \(offset): pagemap \(actual.map { "0x" + String($0, radix: 16) } ?? "absent"), "
                              + "expected 0x\(String(expected, radix: 16))")
            if mismatches.count >= 4 { break }
        }
    }
    return mismatches
}

/// Whether every byte of `[pointer, pointer + count)` is `value` (one `memcmp(3)`
/// of the range against itself shifted by one byte).
func allBytes(_ pointer: UnsafeRawPointer, _ count: Int, are value: UInt8) -> Bool {
    guard count > 0 else { return true }
    guard pointer.load(as: UInt8.self) == value else { return false }
    return memcmp(pointer, pointer + 1, count - 1) == 0
}

/// A size log-uniform in `1...maximum`.
func logUniformSize(upTo maximum: Int, using generator: inout some RandomNumberGenerator) -> Int {
    let x = Double.random(in: 0...log(Double(maximum)), using: &generator)
    return min(maximum, max(1, Int(exp(x))))
}

/// A memory event handler that records what it hears and can be told to refuse additions.
final class HeapEventRecorder: Sendable {
    struct Refused: Error, CustomStringConvertible {
        var description: String { "refused by the test's handler" }
    }

    let events = Mutex<[MemoryEvent]>([])
    let refusing: Bool
    init(refusing: Bool = false) { self.refusing = refusing }

    func handle(_ event: MemoryEvent) throws {
        if refusing, case .added = event { throw Refused() }
        events.withLock { $0.append(event) }
    }

    var recorded: [MemoryEvent] { events.withLock { $0 } }
    var added: [MemoryRegion] { recorded.compactMap { if case .added(let r) = $0 { r } else { nil } } }
    var removed: [MemoryRegion] { recorded.compactMap { if case .removed(let r) = $0 { r } else { nil } } }

    /// The regions added and not removed since, in the order they were added.
    var mapped: [MemoryRegion] {
        var result: [MemoryRegion] = []
        for event in recorded {
            switch event {
            case .added(let r): result.append(r)
            case .removed(let r): result.removeAll { $0.address == r.address }
            }
        }
        return result
    }
}

/// The error `body` throws, nil when it returns (an error of another type is an issue).
func heapError<T>(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> T) -> DMAHeapError? {
    do {
        _ = try body()
        return nil
    } catch let error as DMAHeapError {
        return error
    } catch {
        Issue.record("not a DMAHeapError: \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// Bytes of hugetlb memory this process maps beyond `baseline`.
func hugetlbBytesSince(_ baseline: Int) -> Int { processHugetlbBytes() - baseline }

extension DMAHeap {
    /// `allocate`, tried again (up to four times) when a large block fails
    /// with `.growthFailed(… .insufficientHugepages)`. When the first windows
    /// hold no run, the contiguous search maps every free 2 MiB page of the
    /// machine at once, so a page another process (or another thread) takes
    /// in the meantime fails the block; `HeapThreadTests` pins that down. The
    /// other suites are about something else and try again.
    func allocateRetryingPoolRace(
        _ size: Int, alignment: Int = 64, boundary: Int? = nil, node: Int? = nil, zeroed: Bool = false
    ) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        var attempt = 0
        while true {
            do {
                return try allocate(size, alignment: alignment, boundary: boundary, node: node, zeroed: zeroed)
            } catch {
                attempt += 1
                guard attempt < 4, size > twoMiB - 64, case .growthFailed(_, _, .insufficientHugepages) = error else { throw error }
            }
        }
    }
}

/// `heap.allocate(size)` (tried again on a pool race, as
/// ``DMAHeap/allocateRetryingPoolRace(_:alignment:boundary:node:zeroed:)``),
/// recording an issue instead of throwing (for test threads).
func allocateOrRecord(_ heap: DMAHeap, _ size: Int) -> UnsafeMutableRawPointer? {
    do { return try heap.allocateRetryingPoolRace(size) } catch {
        Issue.record("allocate(\(size)) failed: \(error)")
        return nil
    }
}

extension DMAHeap {
    /// The length of the large block holding `pointer`, as its memory event
    /// told: 4 MiB of 2 MiB pages for a 3 MiB request, or a whole 1 GiB page
    /// when the bounded search found no run and the machine had one free.
    /// Records an issue when the block is neither.
    func largeBlockLength(holding pointer: UnsafeMutableRawPointer, runBytes: Int) -> Int {
        let address = UInt(bitPattern: pointer)
        guard let region = events.regions.first(where: { $0.address <= address && address < $0.address + UInt($0.length) })
        else {
            Issue.record("no memory event covers the large block at \(pointer)")
            return 0
        }
        let expected = region.pageSize == .huge1G ? 1 << 30 : runBytes
        #expect(region.length == expected, "large block of \(region.length) bytes on \(region.pageSize) pages")
        return region.length
    }
}
