import ArgumentParser
import HugeAlloc

struct HugeAllocBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hugealloc-bench",
        abstract: "Benchmarks for HugeAlloc (build with -c release).",
        subcommands: [MappingBench.self]
    )
}
HugeAllocBench.main()
