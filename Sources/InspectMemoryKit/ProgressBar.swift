import Foundation
import Synchronization

/// A progress bar on standard error for long probes, drawn only when standard
/// error is a terminal. Progress is the kernel's own count of this process's
/// faulted-in memory (/proc/self/status `HugetlbPages:` for hugepages,
/// `VmRSS:` for base pages), sampled every 100 ms while the mapping is made.
final class ProgressBar: Sendable {
    private let stop = Mutex(false)
    private let done = DispatchSemaphore(value: 0)
    let totalBytes: Int
    let field: String
    let startBytes: Int

    /// Starts drawing when standard error is a terminal and the job is large
    /// enough to be worth it; nil otherwise.
    static func start(totalBytes: Int, hugepages: Bool, minimumBytes: Int = 256 << 20) -> ProgressBar? {
        guard isatty(2) == 1, totalBytes >= minimumBytes else { return nil }
        return ProgressBar(totalBytes: totalBytes, field: hugepages ? "HugetlbPages:" : "VmRSS:")
    }

    private init(totalBytes: Int, field: String) {
        self.totalBytes = totalBytes
        self.field = field
        self.startBytes = Self.sample(field)
        let thread = Thread { [self] in
            while !stop.withLock({ $0 }) {
                let line = Self.render(done: Self.sample(field) - startBytes, total: totalBytes, width: 30)
                FileHandle.standardError.write(Data("\r\(line)".utf8))
                Thread.sleep(forTimeInterval: 0.1)
            }
            done.signal()
        }
        thread.start()
    }

    /// Stops drawing and clears the line.
    func finish() {
        stop.withLock { $0 = true }
        done.wait()
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }

    /// Bytes of `field` in /proc/self/status.
    static func sample(_ field: String) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix(field) {
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
        }
        return 0
    }

    /// "[#########.....................]  30%  300M of 1G".
    static func render(done: Int, total: Int, width: Int) -> String {
        let fraction = total > 0 ? min(1, max(0, Double(done) / Double(total))) : 0
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        let percent = String(Int(fraction * 100)).leftPadded(to: 3)
        return "[\(bar)] \(percent)%  \(megabytes(max(0, min(done, total)))) of \(megabytes(total)) mapped"
    }

    static func megabytes(_ bytes: Int) -> String { "\(bytes >> 20)M" }
}

extension String {
    func leftPadded(to width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
}
