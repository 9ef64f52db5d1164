import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

let canRunSharingTests = isRoot && freeHugepages(.huge2M) >= 32
let sharingGateReason: Comment = "needs root (setpriv, pagemap) and 32 free 2 MiB hugepages: run tools/test as root"

/// The hugealloc-share-worker executable built beside this test bundle.
let shareWorkerPath = builtProductPath("hugealloc-share-worker")

/// A runtime directory of one test's own, removed (it must be empty by
/// then: the test checks) when the test ends.
final class SharingSandbox {
    let runtimeDirectory: String
    var options: SharingOptions { SharingOptions(runtimeDirectory: runtimeDirectory) }

    init() throws {
        runtimeDirectory = "/tmp/hugealloc-sharing-test.\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: runtimeDirectory, withIntermediateDirectories: true)
        chmod(runtimeDirectory, 0o755)
    }

    /// What is left in the runtime directory, recursively.
    var leftovers: [String] {
        (FileManager.default.enumerator(atPath: runtimeDirectory)?.allObjects as? [String] ?? []).sorted()
    }

    deinit { try? FileManager.default.removeItem(atPath: runtimeDirectory) }
}

/// One hugealloc-share-worker process: a command per line in, a reply per line out.
final class ShareWorker {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var buffered = Data()
    /// The first line: "ready …" or "error …".
    private(set) var greeting = ""

    init(_ arguments: [String], sandbox: SharingSandbox, environment extra: [String: String] = [:], asUser uid: UInt32? = nil) throws {
        // A worker that already exited (refused, as some tests expect) must
        // not take this process down with SIGPIPE when it is written to.
        signal(SIGPIPE, SIG_IGN)
        var environment = ProcessInfo.processInfo.environment
        environment["HUGEALLOC_RUNTIME_DIR"] = sandbox.runtimeDirectory
        for (key, value) in extra { environment[key] = value }
        if let uid {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", shareWorkerPath] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: shareWorkerPath)
            process.arguments = arguments
        }
        process.environment = environment
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        greeting = readLine(timeout: 30) ?? "no answer"
    }

    var pid: Int32 { process.processIdentifier }
    var isReady: Bool { greeting.hasPrefix("ready") }
    /// Whether the worker has not exited yet (a killed one is reaped by Foundation).
    var isRunning: Bool { process.isRunning }

    /// The words after "ready".
    var readyWords: [String] { Array(greeting.split(separator: " ").dropFirst().map(String.init)) }

    /// Sends a command and returns its one-line reply.
    @discardableResult
    func send(_ command: String, timeout: TimeInterval = 30) -> String {
        try? input.fileHandleForWriting.write(contentsOf: (command + "\n").data(using: .utf8)!)
        return readLine(timeout: timeout) ?? "no answer to \(command)"
    }

    /// Sends a command without waiting for a reply.
    func post(_ command: String) {
        try? input.fileHandleForWriting.write(contentsOf: (command + "\n").data(using: .utf8)!)
    }

    func readLine(timeout: TimeInterval) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let newline = buffered.firstIndex(of: 10) {
                let line = String(decoding: buffered[buffered.startIndex..<newline], as: UTF8.self)
                buffered.removeSubrange(buffered.startIndex...newline)
                return line
            }
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { return nil }
            buffered.append(chunk)
        }
        return nil
    }

    /// Asks the worker to exit and waits for it.
    func exit() {
        if process.isRunning { _ = send("exit", timeout: 10) }
        process.waitUntilExit()
    }

    /// SIGKILL, then wait.
    func kill() {
        Foundation.kill(pid, SIGKILL)
        process.waitUntilExit()
    }
}
