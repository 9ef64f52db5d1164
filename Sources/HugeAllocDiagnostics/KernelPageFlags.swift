import HugeAlloc

import SystemPackage

/// The flags the kernel keeps for one physical page frame, as /proc/kpageflags
/// exports them (bit numbers from the kernel's admin-guide/mm/pagemap.rst and
/// include/uapi/linux/kernel-page-flags.h).
package struct KernelPageFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    package let rawValue: UInt64
    package init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Bit number → name, in bit order. Bits 0-26 are the documented, stable
    /// ones; 32-41 are the "kernel hacking" bits, subject to change.
    package static let names: [(bit: Int, name: String)] = [
        (0, "LOCKED"), (1, "ERROR"), (2, "REFERENCED"), (3, "UPTODATE"), (4, "DIRTY"),
        (5, "LRU"), (6, "ACTIVE"), (7, "SLAB"), (8, "WRITEBACK"), (9, "RECLAIM"),
        (10, "BUDDY"), (11, "MMAP"), (12, "ANON"), (13, "SWAPCACHE"), (14, "SWAPBACKED"),
        (15, "COMPOUND_HEAD"), (16, "COMPOUND_TAIL"), (17, "HUGE"), (18, "UNEVICTABLE"),
        (19, "HWPOISON"), (20, "NOPAGE"), (21, "KSM"), (22, "THP"), (23, "OFFLINE"),
        (24, "ZERO_PAGE"), (25, "IDLE"), (26, "PGTABLE"),
        (32, "RESERVED"), (33, "MLOCKED"), (34, "MAPPEDTODISK"), (35, "PRIVATE"),
        (36, "PRIVATE_2"), (37, "OWNER_PRIVATE"), (38, "ARCH"), (39, "UNCACHED"),
        (40, "SOFTDIRTY"), (41, "ARCH_2"),
    ]

    package static let locked = KernelPageFlags(rawValue: 1 << 0)
    package static let dirty = KernelPageFlags(rawValue: 1 << 4)
    package static let buddy = KernelPageFlags(rawValue: 1 << 10)
    package static let mmap = KernelPageFlags(rawValue: 1 << 11)
    package static let anon = KernelPageFlags(rawValue: 1 << 12)
    package static let compoundHead = KernelPageFlags(rawValue: 1 << 15)
    package static let compoundTail = KernelPageFlags(rawValue: 1 << 16)
    package static let huge = KernelPageFlags(rawValue: 1 << 17)
    package static let unevictable = KernelPageFlags(rawValue: 1 << 18)
    package static let hwPoison = KernelPageFlags(rawValue: 1 << 19)
    package static let noPage = KernelPageFlags(rawValue: 1 << 20)
    package static let thp = KernelPageFlags(rawValue: 1 << 22)
    package static let zeroPage = KernelPageFlags(rawValue: 1 << 24)
    package static let mlocked = KernelPageFlags(rawValue: 1 << 33)

    /// The names of the set bits ("HUGE", "COMPOUND_HEAD", ...), in bit order;
    /// an unnamed bit is "BIT_<n>".
    package var flagNames: [String] {
        var result: [String] = []
        for bit in 0..<64 where rawValue & (1 << UInt64(bit)) != 0 {
            result.append(Self.names.first { $0.bit == bit }?.name ?? "BIT_\(bit)")
        }
        return result
    }

    package var description: String { flagNames.joined(separator: ",") }

    /// The flags of page frame `pfn`: eight bytes at offset `pfn * 8` of
    /// /proc/kpageflags (below `fs`'s root). Needs root (CAP_SYS_ADMIN).
    package static func read(pfn: UInt64, in fs: KernelFiles = .live) throws(DiagnosticsError) -> KernelPageFlags {
        let path = "/proc/kpageflags"
        let fd: FileDescriptor
        do {
            fd = try Sys.openReadOnly(fs.path(path))
        } catch {
            throw .unreadable(UnreadableFile(path: fs.path(path), errno: error.errno))
        }
        defer { Sys.close(fd) }
        var word: UInt64 = 0
        let (offset, overflow) = Int(clamping: pfn).multipliedReportingOverflow(by: 8)
        guard !overflow else { throw .malformed(MalformedFile(path: fs.path(path), line: 0, text: "PFN \(pfn)", expected: "a PFN whose entry offset fits in 64 bits")) }
        let count: Int
        do throws(SystemCallError) {
            count = try unsafe withUnsafeMutableBytes(of: &word) { (buffer) throws(SystemCallError) -> Int in
                try unsafe Sys.pread(fd, into: buffer, offset: offset)
            }
        } catch {
            throw .unreadable(UnreadableFile(path: fs.path(path), errno: error.errno))
        }
        guard count == 8 else { throw .malformed(MalformedFile(path: fs.path(path), line: 0, text: "PFN \(pfn)", expected: "an 8-byte entry for the PFN")) }
        return KernelPageFlags(rawValue: UInt64(littleEndian: word))
    }
}
