import ArgumentParser

/// The root command. Each benchmark is a subcommand in its own file
/// (`MempoolBench.swift`, …): add yours to `subcommands` below.
struct HugeAllocBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hugealloc-bench",
        abstract: "Benchmarks for HugeAlloc (build with -c release).",
        subcommands: [
            MappingBench.self, TranslateBench.self, ContiguousBench.self, MempoolBench.self, PacketsBench.self,
            CreateBench.self, HeapBench.self, AFXDPBench.self, PipelineBench.self,
        ]
    )
}

HugeAllocBench.main()
