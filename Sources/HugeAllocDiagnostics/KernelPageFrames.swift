import HugeAlloc

import SystemPackage

/// An open reader of the kernel's per-frame tables: /proc/kpageflags (the
/// flags of each physical page frame) and /proc/kpagecount (how many times
/// each frame is mapped), one 64-bit word per PFN at offset `pfn * 8`.
///
/// Both files are opened once for the reader's lifetime and closed when it
/// goes away. They are readable by root only (mode 0400) and hold the state
/// of every frame, so callers check for CAP_SYS_ADMIN before opening them.
/// Reads `/proc/kpageflags` and `/proc/kpagecount` with `pread(2)`.
package struct KernelPageFrames: ~Copyable {
    let flagsFile: FileDescriptor
    let countFile: FileDescriptor
    let flagsPath: String
    let countPath: String

    /// Opens /proc/kpageflags and /proc/kpagecount below `fs`'s root.
    package init(in fs: KernelFiles = .live) throws(DiagnosticsError) {
        let flagsPath = fs.path("/proc/kpageflags")
        let countPath = fs.path("/proc/kpagecount")
        let flags: FileDescriptor
        let counts: FileDescriptor
        do {
            flags = try Sys.openReadOnly(flagsPath)
        } catch {
            throw .unreadable(UnreadableFile(path: flagsPath, errno: error.errno))
        }
        do {
            counts = try Sys.openReadOnly(countPath)
        } catch {
            Sys.close(flags)
            throw .unreadable(UnreadableFile(path: countPath, errno: error.errno))
        }
        (flagsFile, countFile, self.flagsPath, self.countPath) = (flags, counts, flagsPath, countPath)
    }

    deinit {
        Sys.close(flagsFile)
        Sys.close(countFile)
    }

    /// The flags of frame `pfn`; nil past the end of the table (no such frame).
    package func flags(pfn: UInt64) throws(DiagnosticsError) -> KernelPageFlags? {
        try word(pfn: pfn, fd: flagsFile, path: flagsPath).map(KernelPageFlags.init(rawValue:))
    }

    /// How many page-table entries map frame `pfn` (for a hugetlb page, the
    /// mappings of the whole hugepage); nil past the end of the table.
    package func mapCount(pfn: UInt64) throws(DiagnosticsError) -> Int? {
        try word(pfn: pfn, fd: countFile, path: countPath).map { Int(clamping: $0) }
    }

    private func word(pfn: UInt64, fd: FileDescriptor, path: String) throws(DiagnosticsError) -> UInt64? {
        let (offset, overflow) = Int(clamping: pfn).multipliedReportingOverflow(by: 8)
        guard !overflow else { return nil }
        var word: UInt64 = 0
        let count: Int
        do throws(SystemCallError) {
            count = try unsafe withUnsafeMutableBytes(of: &word) { (buffer) throws(SystemCallError) -> Int in
                try unsafe Sys.pread(fd, into: buffer, offset: offset)
            }
        } catch {
            throw .unreadable(UnreadableFile(path: path, errno: error.errno))
        }
        guard count == 8 else { return nil }
        return UInt64(littleEndian: word)
    }
}
