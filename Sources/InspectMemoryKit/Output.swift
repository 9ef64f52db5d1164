import ArgumentParser
import Foundation

/// A command that failed: one line on standard error, exit status 1.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }
}

/// Prints `value` as JSON on standard output (see ``JSONOutput``).
func printJSON<T: Encodable>(_ value: T) throws {
    try JSONOutput.print(value)
}
