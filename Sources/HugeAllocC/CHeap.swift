import CHugeAllocShims
import HugeAlloc
import Synchronization

/// The process's DMA heap behind `ha_malloc`/`ha_free`: created once (by
/// `ha_heap_init` or the first allocation), then published to readers with
/// one atomic load, and kept until the process exits.
enum CHeap {
    static let checkedFlag: UInt32 = 1
    static let searchAllFlag: UInt32 = 2
    static let knownFlags = checkedFlag | searchAllFlag
    /// `Unmanaged<DMAHeap>` bits once the heap exists (retained for good),
    /// with bit 0 set when it is checked; 0 before.
    static let published = Atomic<UInt>(0)
    /// Creation, and the flags it was made with.
    static let creation = Mutex<UInt32?>(nil)

    /// The heap if it exists: one acquiring load.
    @inline(__always)
    static var current: DMAHeap? {
        let bits = published.load(ordering: .acquiring)
        guard bits != 0 else { return nil }
        return unsafe Unmanaged<DMAHeap>.fromOpaque(UnsafeRawPointer(bitPattern: bits & ~1)!).takeUnretainedValue()
    }

    /// Whether the heap was made with `HA_HEAP_CHECKED`.
    static var isChecked: Bool { published.load(ordering: .relaxed) & 1 != 0 }

    /// The flags the heap was made with, nil before.
    static var flags: UInt32? { creation.withLock { $0 } }

    /// The heap, created with `flags` when it does not exist yet. Records
    /// the error and returns nil when it cannot be made.
    static func heap(flags: UInt32, strict: Bool, function: String) -> DMAHeap? {
        if !strict, let heap = current { return heap }
        return creation.withLock { made -> DMAHeap? in
            if let made {
                if strict && made != flags {
                    CAPIError.record(CAPIError.invalidArgument,
                        "\(function): the heap exists with flags 0x\(String(made, radix: 16)): call ha_heap_init once, before the first ha_malloc")
                    return nil
                }
                return current
            }
            do throws(DMAHeapError) {
                // Every free 2 MiB page: the contiguous search maps at most what is free.
                let search = flags & searchAllFlag != 0 ? Int.max / 2 : nil
                let heap = try DMAHeap(DMAHeap.Options(checked: flags & checkedFlag != 0, contiguousSearchBytes: search))
                let bits = unsafe UInt(bitPattern: Unmanaged.passRetained(heap).toOpaque()) | UInt(flags & checkedFlag)
                published.store(bits, ordering: .releasing)
                made = flags
                return heap
            } catch {
                CAPIError.record(error, in: "\(function) (creating the DMA heap)")
                return nil
            }
        }
    }

    static func allocate(_ size: UInt, _ alignment: UInt, _ node: Int32, _ iovaOut: UnsafeMutablePointer<UInt64>?,
                         zeroed: Bool, function: String) -> UnsafeMutableRawPointer? {
        guard size > 0 else {
            CAPIError.record(CAPIError.invalidArgument, "\(function): size 0: ask for at least 1 byte")
            return nil
        }
        guard let bytes = checkedSize(size, limit: 1 << 46, "size", in: function) else { return nil }
        let align = alignment == 0 ? 64 : alignment
        guard align & (align &- 1) == 0, let alignBytes = checkedSize(align, limit: 1 << 30, "alignment", in: function) else {
            if align & (align &- 1) != 0 {
                CAPIError.record(CAPIError.invalidArgument,
                    "\(function): alignment \(alignment) is not a power of two: use 0 (64 bytes), 64, 4096 or another power of two")
            }
            return nil
        }
        guard checkNode(node, in: function) else { return nil }
        guard let heap = heap(flags: 0, strict: false, function: function) else { return nil }
        do {
            let pointer = try unsafe heap.allocate(bytes, alignment: alignBytes, node: node == -1 ? nil : Int(node), zeroed: zeroed)
            if let iovaOut = unsafe iovaOut { unsafe iovaOut.pointee = heap.iova(of: pointer) ?? UInt64.max }
            return unsafe pointer
        } catch {
            if case .noContiguousRun = error, (flags ?? 0) & searchAllFlag == 0 {
                CAPIError.record(CAPIError.noMemory, "\(function): \(error); from C, ha_heap_init(HA_HEAP_SEARCH_ALL) "
                    + "before the first ha_malloc makes the heap look at every free 2 MiB page")
            } else {
                CAPIError.record(error, in: function)
            }
            return nil
        }
    }
}

@_cdecl("ha_heap_init")
public func ha_heap_init(_ flags: UInt32) -> Int32 {
    guard flags & ~CHeap.knownFlags == 0 else {
        return CAPIError.record(CAPIError.invalidArgument,
            "ha_heap_init: unknown flags 0x\(String(flags & ~CHeap.knownFlags, radix: 16)): use HA_HEAP_CHECKED, HA_HEAP_SEARCH_ALL, both or 0")
    }
    return CHeap.heap(flags: flags, strict: true, function: "ha_heap_init") == nil ? ha_capi_error_code() : 0
}

@_cdecl("ha_malloc")
public func ha_malloc(_ size: UInt, _ alignment: UInt, _ numaNode: Int32, _ iovaOut: UnsafeMutablePointer<UInt64>?) -> UnsafeMutableRawPointer? {
    unsafe CHeap.allocate(size, alignment, numaNode, iovaOut, zeroed: false, function: "ha_malloc")
}

@_cdecl("ha_zmalloc")
public func ha_zmalloc(_ size: UInt, _ alignment: UInt, _ numaNode: Int32, _ iovaOut: UnsafeMutablePointer<UInt64>?) -> UnsafeMutableRawPointer? {
    unsafe CHeap.allocate(size, alignment, numaNode, iovaOut, zeroed: true, function: "ha_zmalloc")
}

@_cdecl("ha_free")
public func ha_free(_ pointer: UnsafeMutableRawPointer?) {
    guard let pointer = unsafe pointer else { return }
    guard let heap = CHeap.current, unsafe heap.contains(pointer) else {
        CAPIError.record(CAPIError.badPointer,
            "ha_free: 0x\(String(UInt(bitPattern: pointer), radix: 16)) is not DMA heap memory: give ha_free only what ha_malloc or ha_zmalloc returned (pool objects go back with ha_mempool_put)")
        return
    }
    guard CHeap.isChecked else { return unsafe heap.free(pointer) }
    do {
        try unsafe heap.freeChecked(pointer)
    } catch {
        CAPIError.record(error, in: "ha_free")
    }
}

@_cdecl("ha_iova")
public func ha_iova(_ address: UnsafeRawPointer?) -> UInt64 {
    guard let address = unsafe address else { return UInt64.max }
    if let heap = CHeap.current, unsafe heap.contains(address) { return unsafe heap.iova(of: address) ?? UInt64.max }
    return CMempoolRegistry.iova(of: UInt(bitPattern: address)) ?? UInt64.max
}
