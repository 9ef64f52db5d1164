/// The one memlock check: would locking or pinning more bytes pass
/// RLIMIT_MEMLOCK? Used before `mlock` (mappings), before the kernel pins
/// pages for io_uring fixed buffers, and by `inspect-memory doctor`.
package enum MemlockCheck {
    /// The shortage for locking `needed` more bytes with `alreadyLocked`
    /// locked under a soft limit of `limit` bytes (nil: unlimited), or nil
    /// when it fits or CAP_IPC_LOCK lifts the limit.
    package static func shortage(needed: Int, alreadyLocked: Int, limit: Int?, hasIPCLock: Bool) -> MemlockShortage? {
        guard !hasIPCLock, let limit else { return nil }
        let (total, overflow) = alreadyLocked.addingReportingOverflow(needed)
        guard overflow || total > limit else { return nil }
        return MemlockShortage(needed: needed, alreadyLocked: alreadyLocked, limit: limit)
    }

    /// The same check for this process now: `getrlimit(RLIMIT_MEMLOCK)`,
    /// VmLck of /proc/self/status and CAP_IPC_LOCK from its CapEff.
    package static func shortage(needed: Int) -> MemlockShortage? {
        guard let soft = (try? Sys.memlockLimit())?.soft, !hasIPCLock() else { return nil }
        return shortage(needed: needed, alreadyLocked: lockedBytes(), limit: soft, hasIPCLock: false)
    }

    /// Bytes this process has locked already (/proc/self/status `VmLck`).
    package static func lockedBytes(in files: KernelFiles = .live) -> Int {
        files.kilobyteField("/proc/self/status", key: "VmLck") ?? 0
    }

    /// Whether CAP_IPC_LOCK is effective (bit 14 of `CapEff` in /proc/self/status).
    package static func hasIPCLock(in files: KernelFiles = .live) -> Bool {
        ((try? effectiveCapabilities(in: files)) ?? 0) & (1 << 14) != 0
    }

    /// The `CapEff:` mask of /proc/self/status.
    package static func effectiveCapabilities(in files: KernelFiles = .live) throws(KernelFileError) -> UInt64 {
        let path = files.path("/proc/self/status")
        for (number, line) in KernelText.lines(try files.text("/proc/self/status")) where line.hasPrefix("CapEff:") {
            let hex = line.dropFirst("CapEff:".count).trimmingWhitespace()
            guard !hex.isEmpty, hex.count <= 16, let mask = UInt64(hex, radix: 16) else {
                throw .malformed(path: path, line: number, text: String(line),
                                 expected: "\"CapEff:\" and a 64-bit hexadecimal mask")
            }
            return mask
        }
        throw .malformed(path: path, line: 0, text: "", expected: "a \"CapEff:\" line")
    }
}
