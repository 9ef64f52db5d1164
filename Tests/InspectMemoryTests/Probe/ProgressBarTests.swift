import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing
@testable import InspectMemoryKit

@Suite struct ProgressBarTests {
    @Test func rendersFractionPercentAndSizes() {
        #expect(ProgressBar.render(done: 0, total: 1 << 30, width: 10) == "[..........]   0%  0M of 1024M mapped")
        #expect(ProgressBar.render(done: 512 << 20, total: 1 << 30, width: 10) == "[#####.....]  50%  512M of 1024M mapped")
        #expect(ProgressBar.render(done: 2 << 30, total: 1 << 30, width: 10) == "[##########] 100%  1024M of 1024M mapped")
        #expect(ProgressBar.render(done: -5, total: 0, width: 4) == "[....]   0%  0M of 0M mapped")
    }

    @Test func samplesTheKernelsOwnCounters() {
        #expect(ProgressBar.sample("VmRSS:") > 0)
        #expect(ProgressBar.sample("NoSuchField:") == 0)
    }

    @Test func smallJobsDrawNothing() {
        #expect(ProgressBar.start(totalBytes: 1 << 20, hugepages: true) == nil)
    }

    static let script = ["/usr/bin/script", "/bin/script"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(.enabled(if: isRoot && freeHugepages(.huge2M) >= 300 && script != nil, "needs root, 300 free 2 MiB pages and script(1) for a pseudo-terminal"),
          .usesHugepagePool)
    func aLongProbeOnATerminalDrawsTheBarAndAPipeGetsNone() throws {
        // On a pseudo-terminal (script(1)): the bar is drawn on standard error.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(Self.script))
        process.arguments = ["-qec", "\(inspectMemoryPath) probe --page-size 2M --pages 300", "/dev/null"]
        let out = Pipe()
        process.standardOutput = out
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(text.contains("% ") && text.contains("of 600M mapped"), "no progress bar in: \(text.prefix(300))")
        // Through a pipe: no bar.
        let piped = try run(["probe", "--page-size", "2M", "--pages", "300"])
        #expect(piped.status == 0 && !piped.err.contains("mapped"))
    }
}
