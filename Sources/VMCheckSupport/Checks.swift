#if canImport(Glibc)
import Glibc
#endif

/// The small harness the guest-side checks share (numa-vm-check,
/// dma-vm-check): each check prints PASS or FAIL with a detail, and the
/// tally line "N passed, M failed" that the host scripts read.

/// Why a check failed.
public struct CheckFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Checks run so far. The checks run on the main thread, one after another.
nonisolated(unsafe) public var passed = 0
nonisolated(unsafe) public var failed = 0

/// Runs one check: `body` returns a detail for the PASS line or throws.
public func check(_ name: String, _ body: () throws -> String) {
    do {
        let detail = try body()
        passed += 1
        print("PASS \(name)\(detail.isEmpty ? "" : ": \(detail)")")
    } catch {
        failed += 1
        print("FAIL \(name): \(error)")
    }
    fflush(nil)
}

/// Throws `message` unless `condition` holds.
public func expect(_ condition: Bool, _ message: @autoclosure () -> String) throws {
    if !condition { throw CheckFailure(message()) }
}

/// The physical address of the byte at `pointer`, read from
/// /proc/self/pagemap by the check itself (not through the library, so a
/// check can compare the library's answer with the kernel's); nil when the
/// page is not present or the kernel hides frame numbers (not root).
public func pagemapPhysicalAddress(_ pointer: UnsafeRawPointer) -> UInt64? {
    let fd = pagemapDescriptor
    guard fd >= 0 else { return nil }
    let virtual = UInt(bitPattern: pointer)
    var entry: UInt64 = 0
    let n = pread(fd, &entry, 8, off_t(virtual / 4096 * 8))
    guard n == 8, entry & (1 << 63) != 0 else { return nil }
    let pfn = entry & ((1 << 55) - 1)
    return pfn == 0 ? nil : pfn * 4096 + UInt64(virtual % 4096)
}

/// /proc/self/pagemap, opened once on first use.
let pagemapDescriptor = open("/proc/self/pagemap", O_RDONLY)
