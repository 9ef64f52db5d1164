import HugeAlloc

/// The regular files at `path`: the file itself, or every file below a
/// folder, sorted, leaving out libFuzzer dictionaries (`*.dict`).
func inputFiles(under path: String) -> [String] {
    guard let status = try? Sys.fileStatus(path), status.isDirectory else { return [path] }
    let names = ((try? Sys.directoryEntries(atPath: path)) ?? []).filter { !$0.hasSuffix(".dict") }
    return names.sorted().flatMap { inputFiles(under: path + "/" + $0) }
}
