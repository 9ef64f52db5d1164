import ArgumentParser
import Foundation
import HugeAlloc
import HugeAllocDiagnostics

/// Options every diagnostic command takes.
struct CommonOptions: ParsableArguments {
    @Flag(help: "Print JSON instead of a table.")
    var json = false

    /// A directory standing in for "/" when reading /proc and /sys (fixture trees in tests).
    @Option(help: .hidden)
    var root: String = "/"

    var fs: KernelFiles { KernelFiles(root: root) }
}

/// A usage error: one line on stderr and exit status 64 (EX_USAGE).
struct UsageError: Error, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }
}

extension UsageError {
    /// ArgumentParser maps a ValidationError to exit status 64.
    var validation: ValidationError { ValidationError(description) }
}

func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

/// Parses "0x7f00…" or "7f00…" as a virtual address.
func parseAddress(_ text: String) -> UInt? {
    var digits = Substring(text)
    if digits.hasPrefix("0x") || digits.hasPrefix("0X") { digits = digits.dropFirst(2) }
    guard !digits.isEmpty, digits.count <= 16, digits.allSatisfy(\.isHexDigit) else { return nil }
    return UInt(digits, radix: 16)
}

/// Left-aligned columns separated by two spaces (a ``TextTable`` without
/// indent: control characters in cells are escaped).
func table(_ header: [String], _ rows: [[String]]) -> String {
    var table = TextTable(header, indent: 0)
    for row in rows { table.append(row) }
    return table.render()
}

/// "2M" for a page size, "-" for none.
func sizeText(_ bytes: Int?) -> String { bytes.map { ByteCount.format($0) } ?? "-" }

/// Bytes as "123456 (1.2 MiB)" for people.
func bytesText(_ bytes: Int) -> String {
    if bytes >= 1 << 20 { return "\(bytes) (\(ByteCount.format(bytes)))" }
    return "\(bytes)"
}
