import ArgumentParser
import HugeAlloc

public struct InspectMemory: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "inspect-memory",
        abstract: "Diagnose hugepages, NUMA placement and DMA memory on this machine.",
        subcommands: [
            HugepagesCommand.self, ProcessCommand.self, TranslateCommand.self,
            DoctorCommand.self, SetupCommand.self,
        ]
    )
    public init() {}
    public func run() throws {}
}
