// hugealloc-fuzz: libFuzzer target for every parser of kernel text.
//
// One entry point, `LLVMFuzzerTestOneInput`; the first byte of an input picks
// the parser (see `KernelTextParser.all`), the rest is the file's text.
//
// Two builds, one source:
//   swift build -c release --product hugealloc-fuzz -Xswiftc -sanitize=fuzzer,address \
//       -Xlinker --export-dynamic-symbol=LLVMFuzzerRunDriver
//     links libFuzzer; `main` below hands the command line to its driver, so
//     every libFuzzer flag works (-max_total_time=60, -runs=0, a crash file).
//   swift build (plain)
//     has no libFuzzer; `main` replays the files and folders it is given
//     (the seed corpus and its regression inputs) through the same entry point.
//
// Why `main` looks the driver up: SwiftPM links every executable with
// `--defsym main=<module>_main`, which takes precedence over libFuzzer's own
// `main`, so libFuzzer only runs if our `main` calls `LLVMFuzzerRunDriver`.
// The plain build has no such symbol, so it cannot be named at link time.

import Glibc
import HugeAlloc

/// libFuzzer's `int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*)(const uint8_t *, size_t))`.
typealias FuzzerDriver = @convention(c) (
    UnsafeMutablePointer<CInt>,
    UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "LLVMFuzzerRunDriver") {
    let driver = unsafeBitCast(symbol, to: FuzzerDriver.self)
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    // A closure, not `fuzzOneInput` itself: naming the @_cdecl function as a C
    // pointer here would emit a second `LLVMFuzzerTestOneInput` in this file.
    exit(driver(&argc, &argv) { data, size in fuzzOneInput(data, size) })
}

let paths = CommandLine.arguments.dropFirst().filter { !$0.hasPrefix("-") }
if paths.isEmpty {
    print("""
        usage: hugealloc-fuzz FILE-OR-FOLDER...
        Replays each input through the parsers (this build has no libFuzzer; see docs/testing.md to fuzz).
        """)
    exit(2)
}
var replayed = 0
for path in paths {
    for file in inputFiles(under: path) {
        guard let bytes = try? Sys.readFile(atPath: file) else {
            print("hugealloc-fuzz: cannot read \(file)")
            exit(1)
        }
        _ = bytes.withUnsafeBufferPointer { fuzzOneInput($0.baseAddress, $0.count) }
        replayed += 1
    }
}
print("hugealloc-fuzz: \(replayed) inputs replayed, none trapped")
