import HugeAlloc
import Synchronization

/// Every DMA-heap allocation of one driver: queues, the Identify buffer,
/// the PRP list. Freed together when the owner goes, unless ``leak`` is
/// set: memory a controller may still write is never handed out again.
final class DMAMemory {
    let heap: DMAHeap
    private var pointers: [UnsafeMutableRawPointer] = []
    var leak = false

    init(heap: DMAHeap) { self.heap = heap }

    /// `bytes` zeroed, page-aligned, not crossing a page boundary (up to one
    /// page), and the address the controller is given for it.
    func allocate(_ bytes: Int, for what: String) throws(NVMeError) -> (UnsafeMutableRawPointer, UInt64) {
        precondition(bytes <= memoryPageSize, "driver structures fit in one memory page")
        let pointer: UnsafeMutableRawPointer
        do {
            pointer = try heap.allocate(bytes, alignment: memoryPageSize, boundary: memoryPageSize, zeroed: true)
        } catch { throw .memory(error) }
        pointers.append(pointer)
        guard let address = heap.iova(of: pointer) else { throw .noDeviceAddress(what: "the \(what)") }
        return (pointer, address)
    }

    deinit {
        guard !leak else { return }
        for pointer in pointers { heap.free(pointer) }
    }
}

/// One command as the driver builds it: the fields of the 64-byte
/// submission queue entry it uses (4.2); everything else is zero.
struct Command {
    /// For error messages: "Identify", "Write", ...
    var name: String
    var opcode: UInt8
    var namespaceID: UInt32 = 0
    var prp1: UInt64 = 0
    var prp2: UInt64 = 0
    var cdw10: UInt32 = 0
    var cdw11: UInt32 = 0
    var cdw12: UInt32 = 0
}

/// What a completion queue entry said (4.6).
struct Completion {
    var commandID: UInt16
    var dword0: UInt32
    var status: NVMeStatus
}

/// A submission queue and the completion queue it posts to, each in one
/// page of DMA-heap memory: the only code that writes
/// submission entries and reads completion entries.
///
/// The driver tracks the submission tail and the completion head; a
/// completion entry is new when its phase tag equals the phase the driver
/// expects, which starts at 1 (the queue memory is zeroed) and flips each
/// time the head wraps (4.6, "Phase Tag").
struct QueuePair {
    /// 0 for the admin queues.
    let id: Int
    let depth: Int
    let submissions: UnsafeMutableRawPointer
    let completions: UnsafeMutableRawPointer
    let submissionAddress: UInt64
    let completionAddress: UInt64
    /// Offsets in BAR0 of SQyTDBL and CQyHDBL (3.1.24, 3.1.25).
    let tailDoorbell: Int
    let headDoorbell: Int
    var tail = 0
    var head = 0
    var phase: UInt32 = CompletionEntry.phase
    var nextCommandID: UInt16 = 0

    /// Allocates both queues, zeroed, each in one page.
    init(id: Int, depth: Int, memory: DMAMemory, doorbellStride: Int) throws(NVMeError) {
        self.id = id
        self.depth = depth
        tailDoorbell = Register.doorbells + 2 * id * doorbellStride
        headDoorbell = Register.doorbells + (2 * id + 1) * doorbellStride
        (submissions, submissionAddress) = try memory.allocate(depth * SubmissionEntry.size, for: "submission queue \(id)")
        (completions, completionAddress) = try memory.allocate(depth * CompletionEntry.size, for: "completion queue \(id)")
    }

    /// Writes `command` into the slot at the tail and advances the tail;
    /// returns its command identifier. The caller rings the tail doorbell.
    mutating func place(_ command: Command) -> UInt16 {
        let id = nextCommandID
        nextCommandID &+= 1
        let entry = submissions + tail * SubmissionEntry.size
        entry.initializeMemory(as: UInt8.self, repeating: 0, count: SubmissionEntry.size)
        entry.storeBytes(of: command.opcode, toByteOffset: SubmissionEntry.opcode, as: UInt8.self)
        entry.storeBytes(of: id.littleEndian, toByteOffset: SubmissionEntry.commandID, as: UInt16.self)
        entry.storeBytes(of: command.namespaceID.littleEndian, toByteOffset: SubmissionEntry.namespaceID, as: UInt32.self)
        entry.storeBytes(of: command.prp1.littleEndian, toByteOffset: SubmissionEntry.prp1, as: UInt64.self)
        entry.storeBytes(of: command.prp2.littleEndian, toByteOffset: SubmissionEntry.prp2, as: UInt64.self)
        for (i, dword) in [command.cdw10, command.cdw11, command.cdw12].enumerated() {
            entry.storeBytes(of: dword.littleEndian, toByteOffset: SubmissionEntry.cdw10 + 4 * i, as: UInt32.self)
        }
        tail = (tail + 1) % depth
        return id
    }

    /// The completion entry at the head if the controller has posted it
    /// (its phase tag is the expected one); advances the head, flipping the
    /// expected phase when it wraps. The caller rings the head doorbell.
    mutating func takeCompletion() -> Completion? {
        let entry = completions + head * CompletionEntry.size
        // Acquiring: the rest of the entry is read after the word that says it is there.
        let dword3 = UInt32(littleEndian: (entry + CompletionEntry.statusWord)
            .assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .acquiring))
        guard dword3 & CompletionEntry.phase == phase else { return nil }
        let dword0 = UInt32(littleEndian: entry.load(fromByteOffset: CompletionEntry.commandSpecific, as: UInt32.self))
        head += 1
        if head == depth {
            head = 0
            phase ^= CompletionEntry.phase
        }
        return Completion(commandID: UInt16(truncatingIfNeeded: dword3), dword0: dword0, status: NVMeStatus(dword3: dword3))
    }
}
