import HugeAlloc
import HugeAllocDiagnostics

/// One parser of kernel text under fuzzing. An input is the selector byte
/// followed by the file's text; a parser may throw on bad text (that is its
/// job) but must never trap.
struct KernelTextParser: Sendable {
    /// The first byte of an input for this parser: a letter, so the seed
    /// corpus stays readable text.
    var selector: UInt8
    /// The corpus folder: Tests/FuzzCorpus/<name>.
    var name: String
    var run: @Sendable ([UInt8]) -> Void

    init(_ selector: Character, _ name: String, _ run: @escaping @Sendable ([UInt8]) -> Void) {
        self.selector = selector.asciiValue!
        self.name = name
        self.run = run
    }

    static let all: [KernelTextParser] = [
        KernelTextParser("k", "meminfo", meminfo),
        KernelTextParser("m", "mounts", mounts),
        KernelTextParser("c", "cpulist", cpulist),
        KernelTextParser("d", "distance", distance),
        KernelTextParser("t", "thp-mode", thpMode),
        KernelTextParser("h", "hugepage-directory", hugepageDirectory),
        KernelTextParser("n", "sysfs-counter", sysfsCounter),
        KernelTextParser("s", "smaps", smaps),
        KernelTextParser("u", "numa_maps", numaMaps),
        KernelTextParser("p", "maps", maps),
        KernelTextParser("e", "status", status),
        KernelTextParser("l", "limits", limits),
        KernelTextParser("g", "cgroup", cgroup),
    ]

    /// The parser an input's first byte selects; other bytes are spread over
    /// all parsers, so no mutation is wasted.
    static func selected(by byte: UInt8) -> KernelTextParser {
        all.first { $0.selector == byte } ?? all[Int(byte) % all.count]
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data, size > 0 else { return 0 }
    let input = UnsafeBufferPointer(start: data, count: size)
    KernelTextParser.selected(by: input[0]).run(Array(input.dropFirst()))
    return 0
}

/// Text as every reader decodes a file (`KernelFiles.text`).
private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

/// Stops the run: a parser returned something its contract rules out.
private func violated(_ what: String, _ bytes: [UInt8]) -> Never {
    fatalError("\(what); input: \(text(bytes).debugDescription)")
}

// MARK: - text-level parsers (KernelText, ProcessMemoryMap)

/// /proc/meminfo and nodeN/meminfo: `KernelText.meminfoValue` and `kilobyteLine`.
private func meminfo(_ bytes: [UInt8]) {
    let file = text(bytes)
    for key in ["HugePages_Total", "Hugepagesize", "MemTotal", "MemFree"] {
        for prefix in ["", "Node 0 ", "Node 1 "] {
            if let value = try? KernelText.meminfoValue(file, key: key, linePrefix: prefix, path: "meminfo") ?? nil,
               value < 0 {
                violated("meminfoValue \(key) = \(value) < 0", bytes)
            }
        }
    }
    for (_, line) in KernelText.lines(file) {
        if let field = KernelText.kilobyteLine(line), field.value < 0 {
            violated("kilobyteLine value \(field.value) < 0", bytes)
        }
    }
}

/// nodeN/cpulist: sorted, distinct, in range.
private func cpulist(_ bytes: [UInt8]) {
    guard let cpus = try? KernelText.cpuList(text(bytes), path: "cpulist") else { return }
    for (a, b) in zip(cpus, cpus.dropFirst()) where a >= b { violated("cpuList not strictly ascending", bytes) }
    if let first = cpus.first, first < 0 { violated("cpuList has a negative CPU", bytes) }
}

/// nodeN/distance.
private func distance(_ bytes: [UInt8]) {
    guard let values = try? KernelText.integers(text(bytes), path: "distance") else { return }
    if values.contains(where: { $0 < 0 }) { violated("integers has a negative value", bytes) }
}

/// transparent_hugepage/{enabled,defrag}.
private func thpMode(_ bytes: [UInt8]) {
    guard let mode = try? KernelText.bracketedChoice(text(bytes), path: "enabled") else { return }
    if mode.isEmpty || mode.contains("]") { violated("bracketedChoice returned \(mode.debugDescription)", bytes) }
}

/// A /sys/kernel/mm/hugepages directory name.
private func hugepageDirectory(_ bytes: [UInt8]) {
    guard let size = try? KernelText.hugepageDirectorySize(text(bytes), path: "hugepages") else { return }
    if size.bytes < 1024 || size.bytes & (size.bytes - 1) != 0 { violated("hugepageDirectorySize \(size.bytes)", bytes) }
    _ = HugepagePoolDirectory(size).countFile
}

/// /proc/PID/smaps, and what the diagnostics derive from each mapping.
private func smaps(_ bytes: [UInt8]) {
    guard let mappings = try? ProcessMemoryMap.parseSmaps(text(bytes)) else { return }
    for mapping in mappings {
        _ = mapping.bytes
        _ = mapping.isHugetlb
        _ = mapping.isLocked
    }
    let tree = smapsTree
    tree.write("proc/1/smaps", bytes)
    _ = HugepageHolders.scan(in: tree.kernelFiles)
}
private let smapsTree = FixtureTree("smaps", files: ["proc/1/comm": "fuzz\n"])

/// /proc/PID/numa_maps.
private func numaMaps(_ bytes: [UInt8]) {
    for (_, nodes) in ProcessMemoryMap.parseNumaMaps(text(bytes)) {
        for (a, b) in zip(nodes, nodes.dropFirst()) where a > b { violated("numa_maps nodes not sorted", bytes) }
    }
}

// MARK: - readers that take a file-system root, fed through a fixture tree

/// /proc/mounts: `SystemInventory.readMounts` (hugetlbfs lines, octal escapes).
private func mounts(_ bytes: [UInt8]) {
    for line in text(bytes).split(separator: "\n") {
        for field in line.split(whereSeparator: \.isWhitespace) {
            let unescaped = KernelText.unescapeMountField(field)
            if !field.contains("\\") && unescaped != String(field) {
                violated("unescapeMountField changed a field without escapes", bytes)
            }
        }
    }
    let tree = mountsTree
    tree.write("proc/mounts", bytes)
    _ = try? SystemInventory.readMounts(tree.kernelFiles, defaultSize: .huge2M)
    _ = try? SystemInventory.readMounts(tree.kernelFiles, defaultSize: nil)
}
private let mountsTree = FixtureTree("mounts")

/// A sysfs counter (`resv_hugepages` and the like): `KernelFiles.counter` and `integer`.
private func sysfsCounter(_ bytes: [UInt8]) {
    let tree = counterTree
    let path = "sys/kernel/mm/hugepages/hugepages-2048kB/resv_hugepages"
    tree.write(path, bytes)
    if let counter = try? tree.kernelFiles.counter(path), counter.value < 0 {
        violated("counter \(counter.value) < 0", bytes)
    }
    if let value = try? tree.kernelFiles.integer(path), value < 0 { violated("integer \(value) < 0", bytes) }
}
private let counterTree = FixtureTree("sysfs-counter")

/// /proc/PID/maps: the headers `ProcessMemoryMap` parses, and the in-use scan
/// of `StaleHugepageFiles` (paths, device numbers, inodes).
private func maps(_ bytes: [UInt8]) {
    _ = try? ProcessMemoryMap.parseSmaps(text(bytes))
    let tree = mapsTree
    tree.write("proc/1/maps", bytes)
    _ = StaleHugepageFiles.filesInUse(in: tree.kernelFiles)
}
private let mapsTree = FixtureTree("maps")

/// /proc/self/status: `MemlockCheck` (CapEff, VmLck).
private func status(_ bytes: [UInt8]) {
    let tree = statusTree
    tree.write("proc/self/status", bytes)
    _ = try? MemlockCheck.effectiveCapabilities(in: tree.kernelFiles)
    _ = MemlockCheck.hasIPCLock(in: tree.kernelFiles)
    if MemlockCheck.lockedBytes(in: tree.kernelFiles) < 0 { violated("VmLck < 0", bytes) }
}
private let statusTree = FixtureTree("status")

/// /proc/self/limits: the memlock limit of a fixture root, read by
/// `SystemInventory.read(root:)` (its reader is internal) in an otherwise
/// minimal, valid tree.
private func limits(_ bytes: [UInt8]) {
    let tree = limitsTree
    tree.write("proc/self/limits", bytes)
    guard let inventory = try? SystemInventory.read(root: tree.root) else { return }
    for limit in [inventory.memlockLimit.soft, inventory.memlockLimit.hard] {
        if let limit, limit < 0 { violated("memlock limit \(limit) < 0", bytes) }
    }
}
private let limitsTree = FixtureTree("limits", files: [
    "proc/sys/kernel/osrelease": "6.1.0-fuzz\n",
    "proc/meminfo": "HugePages_Total:       0\nHugepagesize:       2048 kB\n",
    "proc/mounts": "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n",
    "proc/self/status": "CapEff:\t0000000000000000\nVmLck:\t       0 kB\n",
])

/// /proc/self/cgroup and /proc/mounts for `HugetlbCgroup.read`. The input is
/// split at NUL bytes: the cgroup file, the mounts file, then optionally the
/// text of the controller's limit files and of its usage files (defaults
/// "max" and "0"). The tree has both a cgroup2 root (/sys/fs/cgroup) and a
/// v1 hugetlb hierarchy (/sys/fs/cgroup/hugetlb) for the mounts to name.
private func cgroup(_ bytes: [UInt8]) {
    let parts = bytes.split(separator: 0, maxSplits: 3, omittingEmptySubsequences: false).map(Array.init)
    let tree = cgroupTree
    tree.write("proc/self/cgroup", parts[0])
    tree.write("proc/mounts", parts.count > 1 ? parts[1] : [])
    let limit = parts.count > 2 ? parts[2] : Array("max\n".utf8)
    let usage = parts.count > 3 ? parts[3] : Array("0\n".utf8)
    for size in ["2MB", "1GB"] {
        for (folder, limitLeaves, usageLeaves) in [
            ("sys/fs/cgroup", ["max", "rsvd.max"], ["current", "rsvd.current"]),
            ("sys/fs/cgroup/hugetlb", ["limit_in_bytes", "rsvd.limit_in_bytes"],
             ["usage_in_bytes", "rsvd.usage_in_bytes"]),
        ] {
            for leaf in limitLeaves { tree.write("\(folder)/hugetlb.\(size).\(leaf)", limit) }
            for leaf in usageLeaves { tree.write("\(folder)/hugetlb.\(size).\(leaf)", usage) }
        }
    }
    for size in [PageSize.huge2M, .huge1G] {
        guard let found = HugetlbCgroup.read(pageSize: size, files: tree.kernelFiles) else { continue }
        for needed in [0, size.bytes, Int.max] {
            if let shortage = found.shortage(adding: needed) { _ = shortage.description }
        }
    }
}
private let cgroupTree = FixtureTree("cgroup")
