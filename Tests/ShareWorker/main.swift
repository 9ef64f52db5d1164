// A process for the multi-process tests: publishes or attaches to a shared
// object, then follows one command per line on standard input and answers
// one line on standard output. Tests spawn several and kill some.
import Foundation
import HugeAlloc


let arguments = Array(CommandLine.arguments.dropFirst())
func answer(_ line: String) { FileHandle.standardOutput.write((line + "\n").data(using: .utf8)!) }
func fail(_ error: Error) -> Never {
    answer("error \(error)")
    exit(3)
}

guard let mode = arguments.first else {
    FileHandle.standardError.write("usage: hugealloc-share-worker MODE NAME [ARGS]\n".data(using: .utf8)!)
    exit(2)
}
let name = arguments.count > 1 ? arguments[1] : ""

var mapping: SharedMapping?
do {
    switch mode {
    case "publish-mapping":
        mapping = try SharedMapping.publish(name: name, length: Int(arguments[2])!)
    case "attach-mapping":
        mapping = try SharedMapping.attach(name: name)
    default:
        answer("error unknown mode \(mode)")
        exit(2)
    }
} catch { fail(error) }

if let m = mapping { answer("ready \(UInt(bitPattern: m.base)) \(m.length)") }

while let line = readLine() {
    let words = line.split(separator: " ").map(String.init)
    guard let command = words.first else { continue }
    switch command {
    case "write":  // write OFFSET VALUE (a 64-bit word)
        guard let m = mapping else { break }
        m.base.storeBytes(of: UInt64(words[2])!, toByteOffset: Int(words[1])!, as: UInt64.self)
        answer("ok")
    case "read":
        guard let m = mapping else { break }
        answer("value \(m.base.load(fromByteOffset: Int(words[1])!, as: UInt64.self))")
    case "participants":
        answer("participants \((mapping?.participants ?? []).map { "\($0.pid):\($0.isAlive)" }.joined(separator: ","))")
    case "exit":
        mapping = nil
        answer("bye")
        exit(0)
    default:
        answer("error unknown command \(command)")
    }
}
mapping = nil
