import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// The raw storage of the ring, the stack and a thread's record: pinned
/// header layouts (each side of a ring, and a stack's lock, alone in its
/// 128-byte block; a record's header in one cache line), and owners that
/// free what they allocated.
@Suite struct MempoolStorageTests {
    @Test func headersHaveTheirSizes() {
        #expect(MemoryLayout<MempoolPaddedIndex>.size == 128)
        #expect(MemoryLayout<MempoolPaddedCount>.size == 128)
        #expect(MemoryLayout<MempoolPaddedHeadTail>.size == 128)
        // One block per side, each holding its head and tail.
        #expect(MemoryLayout<MempoolRing.Header>.stride == 256)
        #expect(MemoryLayout<MempoolStack.Header>.stride == 256)
        #expect(MemoryLayout<MempoolRecord.Header>.stride == 64)
        #expect(MemoryLayout<MempoolRecord>.size == 8)
    }

    @Test func ringKeepsOrderAcrossTheWrapAndRefusesWhatDoesNotFit() {
        let ring = MempoolRing(capacity: 5)  // 8 slots
        let objects = (1...5).map { UnsafeMutableRawPointer(bitPattern: $0 * 64)! }
        var out = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: 5)
        for round in 0..<4 {
            let first = ring.enqueue(objects, count: 3)
            let second = ring.enqueue(Array(objects[3...]), count: 2)
            let sixth = ring.enqueue(objects, count: 1)
            let held = ring.count
            #expect(first && second && !sixth && held == 5, "round \(round): a sixth object does not fit")
            let all = ring.dequeue(into: &out, count: 5)
            let more = ring.dequeue(into: &out, count: 1)
            let left = ring.count
            #expect(all && out == objects && !more && left == 0)
        }
    }

    @Test func stackIsLastInFirstOut() {
        let stack = MempoolStack(capacity: 4)
        let objects = (1...4).map { UnsafeMutableRawPointer(bitPattern: $0 * 64)! }
        var out = [UnsafeMutableRawPointer](repeating: UnsafeMutableRawPointer(bitPattern: 1)!, count: 4)
        let pushed = stack.push(objects, count: 4, locked: true)
        let fifth = stack.push(objects, count: 1, locked: true)
        let held = stack.count
        #expect(pushed && !fifth && held == 4)
        let popped = stack.pop(into: &out, count: 4, locked: false)
        let more = stack.pop(into: &out, count: 1, locked: true)
        let left = stack.count
        #expect(popped && out == objects.reversed() && !more && left == 0)
    }

    @Test func recordHeaderIsTyped() {
        let record = MempoolRecord.allocate(poolID: 42, capacity: 8)
        defer { record.deallocate() }
        #expect(record.poolID == 42 && record.count == 0)
        #expect(UnsafeRawPointer(record.slots) - UnsafeRawPointer(record.header) == 64)
        record.setCount(3)
        record.bump(.gets, by: 5)
        record.bump(.flushes, by: 1)
        #expect(record.count == 3 && record.statistics == MempoolStatistics(gets: 5, flushes: 1))
        #expect(MempoolRecord(bits: record.bits)?.poolID == 42 && MempoolRecord(bits: 0) == nil)
    }
}
