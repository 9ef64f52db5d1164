import Foundation

/// JSON output shared by every `inspect-memory` command.
///
/// Keys are sorted so output is stable and diffable; `nil` values must be
/// encoded explicitly by the caller's `encode(to:)` (with `encode`, not
/// `encodeIfPresent`) when scripts rely on a `null`.
public enum JSONOutput {
    /// The JSON text of `value`: pretty-printed, sorted keys, unescaped slashes.
    public static func string(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        return String(decoding: data, as: UTF8.self)
    }

    /// Prints the JSON text of `value` and a newline to standard output.
    public static func print(_ value: some Encodable) throws {
        Swift.print(try string(value))
    }
}
