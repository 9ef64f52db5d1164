// numa-vm-check: NUMA placement checks for a 2-node guest.
//
// Runs as root inside the QEMU guest that tools/numa-vm-test boots (node 0 =
// CPU 0, node 1 = CPU 1, 2 MiB hugepages). It changes the guest's hugepage
// reservation, so do not run it on a real machine you care about.
//
// Usage: numa-vm-check [--distance D]
// Prints one PASS/FAIL line per check and `N passed, M failed` last;
// exits 1 when any check failed.

import Glibc
import HugeAlloc
import VMCheckSupport

// MARK: - harness

// check, expect, CheckFailure and the tally come from VMCheckSupport.

var expectedDistance = 21
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    if argument == "--distance", let value = arguments.popFirst().flatMap({ Int($0) }) {
        expectedDistance = value
    } else {
        print("usage: numa-vm-check [--distance D]")
        exit(2)
    }
}

// MARK: - sysfs

let pageSize = PageSize.huge2M
let nodeRoot = "/sys/devices/system/node"

func readFile(_ path: String) throws -> String {
    guard let file = fopen(path, "r") else { throw CheckFailure("cannot open \(path): errno \(errno)") }
    defer { fclose(file) }
    var text = ""
    var buffer = [CChar](repeating: 0, count: 4096)
    while fgets(&buffer, Int32(buffer.count), file) != nil {
        text += String(decoding: buffer.prefix(while: { $0 != 0 }).map(UInt8.init(bitPattern:)), as: UTF8.self)
    }
    return text.trimmingCharacters()
}

func writeFile(_ path: String, _ value: String) throws {
    guard let file = fopen(path, "w") else { throw CheckFailure("cannot open \(path) for writing: errno \(errno)") }
    let ok = fputs(value, file) >= 0
    let closed = fclose(file) == 0
    if !ok || !closed { throw CheckFailure("writing \(value) to \(path) failed: errno \(errno)") }
}

/// Parses a kernel CPU/node list such as "0-3,8".
func parseList(_ text: String) -> [Int] {
    text.split(separator: ",").flatMap { part -> [Int] in
        let bounds = part.split(separator: "-").compactMap { Int($0) }
        if bounds.count == 2 { return Array(bounds[0]...bounds[1]) }
        return bounds
    }
}

func hugepageFile(node: Int, _ name: String) -> String {
    "\(HugepagePoolDirectory(pageSize, node: node).kernelPath)/\(name)"
}

func freeHugepages(node: Int) throws -> Int {
    guard let free = Int(try readFile(hugepageFile(node: node, "free_hugepages"))) else {
        throw CheckFailure("unreadable free_hugepages on node \(node)")
    }
    return free
}

/// Sets node `node`'s 2 MiB pool to `count` pages and checks the kernel did it.
func reserve(node: Int, count: Int) throws {
    try writeFile(hugepageFile(node: node, "nr_hugepages"), "\(count)")
    let now = Int(try readFile(hugepageFile(node: node, "nr_hugepages"))) ?? -1
    try expect(now == count, "node \(node) has \(now) 2 MiB pages after asking for \(count)")
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return String(s)
    }
}

// MARK: - memory

/// 2 MiB hugepages mapped through the library with `policy` applied
/// before the pages fault in; MemoryMapping verifies every page's node.
func map(pages: Int, _ policy: NUMAPolicy) throws -> MemoryMapping {
    try MemoryMapping(length: pages * pageSize.bytes, options: MappingOptions(pageSize: pageSize, numaPolicy: policy))
}

/// Every page's node, asked of the kernel again (move_pages).
func pageNodes(of mapping: borrowing MemoryMapping) throws -> [Int] {
    try mapping.currentPageNodes()
}

/// What a thread produced, read after it is joined.
final class Outcome<T> {
    var value: Result<T, any Error> = .failure(CheckFailure("thread did not run"))
}

final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Runs `body` on a new thread pinned to `cpu`, waits for it and returns its result.
func onThread<T>(pinnedTo cpu: Int, _ body: @escaping () throws -> T) throws -> T {
    let outcome = Outcome<T>()
    let box = Unmanaged.passRetained(ThreadBody {
        outcome.value = Result {
            try NUMAPlacement.pinCurrentThread(toCPUs: [cpu])
            sched_yield()
            return try body()
        }
    })
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { argument in
        Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue().run()
        return nil
    }, box.toOpaque())
    if rc != 0 {
        box.release()
        throw CheckFailure("pthread_create failed: \(rc)")
    }
    pthread_join(thread, nil)
    return try outcome.value.get()
}

/// Holds a noncopyable pool set so that thread closures can share it.
final class PoolSetBox {
    let pools: PerNodePoolSet<MemoryMapping>
    init(_ pools: consuming PerNodePoolSet<MemoryMapping>) { self.pools = pools }
}

func describe(_ nodes: [Int]) -> String {
    NUMAPlacement.pageCounts(nodes).sorted { $0.key < $1.key }
        .map { "node \($0.key): \($0.value) pages" }.joined(separator: ", ")
}

// MARK: - checks

print("numa-vm-check: \(try readFile("/proc/version"))")

check("topology: 2 nodes, node 0 = CPU 0, node 1 = CPU 1, distance \(expectedDistance)") {
    let online = parseList(try readFile("\(nodeRoot)/online"))
    try expect(online == [0, 1], "online nodes \(online), expected [0, 1]")
    let allowed = try NUMAPlacement.allowedNodes()
    try expect(allowed == [0, 1], "get_mempolicy(MPOL_F_MEMS_ALLOWED) says \(allowed)")
    for node in 0...1 {
        let cpus = parseList(try readFile("\(nodeRoot)/node\(node)/cpulist"))
        try expect(cpus == [node], "node \(node) CPUs \(cpus), expected [\(node)]")
        let distances = try readFile("\(nodeRoot)/node\(node)/distance").split(separator: " ").compactMap { Int($0) }
        let expected = node == 0 ? [10, expectedDistance] : [expectedDistance, 10]
        try expect(distances == expected, "node \(node) distances \(distances), expected \(expected)")
        let meminfo = try readFile("\(nodeRoot)/node\(node)/meminfo")
        try expect(meminfo.contains("Node \(node) MemTotal:"), "node \(node) meminfo has no MemTotal")
    }
    return "sysfs and get_mempolicy agree with the QEMU -numa options"
}

check("reserve 16 hugepages on node 1 only") {
    try reserve(node: 0, count: 0)
    try reserve(node: 1, count: 16)
    try NUMAPlacement.checkFreeHugepages(node: 1, pageSize: pageSize, needed: 16)
    let free0 = try freeHugepages(node: 0)
    try expect(free0 == 0, "node 0 still has \(free0) free pages")
    return "node 0: 0 free, node 1: \(try freeHugepages(node: 1)) free"
}

check("NUMATopology.read() reports the guest's nodes, CPUs, memory, distances and per-node pools") {
    let topology = try NUMATopology.read()
    try expect(topology.available, "NUMA reported unavailable")
    try expect(topology.nodes.map(\.id) == [0, 1], "nodes \(topology.nodes.map(\.id))")
    for node in topology.nodes {
        try expect(node.cpus == [node.id], "node \(node.id) CPUs \(node.cpus)")
        // QEMU gives each node 1 GiB; the kernel keeps some for itself.
        try expect(node.memTotalBytes > 768 << 20 && node.memTotalBytes <= 1 << 30,
                   "node \(node.id) MemTotal \(node.memTotalBytes) bytes, expected just under 1 GiB")
        let pool = node.hugepages.first { $0.pageSize == pageSize }
        let expected = node.id == 1 ? 16 : 0
        try expect(pool?.total == expected && pool?.free == expected,
                   "node \(node.id) 2 MiB pool \(String(describing: pool)), expected \(expected) total and free")
    }
    try expect(topology.distance(from: 0, to: 1) == expectedDistance && topology.distance(from: 1, to: 0) == expectedDistance
               && topology.distance(from: 1, to: 1) == 10, "distances \(topology.nodes.map(\.distances))")
    try expect(topology.node(ofCPU: 1) == 1 && topology.node(ofCPU: 0) == 0, "CPU to node mapping wrong")
    return "nodes \(topology.nodes.map { "\($0.id): CPUs \($0.cpus), \($0.memTotalBytes >> 20) MiB" }.joined(separator: "; ")), distances \(topology.nodes.map(\.distances))"
}

check("currentNode on a thread pinned to CPU 1 is 1") {
    let (node, cpus) = try onThread(pinnedTo: 1) {
        (try NUMAPlacement.currentNode(), try NUMAPlacement.currentThreadCPUs())
    }
    let cpu = cpus == [1] ? 1 : -1
    try expect(node == 1 && cpu == 1, "node \(node), CPU \(cpu)")
    return ""
}

check("bind(1): every page lands on node 1") {
    let before = try freeHugepages(node: 1)
    let mapping = try map(pages: 8, .bind(1))
    let nodes = try pageNodes(of: mapping)
    try expect(mapping.pageNodes == nodes, "MemoryMapping.pageNodes \(mapping.pageNodes ?? []) but move_pages says \(nodes)")
    try NUMAPlacement.verify(.bind(1), nodes: nodes)
    try expect(nodes == Array(repeating: 1, count: 8), "nodes \(nodes)")
    let after = try freeHugepages(node: 1)
    try expect(before - after == 8, "node 1 free went \(before) -> \(after), expected 8 fewer")
    return "\(describe(nodes)); node 1 free \(before) -> \(after)"
}

check("bind(0) with node 0 empty: checkFreeHugepages names node 0 and the command") {
    do {
        try NUMAPlacement.checkFreeHugepages(node: 0, pageSize: pageSize, needed: 4)
        throw CheckFailure("no error though node 0 has \(try freeHugepages(node: 0)) free pages")
    } catch let error as NUMAError {
        guard case .notEnoughHugepages(let shortage) = error,
              shortage == HugepageShortage(pageSize: pageSize, node: 0, needed: 4, free: 0, total: 0) else {
            throw CheckFailure("wrong error: \(error)")
        }
        let command = "echo 4 > /sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
        try expect(error.description.contains(command) && error.description.contains("node 0"),
                   "message lacks node 0 or the command: \(error)")
        return "\(error)"
    }
}

check("bind(0) with node 0 empty: fails with the typed error naming node 0 instead of spilling to node 1") {
    do {
        let mapping = try map(pages: 2, .bind(0))
        throw CheckFailure("mapping succeeded with pages on \(describe(try pageNodes(of: mapping)))")
    } catch let error as MappingError {
        guard case .insufficientHugepages(let shortage) = error,
              shortage.pageSize == pageSize, shortage.needed == 2, shortage.free == 0, shortage.node == 0,
              shortage.command.contains("/sys/devices/system/node/node0/hugepages/") else {
            throw CheckFailure("expected the node-0 shortage error, got: \(error)")
        }
        return "\(error)"
    }
}

check("verify rejects real node-1 pages under bind(0)") {
    let mapping = try map(pages: 2, .bind(1))
    let nodes = try pageNodes(of: mapping)
    do {
        try NUMAPlacement.verify(.bind(0), nodes: nodes)
    } catch let error as NUMAError {
        guard case .misplaced(policy: .bind(0), firstPage: 0, foundNode: 1, misplacedPages: 2, totalPages: 2) = error else {
            throw CheckFailure("wrong error: \(error)")
        }
        return "\(error)"
    }
    throw CheckFailure("verify(.bind(0)) accepted \(nodes)")
}

check("preferred(0) with node 0 empty falls back to node 1") {
    let mapping = try map(pages: 2, .preferred(0))
    let nodes = try pageNodes(of: mapping)
    try expect(nodes == [1, 1], "nodes \(nodes)")
    return describe(nodes)
}

check("bind(5): typed error naming node 5") {
    do {
        _ = try map(pages: 1, .bind(5))
    } catch let error as MappingError {
        guard case .placement(.noSuchNode(UnknownNode(node: 5, available: [0, 1]))) = error else {
            throw CheckFailure("wrong error: \(error)")
        }
        return "\(error)"
    }
    throw CheckFailure("mapping with bind(5) succeeded")
}

check("interleave([0, 1]) spreads pages over both nodes") {
    try reserve(node: 0, count: 8)
    let mapping = try map(pages: 8, .interleave([0, 1]))
    let nodes = try pageNodes(of: mapping)
    try NUMAPlacement.verify(.interleave([0, 1]), nodes: nodes)
    let counts = NUMAPlacement.pageCounts(nodes)
    try expect(counts[0] == 4 && counts[1] == 4, "uneven: \(describe(nodes)) \(nodes)")
    return "\(describe(nodes)) \(nodes)"
}

// With free pages on both nodes, the default policy would take the faulting
// CPU's node; a bind to the other node shows the policy, not locality, decides.
for (cpu, target) in [(0, 1), (1, 0)] {
    check("bind(\(target)) from a thread on CPU \(cpu), pages free on both nodes, lands on node \(target)") {
        let nodes = try onThread(pinnedTo: cpu) {
            try pageNodes(of: try map(pages: 2, .bind(target)))
        }
        try NUMAPlacement.verify(.bind(target), nodes: nodes)
        return describe(nodes)
    }
}

check("local on a thread pinned to CPU 1 lands on node 1") {
    let nodes = try onThread(pinnedTo: 1) {
        try pageNodes(of: try map(pages: 2, .local))
    }
    try expect(nodes == [1, 1], "nodes \(nodes)")
    return describe(nodes)
}

check("PerNodePoolSet hands a thread on CPU 1 memory on node 1, on CPU 0 node 0") {
    guard let pools = try PerNodePoolSet<MemoryMapping>(nodes: [0, 1], makePool: { node in
        try map(pages: 1, .bind(node))
    }) else { throw CheckFailure("pool set refused nodes [0, 1]") }
    let box = PoolSetBox(pools)
    var seen: [Int: (localNode: Int, memory: [Int])] = [:]
    for cpu in [1, 0] {
        let (node, memory) = try onThread(pinnedTo: cpu) {
            let node = box.pools.localNode
            let memory = try box.pools.withLocalPool { mapping throws in try pageNodes(of: mapping) }
            return (node, memory)
        }
        seen[cpu] = (node, memory)
        try expect(node == cpu && memory == [cpu], "thread on CPU \(cpu) got node \(node)'s pool, memory on \(memory)")
    }
    return "CPU 1 -> node \(seen[1]!.localNode) pool, pages on \(seen[1]!.memory); CPU 0 -> node \(seen[0]!.localNode), pages on \(seen[0]!.memory)"
}

print("\(passed) passed, \(failed) failed")
fflush(nil)
exit(failed == 0 ? 0 : 1)
