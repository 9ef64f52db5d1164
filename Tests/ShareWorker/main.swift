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

/// Who else may attach, from the environment (SHARE_ALLOW_UID, SHARE_ALLOW_GID).
var options = SharingOptions()
if let uid = ProcessInfo.processInfo.environment["SHARE_ALLOW_UID"].flatMap(UInt32.init) { options.allowedUsers = [uid] }
if let gid = ProcessInfo.processInfo.environment["SHARE_ALLOW_GID"].flatMap(UInt32.init) { options.allowedGroup = gid }

// SHARE_OCCUPY (hexadecimal): map something there first, as a library
// loaded early might, to see attach refuse the occupied range.
if let text = ProcessInfo.processInfo.environment["SHARE_OCCUPY"], let address = UInt(text.replacingOccurrences(of: "0x", with: ""), radix: 16) {
    let p = mmap(UnsafeMutableRawPointer(bitPattern: address), 1 << 21, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
    if p == MAP_FAILED { fail(POSIXError(.init(rawValue: errno)!)) }
}

var mapping: SharedMapping?
do {
    switch mode {
    case "publish-mapping":
        mapping = try SharedMapping.publish(name: name, length: Int(arguments[2])!, options: options)
    case "attach-mapping":
        mapping = try SharedMapping.attach(name: name, options: options)
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
    case "physical":  // physical OFFSET: the physical address this process reads for the byte
        guard let m = mapping else { break }
        answer("physical \(m.physicalAddress(of: m.base + Int(words[1])!)?.rawValue ?? 0)")
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
