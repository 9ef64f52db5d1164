import ArgumentParser
import HugeAlloc

struct HugeAllocBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hugealloc-bench",
        abstract: "Benchmarks for HugeAlloc (build with -c release)."
    )
}
HugeAllocBench.main()
