/// Why a ``DMAHeap`` call failed: what was wrong and how to fix it.
public enum DMAHeapError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A size of zero or less.
    case zeroSize(requested: Int)
    /// A size whose rounding overflows, or beyond what the heap can ever hold.
    case sizeTooLarge(requested: Int, maximum: Int)
    /// An alignment that is not a power of two.
    case alignmentNotPowerOfTwo(requested: Int)
    /// A boundary that is not a power of two.
    case boundaryNotPowerOfTwo(requested: Int)
    /// A boundary smaller than the allocation: it would have to cross it.
    case boundarySmallerThanSize(size: Int, boundary: Int)
    /// A node the heap does not serve (absent, offline, or outside the
    /// process's allowed nodes).
    case unknownNode(UnknownNode)
    /// No physically contiguous run of the size asked for could be found.
    case noContiguousRun(neededBytes: Int, largestRunBytes: Int, advice: String)
    /// Growing failed: not enough hugepages on the node, the memlock or
    /// cgroup limit, or a placement that could not be verified.
    case growthFailed(node: Int, neededBytes: Int, underlying: MappingError)
    /// The heap's virtual range on the node is full.
    case rangeExhausted(node: Int, maximumBytes: Int)
    /// A memory event handler (a VFIO container following the heap) refused new memory.
    case eventRefused(MemoryArenaError)
    /// The kernel hid physical addresses (no `CAP_SYS_ADMIN`): the heap
    /// cannot tell a device where its memory is.
    case noPhysicalAddresses
    /// A system call failed.
    case systemCall(SystemCallError)
    /// Too many heaps alive at once.
    case tooManyHeaps(maximum: Int)
    /// A memzone name already in use.
    case memzoneExists(name: String)
    /// No memzone of that name.
    case memzoneNotFound(name: String)
    /// A memzone name that is empty or too long.
    case invalidMemzoneName(name: String, maximumLength: Int)

    // Checked mode (``DMAHeap/freeChecked(_:)``).

    /// The pointer is not memory of this heap.
    case foreignPointer(address: UInt)
    /// The pointer lies inside an allocation instead of at its start.
    case interiorPointer(address: UInt, allocationStart: UInt)
    /// The allocation was freed already.
    case doubleFree(address: UInt)
    /// Bytes past the end of the allocation were written.
    case overrun(address: UInt, size: Int, firstBadOffset: Int)
    /// A checked call on a heap created without checks.
    case checksDisabled

    public var description: String {
        switch self {
        case .zeroSize(let n):
            return "the size must be at least 1 byte (got \(n))"
        case .sizeTooLarge(let n, let maximum):
            return "\(n) bytes is more than the heap can hold on a node (\(maximum) bytes); "
                + "raise DMAHeap.Options.maximumBytes or allocate less"
        case .alignmentNotPowerOfTwo(let a):
            return "the alignment must be a power of two (got \(a)); use \(a <= 1 ? 1 : 1 << (Int.bitWidth - (a - 1).leadingZeroBitCount))"
        case .boundaryNotPowerOfTwo(let b):
            return "the boundary must be a power of two (got \(b)), e.g. 4096 for NVMe PRP entries"
        case .boundarySmallerThanSize(let size, let boundary):
            return "\(size) bytes cannot fit between two \(boundary)-byte boundaries; "
                + "split the transfer or use a boundary of at least \(size <= 1 ? 1 : 1 << (Int.bitWidth - (size - 1).leadingZeroBitCount))"
        case .unknownNode(let payload):
            return "\(payload)"
        case .noContiguousRun(let needed, let largest, let advice):
            let why = largest >= needed
                ? "runs that long were seen, but none at the physical alignment or inside the boundary asked for"
                : "largest run available: \(ByteCount.format(largest))"
            return "no physically contiguous run of \(ByteCount.format(needed)) was found (\(why)); \(advice)"
        case .growthFailed(let node, let needed, let underlying):
            return "the heap could not grow by \(ByteCount.format(needed)) on node \(node): \(underlying)"
        case .rangeExhausted(let node, let maximum):
            return "the heap's \(ByteCount.format(maximum)) virtual range on node \(node) is full; "
                + "create the heap with a larger DMAHeap.Options.maximumBytes"
        case .eventRefused(let error):
            return "new heap memory was refused: \(error)"
        case .noPhysicalAddresses:
            return "the kernel hides physical addresses from this process (reading /proc/self/pagemap needs CAP_SYS_ADMIN); "
                + "run as root, or attach the heap to a VFIO container and use IOVAs"
        case .systemCall(let error):
            return "\(error)"
        case .tooManyHeaps(let maximum):
            return "at most \(maximum) heaps can be alive at once; share one heap between threads"
        case .memzoneExists(let name):
            return "a memzone named \"\(name)\" exists already; look it up with memzone(named:) or free it first"
        case .memzoneNotFound(let name):
            return "no memzone is named \"\(name)\""
        case .invalidMemzoneName(let name, let maximum):
            return "memzone names must have 1 to \(maximum) bytes (got \"\(name)\", \(name.utf8.count) bytes)"
        case .foreignPointer(let a):
            return "0x\(String(a, radix: 16)) is not memory of this heap"
        case .interiorPointer(let a, let start):
            return "0x\(String(a, radix: 16)) points inside the allocation at 0x\(String(start, radix: 16)); free its start"
        case .doubleFree(let a):
            return "the allocation at 0x\(String(a, radix: 16)) was freed already"
        case .overrun(let a, let size, let offset):
            return "the \(size)-byte allocation at 0x\(String(a, radix: 16)) was written past its end (byte \(offset) changed)"
        case .checksDisabled:
            return "the heap was created without checks; create it with DMAHeap.Options(checked: true)"
        }
    }
}
