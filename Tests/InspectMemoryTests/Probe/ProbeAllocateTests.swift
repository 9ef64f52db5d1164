import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

/// `probe --allocate`: allocations from a DMA heap, held by a child process
/// and checked from this one against the child's /proc/PID/pagemap.
@Suite(.usesHugepagePool) struct ProbeAllocateTests {
    @Test(.enabled(if: isRoot && freeHugepages(.huge2M) >= 8, "needs root (PFNs) and 8 free 2 MiB hugepages"),
          arguments: [
              (["64", "4K", "16K", "300K", "3M"], "4K", nil),
              (["64", "100", "1K", "3000", "4K"], "64", "4K"),
          ] as [([String], String, String?)])
    func heldAllocationsAreContiguousAlignedAndInsideTheirBoundaryToAnotherProcess(
        sizes: [String], alignment: String, boundary: String?
    ) throws {
        // A 3M allocation needs two physically adjacent 2 MiB pages; the free pool's layout is the machine's.
        if sizes.contains("3M") {
            try #require(largestFree2MiBRun(cap: 4 << 20).bytes >= 4 << 20, "the free pool holds no run of two 2 MiB pages")
        }
        let probe = try RunningCommand(["probe", "--allocate", sizes.joined(separator: ","), "--alignment", alignment,
                                        "--hold", "--json"] + (boundary.map { ["--boundary", $0] } ?? []))
        let object = try probe.readJSONObject()
        let pid = try #require(object["pid"] as? Int32)
        #expect(pid == probe.process.processIdentifier)
        #expect(object["alignment"] as? Int == ByteCount.parse(alignment))
        #expect(object["boundary"] as? Int == boundary.flatMap(ByteCount.parse))
        let allocations = try #require(object["allocations"] as? [[String: Any]])
        #expect(allocations.map { $0["size"] as? Int } == sizes.map(ByteCount.parse))

        let problems = try AllocationCheck.problems(in: object, pagemapOf: pid)
        #expect(problems.isEmpty, "\(problems.count) problems, the first: \(problems.prefix(8))")

        try probe.stdin.fileHandleForWriting.close()
        probe.process.waitUntilExit()
        #expect(probe.process.terminationStatus == 0)
    }

    /// Negative controls: the same check on claims the kernel contradicts.
    @Test(.enabled(if: isRoot && freeHugepages(.huge2M) >= 8, "needs root (PFNs) and 8 free 2 MiB hugepages"))
    func checkFailsOnShiftedAddressesCrossedBoundariesAndPagesThatAreNotContiguous() throws {
        let probe = try RunningCommand(["probe", "--allocate", "64,16K", "--alignment", "4K", "--hold", "--json"])
        defer {
            try? probe.stdin.fileHandleForWriting.close()
            probe.process.waitUntilExit()
        }
        let object = try probe.readJSONObject()
        let pid = try #require(object["pid"] as? Int32)
        try #require(try AllocationCheck.problems(in: object, pagemapOf: pid).isEmpty)

        // Every claimed physical address 4 KiB off: the pagemap disagrees.
        var shifted = object
        shifted["allocations"] = (object["allocations"] as! [[String: Any]]).map { allocation in
            var a = allocation
            a["physical"] = AllocationCheck.hex(AllocationCheck.address(allocation["physical"])! + 4096)
            a["pages"] = (allocation["pages"] as! [[String: Any]]).map { page in
                ["virtual": page["virtual"]!, "physical": AllocationCheck.hex(AllocationCheck.address(page["physical"])! + 4096)]
            }
            return a
        }
        #expect(try AllocationCheck.problems(in: shifted, pagemapOf: pid).contains { $0.contains("pagemap") })

        // The 16K allocation said to be bounded by 4K: it crosses.
        var bounded = object
        bounded["boundary"] = 4096
        #expect(try AllocationCheck.problems(in: bounded, pagemapOf: pid).contains { $0.contains("crosses") })

        // Two adjacent virtual pages of this process backed by the same
        // physical page: each matches the pagemap, together they are not
        // contiguous.
        let path = "/dev/shm/probe-allocate-negative-control-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
        try #require(fd >= 0)
        unlink(path)
        defer { close(fd) }
        try #require(ftruncate(fd, 4096) == 0)
        let mapped = mmap(nil, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        try #require(mapped != MAP_FAILED && mapped != nil)
        let region = mapped!
        defer { munmap(region, 8192) }
        let second = mmap(region + 4096, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0)
        try #require(second == region + 4096)
        region.storeBytes(of: 1, as: UInt8.self)
        (region + 4096).storeBytes(of: 2, as: UInt8.self)  // both mappings' page table entries filled
        let virtual = UInt(bitPattern: region)
        let reader = try PagemapReader()
        let pfn = try #require(try reader.entry(at: virtual).pfn)
        #expect(try reader.entry(at: virtual + 4096).pfn == pfn)
        let fake: [String: Any] = [
            "pid": Int(getpid()), "alignment": 4096, "page_size": 4096,
            "allocations": [[
                "virtual": AllocationCheck.hex(virtual), "physical": AllocationCheck.hex(UInt(pfn) * 4096), "size": 8192,
                "pages": [["virtual": AllocationCheck.hex(virtual), "physical": AllocationCheck.hex(UInt(pfn) * 4096)],
                          ["virtual": AllocationCheck.hex(virtual + 4096), "physical": AllocationCheck.hex(UInt(pfn) * 4096)]],
            ]],
        ]
        let problems = try AllocationCheck.problems(in: fake, pagemapOf: getpid())
        #expect(problems.contains { $0.contains("not physically contiguous") }, "\(problems)")
        #expect(!problems.contains { $0.contains("pagemap") }, "each page matches the pagemap: \(problems)")
    }

    /// The refused size comes first: the heap checks each request before it
    /// maps anything, so these need neither root nor free hugepages.
    @Test func badInputIsTheHeapsErrorOnOneLineAndNonZeroExit() throws {
        let cases: [([String], String)] = [
            (["--allocate", "0,64"], "\(DMAHeapError.zeroSize(requested: 0))"),
            (["--allocate", "64", "--alignment", "3000"], "\(DMAHeapError.alignmentNotPowerOfTwo(requested: 3000))"),
            (["--allocate", "64", "--alignment", "0"], "\(DMAHeapError.alignmentNotPowerOfTwo(requested: 0))"),
            (["--allocate", "16K,64", "--boundary", "4K"], "\(DMAHeapError.boundarySmallerThanSize(size: 16384, boundary: 4096))"),
            (["--allocate", "64", "--boundary", "3000"], "\(DMAHeapError.boundaryNotPowerOfTwo(requested: 3000))"),
            (["--allocate", "64", "--node", "4095"], "NUMA node 4095 is not available to this process"),
            (["--allocate", "64", "--node=-1"], "NUMA node -1 is not available to this process"),
        ]
        for (arguments, message) in cases {
            let result = try run(["probe"] + arguments)
            #expect(result.status == 1, "\(arguments): exit \(result.status), \(result.err)")
            #expect(result.err.contains(message), "\(arguments): \(result.err)")
            #expect(result.err.split(separator: "\n").count == 1, "\(arguments): \(result.err)")
            #expect(result.out.isEmpty, "\(arguments): nothing allocated is printed")
        }
    }

    @Test func malformedFlagsAreUsageErrors() throws {
        for (arguments, message) in [
            (["--allocate", "64,abc"], "got 'abc'"),
            (["--allocate", "64,,4K"], "got ''"),
            (["--allocate", "64", "--alignment", "big"], "--alignment takes a size"),
            (["--allocate", "64", "--pages", "2"], "without --pages"),
            (["--pages", "2", "--alignment", "4K"], "go with --allocate"),
        ] {
            let result = try run(["probe"] + arguments)
            #expect(result.status == 64 && result.err.contains(message), "\(arguments): exit \(result.status), \(result.err)")
        }
    }

    @Test func helpNamesTheFlags() throws {
        let help = try run(["probe", "--help"]).out
        for flag in ["--allocate <allocate>", "--alignment <alignment>", "--boundary <boundary>", "--node <node>", "--json", "--hold"] {
            #expect(help.contains(flag), "\(flag)")
        }
        #expect(help.contains("/proc/PID/pagemap"))
    }
}

/// Checks `probe --allocate --json` output against a process's pagemap, as
/// another process would: every page of every allocation present with the
/// PFN claimed, the pages physically consecutive, the allocation aligned
/// (virtually and physically) and inside its boundary. Returns what is wrong.
enum AllocationCheck {
    static func address(_ value: Any?) -> UInt? {
        (value as? String).flatMap { $0.hasPrefix("0x") ? UInt($0.dropFirst(2), radix: 16) : nil }
    }

    static func hex(_ value: UInt) -> String { "0x" + String(value, radix: 16) }

    static func problems(in object: [String: Any], pagemapOf pid: Int32) throws -> [String] {
        let base = UInt(PageSize.base.bytes)
        let alignment = UInt(object["alignment"] as? Int ?? 64)
        let boundary = (object["boundary"] as? Int).map(UInt.init)
        guard object["page_size"] as? Int == Int(base) else { return ["page_size is not \(base)"] }
        guard let allocations = object["allocations"] as? [[String: Any]] else { return ["no allocations"] }
        let reader = try PagemapReader(pid: pid)
        var problems: [String] = []
        for allocation in allocations {
            guard let virtual = address(allocation["virtual"]), let physical = address(allocation["physical"]),
                  let size = (allocation["size"] as? Int).map(UInt.init), size > 0,
                  let pages = allocation["pages"] as? [[String: Any]] else {
                problems.append("malformed allocation \(allocation)")
                continue
            }
            let name = "\(size) bytes at \(hex(virtual))"
            if virtual % alignment != 0 || physical % alignment != 0 {
                problems.append("\(name): not aligned to \(alignment) (physical \(hex(physical)))")
            }
            if let boundary, virtual / boundary != (virtual + size - 1) / boundary
                || physical / boundary != (physical + size - 1) / boundary {
                problems.append("\(name): crosses a \(boundary)-byte boundary")
            }
            let first = virtual & ~(base - 1)
            let count = Int((virtual + size - first + base - 1) / base)
            guard pages.count == count else {
                problems.append("\(name): \(pages.count) pages listed, \(count) spanned")
                continue
            }
            let entries = try reader.entries(startingAt: first, count: count)
            var previous: UInt64? = nil
            for (i, (page, entry)) in zip(pages, entries).enumerated() {
                let pageVirtual = first + UInt(i) * base
                guard address(page["virtual"]) == pageVirtual else {
                    problems.append("\(name): page \(i) is not at \(hex(pageVirtual))")
                    continue
                }
                guard let pfn = entry.pfn else {
                    problems.append("\(name): page \(hex(pageVirtual)) not present in the pagemap")
                    continue
                }
                if address(page["physical"]) != UInt(pfn) * base {
                    problems.append("\(name): page \(hex(pageVirtual)) claims \(page["physical"] ?? "nil"), pagemap has PFN \(hex(UInt(pfn)))")
                }
                if i == 0 && physical != UInt(pfn) * base + (virtual - first) {
                    problems.append("\(name): physical \(hex(physical)) disagrees with the pagemap")
                }
                if let previous, pfn != previous + 1 {
                    problems.append("\(name): not physically contiguous at page \(i) (PFN \(hex(UInt(pfn))) after \(hex(UInt(previous))))")
                }
                previous = pfn
            }
        }
        return problems
    }
}
