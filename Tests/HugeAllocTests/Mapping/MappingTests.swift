import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// Checks a populated mapping against the kernel's own view: a fresh pagemap
/// read of every base page, kpageflags for hugepages, and the bytes written.
private func verifyAgainstKernel(_ mapping: borrowing MemoryMapping) throws {
    let base = UInt(bitPattern: mapping.base)
    let reader = try PagemapReader()
    let entries = try reader.entries(startingAt: base, count: mapping.length / Sys.basePageSize)
    let perPage = mapping.pageSize.bytes / Sys.basePageSize
    for page in 0..<mapping.pageCount {
        let first = try #require(entries[page * perPage].pfn, "page \(page) not present")
        // All base-page entries inside one page have consecutive PFNs.
        for i in 0..<perPage {
            let entry = entries[page * perPage + i]
            #expect(entry.pfn == first + UInt64(i))
        }
        let maybePhysical = mapping.physicalAddress(atOffset: page * mapping.pageSize.bytes)
        let physical = try #require(maybePhysical)
        #expect(physical.rawValue == first * UInt64(Sys.basePageSize))
        #expect(physical.rawValue % UInt64(mapping.pageSize.bytes) == 0, "a hugepage is naturally aligned")
        if mapping.pageSize.isHuge {
            #expect(try kpageflags(first) & KPF_HUGE != 0, "kpageflags marks PFN \(first) as huge")
        }
    }
    // The memory holds what is written to it.
    for page in 0..<mapping.pageCount {
        (mapping.base + page * mapping.pageSize.bytes + 8).storeBytes(of: UInt64(page) ^ 0xfeed, as: UInt64.self)
    }
    for page in 0..<mapping.pageCount {
        #expect((mapping.base + page * mapping.pageSize.bytes + 8).load(as: UInt64.self) == UInt64(page) ^ 0xfeed)
    }
}

@Suite(.usesHugepagePool) struct MappingTests {
    @Test(.enabled(if: isRoot && hasFree2M, "needs root (PFNs) and 32 free 2 MiB hugepages: run tools/test as root"),
          arguments: ["anonymous", "memfd", "hugetlbfs"])
    func maps2MiBPagesWithEveryBacking(backing: String) throws {
        try withHugetlbfsMount(pageSize: .huge2M) { mount in
            try expectNoLeak {
                let b: MappingOptions.Backing = backing == "anonymous" ? .anonymous : backing == "memfd" ? .memfd : .hugetlbfs(mount: mount)
                let mapping = try MemoryMapping(length: 8 << 20, options: .init(pageSize: .huge2M, backing: b))
                let (size, count, fellBack, hasFD) = (mapping.pageSize, mapping.pageCount, mapping.fallback != nil, mapping.fileDescriptor != nil)
                #expect(size == .huge2M && count == 4 && !fellBack)
                #expect(processHugetlbBytes() >= 8 << 20)
                #expect(hasFD == (backing != "anonymous"))
                try verifyAgainstKernel(mapping)
                try mapping.unmap()
            }
        }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
    func hugetlbfsMountFoundWithoutAPath() throws {
        // Any 2 MiB mount the library finds serves (libhugetlbfs's while it
        // still exists, else /proc/mounts); with none, the typed error.
        guard MemoryMapping.hugetlbfsMount(for: .huge2M) != nil else {
            #expect(throws: MappingError.self) { _ = try MemoryMapping(length: 2 << 20, options: .init(backing: .hugetlbfs(mount: nil))) }
            return
        }
        try expectNoLeak {
            let mapping = try MemoryMapping(length: 4 << 20, options: .init(backing: .hugetlbfs(mount: nil)))
            try verifyAgainstKernel(mapping)
        }
    }

    @Test(.enabled(if: isRoot, "needs root to read PFNs"), arguments: ["anonymous", "memfd"])
    func basePagesAreLockedAndTranslated(backing: String) throws {
        try expectNoLeak {
            let lockedBefore = processLockedBytes()
            let mapping = try MemoryMapping(length: 64 * Sys.basePageSize,
                                            options: .init(pageSize: .base, backing: backing == "memfd" ? .memfd : .anonymous))
            let locked = mapping.isLocked
            #expect(locked)
            #expect(processLockedBytes() - lockedBefore == 64 * Sys.basePageSize)
            try verifyAgainstKernel(mapping)
        }
    }

    @Test(.enabled(if: isRoot, "needs root to reserve a 1 GiB page and read PFNs"))
    func maps1GiBPage() throws {
        let nr = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"
        guard FileManager.default.fileExists(atPath: nr) else {
            #expect(throws: MappingError.self) { _ = try MemoryMapping(length: 1 << 30, options: .init(pageSize: .huge1G)) }
            return
        }
        // Another run's reservation cannot come and go in between.
        try withHugepageReservationLock {
            let original = try String(contentsOfFile: nr, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            var reserved = false
            if freeHugepages(.huge1G) < 1 {
                try "\(Int(original)! + 1)".write(toFile: nr, atomically: false, encoding: .utf8)
                reserved = true
            }
            defer { if reserved { try? original.write(toFile: nr, atomically: false, encoding: .utf8) } }
            try #require(freeHugepages(.huge1G) >= 1, "the kernel could not reserve a 1 GiB page (memory too fragmented)")
            try expectNoLeak {
                let mapping = try MemoryMapping(length: 1 << 30, options: .init(pageSize: .huge1G))
                let size = mapping.pageSize
                #expect(size == .huge1G)
                try verifyAgainstKernel(mapping)
            }
        }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root and free 2 MiB hugepages"))
    func translationRoundTripsAndRejectsOutsideAddresses() throws {
        try expectNoLeak {
            let mapping = try MemoryMapping(length: 32 << 20)
            var rng = SystemRandomNumberGenerator()
            for _ in 0..<10_000 {
                let offset = Int.random(in: 0..<mapping.length, using: &rng)
                let total = mapping.length
                let maybe = mapping.physicalAddress(atOffset: offset)
                let physical = try #require(maybe)
                let back = mapping.virtualAddress(of: physical), pointer = mapping.base + offset
                #expect(back == pointer)
                let viaPointer = mapping.physicalAddress(of: pointer)
                #expect(viaPointer == physical)
                var length = total - offset
                let translated = mapping.translate(offset: offset, length: &length)
                #expect(translated == physical)
                // The shrunk length ends exactly at the end of a physical run.
                #expect(length > 0 && length <= total - offset)
                let maybeLast = mapping.physicalAddress(atOffset: offset + length - 1)
                let lastByte = try #require(maybeLast)
                #expect(lastByte - physical == length - 1)
                if offset + length < total {
                    let next = mapping.physicalAddress(atOffset: offset + length)
                    #expect(next != physical + length)
                }
            }
            let outside = [mapping.physicalAddress(atOffset: -1), mapping.physicalAddress(atOffset: mapping.length)]
            #expect(outside == [nil, nil])
            let noVirtual = [mapping.virtualAddress(of: PhysicalAddress(0x1)), mapping.virtualAddress(of: PhysicalAddress(UInt64.max))]
            #expect(noVirtual == [nil, nil])
            let runs = mapping.runs, total = mapping.length
            #expect(runs.reduce(0) { $0 + $1.bytes } == total)
        }
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs free 2 MiB hugepages"), arguments: [true, false])
    func dontForkHidesTheMappingFromAChild(dontFork: Bool) throws {
        try expectNoLeak {
            let mapping = try MemoryMapping(length: 2 << 20, options: .init(dontFork: dontFork))
            let seen = try Sys.childSeesMapping(mapping.base, length: mapping.length)
            #expect(seen == !dontFork)
        }
    }

    @Test func invalidLengthsAreTypedErrors() {
        let zero = "the length must be greater than zero"
        #expect(mappingError(length: 0) == .invalidLength(requested: 0, pageSize: .huge2M, reason: zero))
        #expect(mappingError(length: -4096) == .invalidLength(requested: -4096, pageSize: .huge2M, reason: zero))
        guard case let .invalidLength(requested, _, reason)? = mappingError(length: 3 << 20) else {
            Issue.record("a length that is not a multiple of 2 MiB was accepted"); return
        }
        #expect(requested == 3 << 20 && reason.contains("use \(4 << 20)"))
        guard case let .invalidLength(_, _, overflowReason)? = mappingError(length: Int.max) else {
            Issue.record("Int.max was accepted"); return
        }
        #expect(overflowReason.contains("not a multiple"))
    }

    @Test func unofferedPageSizeIsATypedErrorOrAFallback() throws {
        let size64K = try #require(PageSize(rawValue: 64 << 10))
        guard case let .unsupportedPageSize(payload)? = mappingError(length: 64 << 10, options: .init(pageSize: size64K)) else {
            Issue.record("64K pages are not offered on x86-64"); return
        }
        let (requested, offered) = (payload.requested, payload.offered)
        #expect(requested == size64K.bytes && offered.contains(.base))
        #expect(Set(offered.dropFirst()) == Set(HugepagePoolDirectory.offeredSizes()))
        if isRoot {
            let fallback = try MemoryMapping(length: 64 << 10, options: .init(pageSize: size64K, pageSizePolicy: .fallBackToSmaller))
            let (chosen, why) = (fallback.pageSize, fallback.fallback)
            #expect(chosen == .base)
            #expect(why?.requested == size64K)
            #expect(why?.reason.contains("offers no 64K") == true)
        }
    }

    @Test func tooManyHugepagesNamesNeededFreeAndTheCommand() throws {
        // Far more than any machine here holds: no other process freeing
        // pages can make the mapping succeed.
        let needed = freeHugepages(.huge2M) + 100_000
        // The free count the error reports is sysfs's at that moment: read
        // around the attempt until the count held still (other processes move it).
        let (free, error) = try stableReading({ freeHugepages(.huge2M) }, { mappingError(length: needed * (2 << 20)) }) { error in
            guard case let .insufficientHugepages(shortage)? = error else { return -1 }
            return shortage.free
        }
        guard case let .insufficientHugepages(shortage)? = error else {
            Issue.record("mapping more pages than are free succeeded: \(String(describing: error))"); return
        }
        let (pageSize, n, f, node, command) = (shortage.pageSize, shortage.needed, shortage.free, shortage.node, shortage.command)
        #expect(pageSize == .huge2M && n == needed && node == nil)
        #expect(f == free, "free \(f) agrees with sysfs \(free)")
        #expect(command.contains("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"))
        let message = "\(MappingError.insufficientHugepages(shortage))"
        #expect(message.contains("needed \(n)") && message.contains("free \(f)") && message.contains("echo "))
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root to mount hugetlbfs"))
    func hugetlbfsQuotaIsReportedAsSuch() throws {
        try withHugetlbfsMount(pageSize: .huge2M, options: "size=4M") { mount in
            try expectNoLeak {
                let error = mappingError(length: 8 << 20, options: .init(backing: .hugetlbfs(mount: mount)))
                guard case let .hugetlbfsQuotaExceeded(m, bytes, _)? = error else {
                    Issue.record("expected the quota error, got \(String(describing: error))"); return
                }
                #expect(m == mount && bytes == 8 << 20)
                // Within the quota it works.
                let mapping = try MemoryMapping(length: 4 << 20, options: .init(backing: .hugetlbfs(mount: mount)))
                let count = mapping.pageCount
                #expect(count == 2)
            }
        }
    }

    @Test(.enabled(if: hasFree2M, "needs free 2 MiB hugepages (tools/test reserves them)"))
    func missingHugetlbfsMountGivesTheMountCommand() throws {
        // The condition: a size with free pages but no hugetlbfs mount.
        let candidates = HugepagePoolDirectory.offeredSizes().filter { freeHugepages($0) >= 1 }
        guard let size = candidates.first(where: { MemoryMapping.hugetlbfsMount(for: $0) == nil }) else {
            // Every size with free pages is mounted here: then the mount must be found.
            let size = try #require(candidates.first)
            let error = mappingError(length: size.bytes, options: .init(pageSize: size, backing: .hugetlbfs(mount: nil)))
            #expect(error == nil, "a \(size) mount exists but mapping through it failed: \(String(describing: error))")
            return
        }
        let error = mappingError(length: size.bytes, options: .init(pageSize: size, backing: .hugetlbfs(mount: nil)))
        #expect(error == .noHugetlbfsMount(
            pageSize: size, command: "mkdir -p /dev/hugepages-\(size) && mount -t hugetlbfs -o pagesize=\(size) nodev /dev/hugepages-\(size)"))
    }

    @Test func guardedTouchTurnsSIGBUSIntoAnOffset() throws {
        // A shared mapping larger than its file raises SIGBUS past the end of
        // the file: the same signal hugetlb quotas and cgroup limits send.
        let page = Sys.basePageSize
        let fd = try Sys.memfdCreate(name: "sigbus-test", hugePageSize: nil)
        defer { Sys.close(fd) }
        try Sys.ftruncate(fd, length: 3 * page)
        let base = try Sys.mmap(length: 8 * page, protection: .readWrite, flags: [.shared], fd: fd)
        defer { try? Sys.munmap(base, length: 8 * page) }
        #expect(try Sys.guardedTouch(base, length: 8 * page, stride: page, threads: 1) == 3 * page)
        #expect(try Sys.guardedTouch(base, length: 8 * page, stride: page, threads: 4) == 3 * page)
        #expect(try Sys.guardedTouch(base, length: 3 * page, stride: page, threads: 2) == nil)
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs free 2 MiB hugepages"))
    func prefaultInParallelTouchesEveryPage() throws {
        try expectNoLeak {
            let mapping = try MemoryMapping(length: 64 << 20, options: .init(prefaultThreads: 2))
            let entries = try PagemapReader().entries(startingAt: UInt(bitPattern: mapping.base), count: mapping.length / Sys.basePageSize)
            let allPresent = entries.allSatisfy { $0.isPresent }
            #expect(allPresent)
        }
    }

    @Test func virtualAsIOVAModeNeedsNoCapability() throws {
        try expectNoLeak {
            let mapping = try MemoryMapping(length: 16 * Sys.basePageSize,
                                            options: .init(pageSize: .base, translation: .virtualAsIOVA))
            let (iova, base, runs) = (mapping.physicalAddress(atOffset: 100), mapping.base, mapping.runs)
            #expect(iova?.rawValue == UInt64(UInt(bitPattern: base)) + 100)
            #expect(runs.count == 1)
        }
    }
}
