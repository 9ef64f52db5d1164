import ArgumentParser
import Foundation
import HugeAlloc
import HugeAllocDiagnostics

/// The `inspect-memory` command. With no subcommand it runs ``SummaryCommand``.
///
/// Exit status: 0 on success, 1 on failure (one line on standard error),
/// 64 on a usage error.
public struct InspectMemory: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "inspect-memory",
        abstract: "Diagnose hugepages, NUMA placement and DMA memory on this machine.",
        subcommands: [
            SummaryCommand.self, HugepagesCommand.self, NumaCommand.self, ProcessCommand.self,
            TranslateCommand.self, ProbeCommand.self, DoctorCommand.self, SetupCommand.self,
            MapCommand.self, MetricsCommand.self, WatchCommand.self, PoolsCommand.self,
        ],
        defaultSubcommand: SummaryCommand.self
    )
    public init() {}

    /// Prints `message` as one line on standard error and returns the exit
    /// code to throw: `throw InspectMemory.failure("...")`.
    public static func failure(_ message: String) -> ExitCode {
        let line = message.split(whereSeparator: \.isNewline).joined(separator: " ")
        FileHandle.standardError.write(Data("inspect-memory: \(line)\n".utf8))
        return .failure
    }

    /// Runs the command line: exit 0 on success, 1 with one line on standard
    /// error when an operation fails, 64 for usage errors.
    public static func run(arguments: [String]? = nil) -> Never {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            Foundation.exit(0)
        } catch let failure as CommandFailure {
            _ = Self.failure(failure.description)
            Foundation.exit(1)
        } catch {
            exitReportingOneLine(error)
        }
    }
}
