import HugeAlloc

/// The process side of /proc, for the diagnostics that look at every process.
extension KernelFiles {
    /// Every process ID listed in /proc, ascending.
    package func processIDs() -> [Int32] {
        entries("/proc").compactMap { Int32($0) }.filter { $0 > 0 }.sorted()
    }

    /// The command name of a process (/proc/PID/comm), or nil when it has exited.
    package func command(of pid: Int32) -> String? {
        textIfReadable("/proc/\(pid)/comm").map { String($0.trimmingWhitespace()) }
    }
}
