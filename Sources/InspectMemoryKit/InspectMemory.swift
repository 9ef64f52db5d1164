import ArgumentParser
import Foundation
import HugeAlloc

public struct InspectMemory: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "inspect-memory",
        abstract: "Diagnose hugepages, NUMA placement and DMA memory on this machine.",
        subcommands: [
            HugepagesCommand.self, ProcessCommand.self, TranslateCommand.self,
            ProbeCommand.self, DoctorCommand.self, SetupCommand.self,
        ]
    )
    public init() {}

    /// Runs the command line: exit 0 on success, 1 with one line on standard
    /// error when an operation fails, 64 for usage errors.
    public static func run(arguments: [String]? = nil) -> Never {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            Foundation.exit(0)
        } catch let failure as CommandFailure {
            FileHandle.standardError.write(Data("inspect-memory: \(failure)\n".utf8))
            Foundation.exit(1)
        } catch {
            exitReportingOneLine(error)
        }
    }
}
