import ArgumentParser
import Foundation

extension InspectMemory {
    /// Parses the command line and runs the command. Help and version go to
    /// stdout with status 0; every error is one line on stderr ("inspect-memory:
    /// error: …") with status 64 for usage errors and 1 for failures.
    public static func mainReportingOneLine(_ arguments: [String]? = nil) -> Never {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            Foundation.exit(0)
        } catch let exit as ExitCode {
            Foundation.exit(exit.rawValue)  // the command already reported
        } catch {
            let code: Int32
            switch error {
            case is UsageError: code = 64
            case is CommandFailure: code = 1
            default: code = exitCode(for: error).rawValue
            }
            if code == 0 { exit(withError: error) }  // --help, --version
            let message: String
            if let usage = error as? UsageError { message = usage.description }
            else if let failure = error as? CommandFailure { message = failure.description }
            else {
                message = self.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            }
            var line = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
            if code == 64 { line += " (see inspect-memory help)" }
            FileHandle.standardError.write(Data("inspect-memory: error: \(line)\n".utf8))
            Foundation.exit(code)
        }
    }
}
