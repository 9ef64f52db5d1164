import Synchronization

// STAND-IN for the DMA heap being written on main (drop at merge).
//
// Only the part of the heap's API the C API uses: allocate, free,
// freeChecked, contains, iova(of:), translate, usableSize. Behind it: one
// 64 MiB mapping of 2 MiB hugepages made at creation (populated, locked,
// translated from /proc/self/pagemap), carved first-fit under a lock. It
// does not grow, trim, place on nodes or publish events.

/// What went wrong in the stand-in heap.
public enum DMAHeapError: Error, Sendable, CustomStringConvertible {
    case invalidSize(Int)
    case invalidAlignment(Int)
    case outOfMemory(requested: Int, capacity: Int)
    case notAllocated(address: UInt)
    case noSuchNode(Int)
    case memoryUnavailable(MappingError)

    public var description: String {
        switch self {
        case .invalidSize(let n):
            return "heap allocation size \(n) is not positive: ask for at least 1 byte"
        case .invalidAlignment(let a):
            return "heap alignment \(a) is not a power of two up to 2 MiB: use 64, 4096 or another power of two"
        case .outOfMemory(let n, let capacity):
            return "no IOVA-contiguous run of \(n) bytes is free in the heap's \(capacity) bytes: free memory or ask for less"
        case .notAllocated(let a):
            return "pointer 0x\(String(a, radix: 16)) is not the start of a live heap allocation: free only what the heap handed out, once"
        case .noSuchNode(let n):
            return "NUMA node \(n) does not hold the heap's memory: use node 0 or any"
        case .memoryUnavailable(let e):
            return "the heap's memory could not be mapped: \(e)"
        }
    }
}

@safe
public final class DMAHeap: @unchecked Sendable {
    public struct Options: Sendable {
        public var retentionBytes: Int
        public var checked: Bool
        public var maximumBytes: Int
        public init(retentionBytes: Int = 0, checked: Bool = false, maximumBytes: Int = 64 << 30) {
            self.retentionBytes = retentionBytes
            self.checked = checked
            self.maximumBytes = maximumBytes
        }
    }

    static let capacity = 64 << 20
    let mapping: MemoryMapping
    let start: UInt
    let end: UInt
    let translation: PhysicalTranslation?

    struct State {
        /// Free ranges (offset, length), sorted by offset, coalesced.
        var free: [(offset: Int, length: Int)]
        /// Live allocations: offset → length.
        var live: [Int: Int] = [:]
    }
    let state: Mutex<State>

    public init(_ options: Options = Options()) throws(DMAHeapError) {
        do {
            mapping = try MemoryMapping(length: Self.capacity, options: MappingOptions(lock: true))
        } catch {
            throw .memoryUnavailable(error)
        }
        start = UInt(bitPattern: unsafe mapping.base)
        end = start + UInt(mapping.length)
        translation = mapping.translation
        state = Mutex(State(free: [(0, Self.capacity)]))
    }

    public func allocate(
        _ size: Int, alignment: Int = 64, boundary: Int? = nil, node: Int? = nil, zeroed: Bool = false
    ) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        guard size > 0, size <= Self.capacity else { throw .invalidSize(size) }
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= 2 << 20 else {
            throw .invalidAlignment(alignment)
        }
        if let node, node != 0 { throw .noSuchNode(node) }
        let length = (size + 63) & ~63
        let found: Int? = state.withLock { s in
            for (i, range) in s.free.enumerated() {
                var offset = (range.offset + alignment - 1) & ~(alignment - 1)
                while offset + length <= range.offset + range.length {
                    var contiguous = length
                    if translation == nil || (translate(offset: offset, length: &contiguous) != nil && contiguous >= length) {
                        // Split the free range around [offset, offset + length).
                        var pieces: [(offset: Int, length: Int)] = []
                        if offset > range.offset { pieces.append((range.offset, offset - range.offset)) }
                        let tail = range.offset + range.length - (offset + length)
                        if tail > 0 { pieces.append((offset + length, tail)) }
                        s.free.replaceSubrange(i...i, with: pieces)
                        s.live[offset] = length
                        return offset
                    }
                    offset = ((offset + max(contiguous, 64)) + alignment - 1) & ~(alignment - 1)
                }
            }
            return nil
        }
        guard let found else { throw .outOfMemory(requested: size, capacity: Self.capacity) }
        let pointer = unsafe mapping.base + found
        if zeroed { unsafe pointer.initializeMemory(as: UInt8.self, repeating: 0, count: length) }
        return unsafe pointer
    }

    public func free(_ pointer: UnsafeMutableRawPointer) {
        try? unsafe freeChecked(pointer)
    }

    public func freeChecked(_ pointer: UnsafeMutableRawPointer) throws(DMAHeapError) {
        let address = UInt(bitPattern: pointer)
        guard address >= start, address < end else { throw .notAllocated(address: address) }
        let offset = Int(address - start)
        let ok = state.withLock { s in
            guard let length = s.live.removeValue(forKey: offset) else { return false }
            let i = s.free.firstIndex { $0.offset > offset } ?? s.free.count
            s.free.insert((offset, length), at: i)
            if i + 1 < s.free.count, s.free[i].offset + s.free[i].length == s.free[i + 1].offset {
                s.free[i].length += s.free[i + 1].length
                s.free.remove(at: i + 1)
            }
            if i > 0, s.free[i - 1].offset + s.free[i - 1].length == s.free[i].offset {
                s.free[i - 1].length += s.free[i].length
                s.free.remove(at: i)
            }
            return true
        }
        if !ok { throw .notAllocated(address: address) }
    }

    public func contains(_ address: UnsafeRawPointer) -> Bool {
        let a = UInt(bitPattern: address)
        return a >= start && a < end
    }

    public func iova(of address: UnsafeRawPointer) -> UInt64? {
        let a = UInt(bitPattern: address)
        guard a >= start, a < end else { return nil }
        return translation?.physicalAddress(atOffset: Int(a - start))?.rawValue
    }

    public func translate(_ address: UnsafeRawPointer, length: inout Int) -> UInt64? {
        let a = UInt(bitPattern: address)
        guard a >= start, a < end else { length = 0; return nil }
        return translate(offset: Int(a - start), length: &length)
    }

    func translate(offset: Int, length: inout Int) -> UInt64? {
        guard let translation else { length = 0; return nil }
        return translation.translate(offset: offset, length: &length)?.rawValue
    }

    public func usableSize(_ pointer: UnsafeRawPointer) -> Int {
        let a = UInt(bitPattern: pointer)
        guard a >= start, a < end else { return 0 }
        return state.withLock { $0.live[Int(a - start)] ?? 0 }
    }
}
