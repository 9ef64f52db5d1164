import Foundation
import HugeAllocTestSupport

/// The inspect-memory executable built beside this test bundle.
let inspectMemoryPath = builtProductPath("inspect-memory")

/// A running `inspect-memory` with pipes on its standard streams.
final class RunningCommand {
    let process = Process()
    let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()

    init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: inspectMemoryPath)
        process.arguments = arguments
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
    }

    /// Reads standard output until it holds one complete JSON object.
    func readJSONObject(timeout: TimeInterval = 30) throws -> [String: Any] {
        var data = Data()
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let chunk = stdout.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            data.append(chunk)
            if let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] { return object }
        }
        let err = String(decoding: stderr.fileHandleForReading.availableData, as: UTF8.self)
        throw CocoaError(.fileReadCorruptFile, userInfo: [NSLocalizedDescriptionKey: "no JSON from probe: \(String(decoding: data, as: UTF8.self)) \(err)"])
    }
}

func run(_ arguments: [String]) throws -> (status: Int32, out: String, err: String) {
    let command = try RunningCommand(arguments)
    try command.stdin.fileHandleForWriting.close()
    let out = command.stdout.fileHandleForReading.readDataToEndOfFile()
    let err = command.stderr.fileHandleForReading.readDataToEndOfFile()
    command.process.waitUntilExit()
    return (command.process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
}

/// Decodes `inspect-memory … --json` output.
func jsonObject(_ text: String) throws -> Any {
    try JSONSerialization.jsonObject(with: Data(text.utf8))
}
