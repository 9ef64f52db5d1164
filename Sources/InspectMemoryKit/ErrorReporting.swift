import ArgumentParser
import Foundation

extension InspectMemory {
    /// Reports an error as one line on stderr ("inspect-memory: …") and exits:
    /// 64 for usage errors (including ArgumentParser's), 1 for failures.
    /// Help and version requests print in full to stdout with status 0.
    static func exitReportingOneLine(_ error: any Error) -> Never {
        if let exit = error as? ExitCode { Foundation.exit(exit.rawValue) }  // already reported
        let code: Int32
        let message: String
        switch error {
        case let usage as UsageError:
            code = 64
            message = usage.description
        case let failure as CommandFailure:
            code = 1
            message = failure.description
        default:
            code = exitCode(for: error).rawValue
            if code == 0 { exit(withError: error) }  // --help, --version
            let text = self.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            message = unknownSubcommand(text) ?? (text.hasPrefix("Error: ") ? String(text.dropFirst(7)) : text)
        }
        let line = code == 64 ? message + " (see inspect-memory help)" : message
        FileHandle.standardError.write(Data("inspect-memory: \(line)\n".utf8))
        Foundation.exit(code)
    }

    /// "unknown command 'x'; commands: …" when the first argument is a word
    /// that names no subcommand (the default subcommand would otherwise
    /// report it as an unexpected argument).
    private static func unknownSubcommand(_ message: String) -> String? {
        let arguments = CommandLine.arguments.dropFirst()
        guard let first = arguments.first, !first.hasPrefix("-"),
              message.contains("Unexpected argument '\(first)'") else { return nil }
        let names = configuration.subcommands.compactMap { $0.configuration.commandName }
        guard !names.contains(first) else { return nil }
        return "unknown command '\(first)'; commands: \(names.joined(separator: ", "))"
    }
}
