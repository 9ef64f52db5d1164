import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing

/// Checked mode's ``DMAHeap/freeChecked(_:)``: each misuse is the exact
/// error case, frees nothing, and the heap stays usable.
@Suite(.usesHugepagePool) struct HeapCheckedTests {
    /// Small classes, one-object classes, direct granules (in and beyond a page's worth), large blocks.
    static let sizes = [1, 64, 100, 5000, 20_000, 100_000, 300_000, twoMiB - 16, 3 << 20]

    @Test(.enabled(if: canRunHeapTests, heapGateReason), arguments: sizes, [0, 2 * twoMiB])
    func doubleFreeIsCaught(size: Int, retention: Int) throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests(retentionBytes: retention, checked: true))
            let keep = try heap.allocate(64)  // keeps the small objects' span and page in use
            let p = try heap.allocateRetryingPoolRace(size)
            try heap.freeChecked(p)
            #expect(heapError { try heap.freeChecked(p) } == .doubleFree(address: UInt(bitPattern: p)),
                    "a second free of a \(size)-byte allocation")
            try heap.freeChecked(keep)
            #expect(heapError { try heap.freeChecked(keep) } == .doubleFree(address: UInt(bitPattern: keep)))
            heap.trim()
            #expect(heap.statistics.mappedBytes <= retention)
        }
    }

    /// The second free comes after the object's span (and page) went back:
    /// many objects of a class are freed, then one of them again.
    @Test(.enabled(if: canRunHeapTests, heapGateReason), arguments: [64, 1000, 100_000], [0, 2 * twoMiB])
    func doubleFreeAfterItsSpanWentBackIsCaught(size: Int, retention: Int) throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests(retentionBytes: retention, checked: true))
            var pointers: [UnsafeMutableRawPointer] = []
            for _ in 0..<400 { pointers.append(try heap.allocateRetryingPoolRace(size)) }
            for p in pointers { try heap.freeChecked(p) }
            heap.trim()
            for p in [pointers[0], pointers[1], pointers[pointers.count / 2]] {
                #expect(heapError { try heap.freeChecked(p) } == .doubleFree(address: UInt(bitPattern: p)),
                        "a second free of a \(size)-byte object whose span was released")
            }
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func foreignPointersAreCaught() throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests(checked: true))
            let other = try DMAHeap(.forTests(checked: true))
            let mine = try heap.allocate(64)
            let malloced = try #require(malloc(64))
            defer { Foundation.free(malloced) }
            #expect(heapError { try heap.freeChecked(malloced) } == .foreignPointer(address: UInt(bitPattern: malloced)))
            var local = 0
            withUnsafeMutableBytes(of: &local) { stack in
                let s = stack.baseAddress!
                #expect(heapError { try heap.freeChecked(s) } == .foreignPointer(address: UInt(bitPattern: s)))
            }
            for size in [64, 300_000, 3 << 20] {
                let theirs = try other.allocate(size)
                #expect(heapError { try heap.freeChecked(theirs) } == .foreignPointer(address: UInt(bitPattern: theirs)),
                        "another heap's \(size)-byte allocation")
                try other.freeChecked(theirs)
            }
            // Inside the heap's reserved range, on a page never mapped: the heap takes everything in
            // its range for its own memory given back, so this is a double free rather than foreign.
            let unmapped = mine + 64 * twoMiB
            #expect(!heap.contains(unmapped))
            let inRange = heapError { try heap.freeChecked(unmapped) }
            #expect(inRange == .doubleFree(address: UInt(bitPattern: unmapped)) || inRange == .foreignPointer(address: UInt(bitPattern: unmapped)))
            #expect(heap.statistics.sizeClasses.reduce(0) { $0 + $1.liveObjects } == 1, "nothing was freed by the failed calls")
            try heap.freeChecked(mine)
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason), arguments: sizes.filter { $0 > 1 })
    func interiorPointersAreCaught(size: Int) throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests(checked: true))
            let p = try heap.allocateRetryingPoolRace(size)
            let start = UInt(bitPattern: p)
            for offset in [1, 8, 63, size / 2, size - 1] + (size > 4096 ? [4096] : []) where offset > 0 && offset < size {
                #expect(heapError { try heap.freeChecked(p + offset) } == .interiorPointer(address: start + UInt(offset), allocationStart: start),
                        "\(size)-byte allocation, offset \(offset)")
            }
            try heap.freeChecked(p)
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason), arguments: sizes)
    func overrunPastTheEndIsCaught(size: Int) throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests(checked: true))
            let p = try heap.allocateRetryingPoolRace(size)
            memset(p, 0x11, size)  // writing every byte asked for is fine
            let end = p.advanced(by: size).assumingMemoryBound(to: UInt8.self)
            let saved = end.pointee
            end.pointee = saved &+ 1
            let error = heapError { try heap.freeChecked(p) }
            #expect(error == .overrun(address: UInt(bitPattern: p), size: size, firstBadOffset: size),
                    "one byte written past a \(size)-byte allocation")
            guard error != nil else { return }  // it was freed: its bytes are gone
            #expect(heap.usableSize(p) >= size, "the failed free freed nothing")
            end.pointee = saved
            let last = p.advanced(by: size + 15).assumingMemoryBound(to: UInt8.self)
            let savedLast = last.pointee
            last.pointee = savedLast &+ 1
            #expect(heapError { try heap.freeChecked(p) } == .overrun(address: UInt(bitPattern: p), size: size, firstBadOffset: size + 15))
            last.pointee = savedLast
            try heap.freeChecked(p)
        }
    }

    @Test(.enabled(if: canRunHeapTests, heapGateReason))
    func freeCheckedNeedsACheckedHeap() throws {
        try expectNoLeak {
            let heap = try DMAHeap(.forTests())
            let p = try heap.allocate(64)
            #expect(heapError { try heap.freeChecked(p) } == .checksDisabled)
            #expect(DMAHeapError.checksDisabled.description.contains("checked: true"))
            heap.free(p)
        }
    }
}
