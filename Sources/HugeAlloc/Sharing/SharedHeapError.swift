/// Why a shared heap call failed, with what to do about it.
public enum SharedHeapError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No free block holds the request. The heap's capacity is fixed when
    /// it is published.
    case outOfMemory(name: String, requested: Int, alignment: Int, largestFreeBlock: Int, freeBytes: Int, capacity: Int)
    /// The alignment is not a power of two, or above the page size.
    case badAlignment(requested: Int, maximum: Int)
    /// The size is 0 or above the heap's capacity.
    case invalidSize(requested: Int, capacity: Int)
    /// The pointer is not one this heap handed out.
    case foreignPointer(name: String, address: UInt)
    /// The block was freed already.
    case doubleFree(name: String, address: UInt)
    /// A memzone of this name exists.
    case memzoneExists(name: String, address: UInt, bytes: Int)
    /// No memzone has this name.
    case memzoneNotFound(name: String)
    /// The name is empty or too long.
    case invalidMemzoneName(String, maximumLength: Int)
    /// Every memzone table slot is taken.
    case memzoneTableFull(maximum: Int)
    /// A process died holding the heap's lock and this process may not
    /// repair the heap (or an earlier holder gave the lock up unrepaired).
    case lockOwnerDied(name: String, pid: Int32)
    /// The block headers do not form a chain: memory was overwritten.
    case corrupted(name: String, offset: Int, reason: String)
    /// The lock failed otherwise.
    case systemCall(SystemCallError)

    public var description: String {
        switch self {
        case let .outOfMemory(name, requested, alignment, largest, free, capacity):
            return "shared heap \"\(name)\" has no free block for \(requested) bytes aligned to \(alignment): the largest free block holds \(max(0, largest - SharedHeapHandle.headerBytes)) bytes, \(free) of \(capacity) bytes are free; free blocks (or reclaim() a dead process's blocks in checked mode), or publish the heap with more bytes (its capacity is fixed when published)"
        case let .badAlignment(requested, maximum):
            return "alignment \(requested) is not a power of two from 1 to \(maximum) (the page size); ask for one that is"
        case let .invalidSize(requested, capacity):
            return "cannot allocate \(requested) bytes from a shared heap of \(capacity) bytes; ask for 1 byte to its capacity"
        case let .foreignPointer(name, address):
            return "0x\(String(address, radix: 16)) is not a block of shared heap \"\(name)\"; free it where it came from"
        case let .doubleFree(name, address):
            return "0x\(String(address, radix: 16)) in shared heap \"\(name)\" is free already (a double free)"
        case let .memzoneExists(name, address, bytes):
            return "a memzone \"\(name)\" exists already (\(bytes) bytes at 0x\(String(address, radix: 16))); look it up, or free it first"
        case .memzoneNotFound(let name):
            return "no memzone \"\(name)\" in this shared heap"
        case let .invalidMemzoneName(name, maximum):
            return "invalid memzone name \"\(name)\": use 1 to \(maximum) UTF-8 bytes"
        case .memzoneTableFull(let maximum):
            return "the shared heap's memzone table is full (\(maximum) memzones); free one first"
        case let .lockOwnerDied(name, pid):
            return "process \(pid == 0 ? "(unknown)" : "\(pid)") died holding the lock of shared heap \"\(name)\" and the heap was not repaired; publish it anew"
        case let .corrupted(name, offset, reason):
            return "shared heap \"\(name)\" is corrupted at data offset \(offset): \(reason); something wrote outside its blocks"
        case .systemCall(let error):
            return "\(error)"
        }
    }
}
