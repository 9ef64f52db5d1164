import HugeAlloc

/// What one hugepage frame is doing, as the kernel's frame tables show it.
package enum HugepageFrameState: String, Sendable, Equatable {
    /// Not mapped by any process (/proc/kpagecount 0): free in the pool, or
    /// holding the data of a hugetlbfs file nobody maps (the per-node
    /// `free_hugepages` count tells how many of these are free).
    case free
    /// Mapped, and the processes mapping it were found (their pagemap).
    case held
    /// Mapped, but no process read maps it (a process that could not be
    /// read, or one that mapped it after the scan).
    case inUse = "in_use"
}

/// One hugepage frame: its head frame's physical address, its size and state.
package struct HugepageFrame: Equatable, Sendable {
    package var physical: PhysicalAddress
    package var pageSize: PageSize
    package var state: HugepageFrameState
    /// /proc/kpagecount of the head frame.
    package var mapCount: Int
    /// The processes whose pagemap maps the frame, ascending.
    package var holders: [Int32]

    package var end: PhysicalAddress { physical + pageSize.bytes }
}

/// A range of physical memory a node has: adjacent memory blocks merged.
package struct PhysicalMemoryRange: Equatable, Sendable {
    package var start: PhysicalAddress
    package var bytes: Int
    package var end: PhysicalAddress { start + bytes }
}

/// A physically contiguous run of free frames of one size.
package struct FreeHugepageRun: Equatable, Sendable {
    package var physical: PhysicalAddress
    package var pageSize: PageSize
    package var frames: Int
    package var bytes: Int { frames * pageSize.bytes }
}

/// The pool counters of one size on one node (sysfs), next to the frames.
package struct NodePoolCounters: Equatable, Sendable {
    package var pageSize: PageSize
    package var total: Int
    package var free: Int
    package var surplus: Int
}

/// The hugepage frames of one NUMA node, by physical address.
package struct NodeHugepageMap: Equatable, Sendable {
    package var node: Int
    /// The node's memory (its memory blocks, adjacent ones merged), ascending.
    package var memory: [PhysicalMemoryRange]
    /// Every hugepage frame in the node's memory, ascending by address.
    package var frames: [HugepageFrame]
    /// The node's pool counters per size (/sys/devices/system/node/nodeN/hugepages).
    package var counters: [NodePoolCounters]

    /// The frames of one size.
    package func frames(of size: PageSize) -> [HugepageFrame] { frames.filter { $0.pageSize == size } }

    /// The physically contiguous runs of free frames of `size`, ascending.
    package func freeRuns(of size: PageSize) -> [FreeHugepageRun] {
        let free = frames.filter { $0.pageSize == size && $0.state == .free }
        return PhysicalRun.ranges(count: free.count) { free[$0].physical == free[$0 - 1].end }.map {
            FreeHugepageRun(physical: free[$0.lowerBound].physical, pageSize: size, frames: $0.count)
        }
    }

    /// The longest run of free frames of `size` (the first of equal ones), nil when none is free.
    package func largestFreeRun(of size: PageSize) -> FreeHugepageRun? {
        freeRuns(of: size).reduce(nil) { best, run in (best?.frames ?? 0) >= run.frames ? best : run }
    }

    /// Frames of `size` no process maps beyond what the kernel counts free:
    /// hugetlbfs file pages nobody maps (stale or open files). The kernel's
    /// frame tables do not say which frames these are.
    package func unmappedAllocated(of size: PageSize) -> Int {
        guard let counters = counters.first(where: { $0.pageSize == size }) else { return 0 }
        return max(0, frames(of: size).count { $0.state == .free } - counters.free)
    }
}

/// Where on each node the hugepages lie, which are free, and who holds the rest.
package struct PhysicalHugepageMap: Equatable, Sendable {
    /// The memory block size (/sys/devices/system/memory/block_size_bytes).
    package var blockSize: Int
    /// The hugepage sizes shown, ascending.
    package var pageSizes: [PageSize]
    package var nodes: [NodeHugepageMap]
    /// The processes that map hugepages: PID → command name.
    package var holders: [Int32: String]

    /// Reads the map below `fs`'s root: each node's memory blocks
    /// (/sys/devices/system/node/nodeN/memoryM, blocks of
    /// /sys/devices/system/memory/block_size_bytes), the flags and map count
    /// of each hugepage-aligned frame in them (/proc/kpageflags: `HUGE` with
    /// `COMPOUND_HEAD` starts a hugepage, its size is where the
    /// `COMPOUND_TAIL` frames end; /proc/kpagecount), and the frames held by
    /// each process that maps hugetlb pages (/proc/PID/smaps for the
    /// mappings, /proc/PID/pagemap for their frames).
    ///
    /// `node` and `pageSize` narrow the result; both are checked against
    /// what the machine has. Needs CAP_SYS_ADMIN (the frame tables and
    /// other processes' frame numbers): without it, throws
    /// ``DiagnosticsError/needsCapability(_:)`` before reading anything.
    package static func read(node: Int? = nil, pageSize: PageSize? = nil, in fs: KernelFiles = .live) throws(DiagnosticsError) -> PhysicalHugepageMap {
        let capabilities: UInt64
        do {
            capabilities = try MemlockCheck.effectiveCapabilities(in: fs)
        } catch {
            throw DiagnosticsError(error)
        }
        guard capabilities & (1 << 21) != 0 else {
            throw .needsCapability(MissingCapability(
                capability: "CAP_SYS_ADMIN", purpose: "read /proc/kpageflags, /proc/kpagecount and other processes' frame numbers",
                fix: "run it as root (sudo inspect-memory map)"))
        }
        let offered = HugepagePoolDirectory.offeredSizes(in: fs)
        if let pageSize, !offered.contains(pageSize) {
            throw .unsupportedPageSize(UnsupportedPageSize(requested: pageSize.bytes, offered: offered))
        }
        let nodeIDs = HugepageSetup.nodes(in: fs)
        if let node, !nodeIDs.contains(node) {
            throw .noSuchNode(UnknownNode(node: node, available: nodeIDs))
        }
        let blockText = fs.textIfReadable("/sys/devices/system/memory/block_size_bytes") ?? ""
        guard let blockSize = Int(blockText.trimmingWhitespace(), radix: 16), blockSize > 0,
              blockSize % Sys.basePageSize == 0 else {
            throw .malformed(MalformedFile(path: fs.path("/sys/devices/system/memory/block_size_bytes"), line: 1,
                                           text: blockText, expected: "the memory block size in hexadecimal"))
        }
        let heldBy = holderFrames(in: fs)
        let frames = try KernelPageFrames(in: fs)
        var nodes: [NodeHugepageMap] = []
        for id in nodeIDs where node == nil || node == id {
            let memory = memoryRanges(node: id, blockSize: blockSize, in: fs)
            var found: [HugepageFrame] = []
            for range in memory {
                found += try scan(range, sizes: offered, frames: frames, heldBy: heldBy.frames)
            }
            if let pageSize { found.removeAll { $0.pageSize != pageSize } }
            let counters = offered.filter { pageSize == nil || $0 == pageSize }.compactMap { size -> NodePoolCounters? in
                guard let c = try? HugepagePoolDirectory(size, node: id).counters(in: fs) else { return nil }
                return NodePoolCounters(pageSize: size, total: c.total, free: c.free, surplus: c.surplus)
            }
            nodes.append(NodeHugepageMap(node: id, memory: memory, frames: found, counters: counters))
        }
        let shown = Set(nodes.flatMap { $0.frames.flatMap(\.holders) })
        return PhysicalHugepageMap(
            blockSize: blockSize, pageSizes: pageSize.map { [$0] } ?? offered, nodes: nodes,
            holders: heldBy.commands.filter { shown.contains($0.key) })
    }

    /// A node's memory blocks (memoryM entries of its sysfs directory) as
    /// physical ranges, adjacent blocks merged.
    static func memoryRanges(node: Int, blockSize: Int, in fs: KernelFiles) -> [PhysicalMemoryRange] {
        let blocks = fs.entries("/sys/devices/system/node/node\(node)").compactMap { entry -> UInt64? in
            entry.hasPrefix("memory") ? UInt64(entry.dropFirst(6)) : nil
        }.sorted()
        return PhysicalRun.ranges(count: blocks.count) { blocks[$0] == blocks[$0 - 1] + 1 }.map {
            PhysicalMemoryRange(start: PhysicalAddress(blocks[$0.lowerBound] * UInt64(blockSize)), bytes: $0.count * blockSize)
        }
    }

    /// The hugepage frames starting in `range`: reads the flags of every
    /// frame aligned to the smallest hugepage size; a `HUGE` `COMPOUND_HEAD`
    /// frame starts a hugepage, whose size is the smallest offered size
    /// after which the next frame is not one of its `COMPOUND_TAIL`s.
    static func scan(_ range: PhysicalMemoryRange, sizes: [PageSize], frames: borrowing KernelPageFrames,
                     heldBy: [UInt64: [Int32]]) throws(DiagnosticsError) -> [HugepageFrame] {
        guard let smallest = sizes.first else { return [] }
        let base = UInt64(Sys.basePageSize)
        let stride = UInt64(smallest.bytes) / base
        let first = (range.start.rawValue / base + stride - 1) / stride * stride
        let end = range.end.rawValue / base
        var result: [HugepageFrame] = []
        var pfn = first
        while pfn < end {
            guard let flags = try frames.flags(pfn: pfn) else { break }
            guard flags.contains([.huge, .compoundHead]) else { pfn += stride; continue }
            var size = smallest
            for candidate in sizes where pfn % (UInt64(candidate.bytes) / base) == 0 {
                size = candidate
                let next = pfn + UInt64(candidate.bytes) / base
                guard let after = try frames.flags(pfn: next), after.contains([.huge, .compoundTail]) else { break }
            }
            let count = try frames.mapCount(pfn: pfn) ?? 0
            let holders = heldBy[pfn] ?? []
            let state: HugepageFrameState = count == 0 ? .free : holders.isEmpty ? .inUse : .held
            result.append(HugepageFrame(physical: PhysicalAddress(pfn * base), pageSize: size, state: state,
                                        mapCount: count, holders: holders))
            pfn += max(stride, UInt64(size.bytes) / base)
        }
        return result
    }

    /// The head frame of every hugepage each process maps, from its hugetlb
    /// mappings (smaps) and their pagemap entries, one per hugepage; and the
    /// command of each such process. Processes that exit or cannot be read
    /// are left out (their frames show as in use).
    static func holderFrames(in fs: KernelFiles) -> (frames: [UInt64: [Int32]], commands: [Int32: String]) {
        var frames: [UInt64: [Int32]] = [:]
        var commands: [Int32: String] = [:]
        let base = UInt(Sys.basePageSize)
        for holder in HugepageHolders.scan(in: fs) where commands[holder.pid] == nil {
            commands[holder.pid] = holder.command
            guard let mappings = try? ProcessMemoryMap.read(pid: holder.pid, in: fs),
                  let reader = try? PagemapReader(pid: holder.pid, procRoot: fs.path("/proc")) else { continue }
            for mapping in mappings where mapping.isHugetlb && mapping.hugetlbBytes > 0 {
                let size = UInt(max(mapping.pageSize, Sys.basePageSize))
                var address = mapping.start
                while address < mapping.end {
                    if let pfn = (try? reader.entry(at: address))?.pfn {
                        // The head: a mapping may start inside a hugepage only if
                        // it is not hugetlb, so the address is size-aligned.
                        let head = pfn - pfn % UInt64(size / base)
                        if frames[head]?.contains(holder.pid) != true { frames[head, default: []].append(holder.pid) }
                    }
                    address += size
                }
            }
        }
        for key in frames.keys { frames[key]?.sort() }
        return (frames, commands)
    }
}
