import HugeAlloc
import HugeAllocTestSupport
import Testing
@testable import HugeAllocNVMe

/// The NVMe driver's encodings, without a controller: completion status,
/// CAP fields, and the queue entries it writes and the completions it takes
/// (the controller side is tools/dma-vm-test's guest).
@Suite(.usesHugepagePool) struct NVMeTests {
    @Test func completionStatusIsDecodedFromDword3() {
        // CID 7, phase 1, SC 0Bh, SCT 0, DNR.
        let rejected = NVMeStatus(dword3: 7 | 1 << 16 | 0x0B << 17 | 0 << 25 | 1 << 31)
        #expect(rejected.type == .generic && rejected.code == 0x0B && rejected.doNotRetry)
        #expect(rejected.name == "Invalid Namespace or Format" && !rejected.isSuccess)
        let media = NVMeStatus(dword3: 0x81 << 17 | 2 << 25)
        #expect(media.type == .mediaAndDataIntegrity && media.name == "Unrecovered Read Error" && !media.doNotRetry)
        #expect(NVMeStatus(dword3: 0xFFFF | 1 << 16).isSuccess)  // CID and phase are not status
        #expect(NVMeStatus(dword3: 0x42 << 17 | 7 << 25).description.contains("vendor specific, SCT 7 SC 0x42"))
    }

    @Test func capabilityFields() {
        // QEMU 7.2: MQES 7FFh, CQR, TO 15 (7.5 s), DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
        let cap: UInt64 = 0x7FF | 1 << 16 | 0xF << 24 | 1 << 37 | 4 << 52
        #expect(Capabilities.maximumQueueEntries(cap) == 2048)
        #expect(Capabilities.contiguousQueuesRequired(cap))
        #expect(Capabilities.timeoutMilliseconds(cap) == 7500)
        #expect(Capabilities.doorbellStride(cap) == 4)
        #expect(Capabilities.doorbellStride(cap | 2 << 32) == 16)
        #expect(Capabilities.supportsNVMCommandSet(cap) && !Capabilities.supportsNVMCommandSet(cap & ~(1 << 37)))
        #expect(Capabilities.minimumPageSize(cap) == 4096 && Capabilities.minimumPageSize(cap | 1 << 48) == 8192)
    }

    @Test(.enabled(if: isRoot && hasFree2M, "needs root (the heap's physical addresses) and free 2 MiB hugepages"))
    func queueEntriesAndPhaseTags() throws {
        let heap = try DMAHeap()
        let memory = DMAMemory(heap: heap)
        var queue = try QueuePair(id: 1, depth: 4, memory: memory, doorbellStride: 16)
        #expect(queue.tailDoorbell == 0x1000 + 2 * 16 && queue.headDoorbell == 0x1000 + 3 * 16)
        #expect(queue.submissionAddress % 4096 == 0 && queue.completionAddress % 4096 == 0)

        let id = queue.place(Command(name: "Write", opcode: IOOpcode.write, namespaceID: 1, prp1: 0x1234_5000,
                                     prp2: 0xABCD_E000, cdw10: 0x8765_4321, cdw11: 0x1, cdw12: 255))
        let entry = UnsafeRawPointer(queue.submissions)
        #expect(entry.load(fromByteOffset: 0, as: UInt8.self) == 0x01)
        #expect(entry.load(fromByteOffset: 2, as: UInt16.self) == id)
        #expect(entry.load(fromByteOffset: 4, as: UInt32.self) == 1)
        #expect(entry.load(fromByteOffset: 24, as: UInt64.self) == 0x1234_5000)
        #expect(entry.load(fromByteOffset: 32, as: UInt64.self) == 0xABCD_E000)
        #expect((0..<3).map { entry.load(fromByteOffset: 40 + 4 * $0, as: UInt32.self) } == [0x8765_4321, 1, 255])
        #expect(queue.tail == 1)

        // The controller posts entries with phase 1 on the first pass, 0 on the second.
        func post(_ slot: Int, commandID: UInt16, phase: UInt32) {
            let cqe = queue.completions + slot * 16
            cqe.storeBytes(of: 0xC0DE, toByteOffset: 0, as: UInt32.self)
            cqe.storeBytes(of: UInt32(commandID) | phase << 16, toByteOffset: 12, as: UInt32.self)
        }
        let none = queue.takeCompletion()
        #expect(none == nil)  // zeroed memory: nothing posted
        for slot in 0..<4 {
            post(slot, commandID: UInt16(slot), phase: 1)
            let taken = queue.takeCompletion()
            let completion = try #require(taken)
            #expect(completion.commandID == UInt16(slot) && completion.dword0 == 0xC0DE && completion.status.isSuccess)
        }
        #expect(queue.head == 0 && queue.phase == 0)
        let stale = queue.takeCompletion()
        #expect(stale == nil)  // slot 0 still holds the first pass's entry
        post(0, commandID: 9, phase: 0)
        let next = queue.takeCompletion()
        #expect(next?.commandID == 9)
    }
}
