import HugeAlloc
import Synchronization

/// What an `ha_mempool *` points to: the pool and the facts the entry points
/// check before calling it, in one allocation the C caller holds. Created by
/// `ha_mempool_create`, freed by `ha_mempool_destroy`, never moved.
@safe
struct CMempoolHandle {
    let pool: Unmanaged<Mempool>
    /// The pool's memory: `[start, end)`, for the two-compare foreign-pointer check.
    let start: UInt
    let end: UInt
    let checked: Bool
    let count: Int
}

/// The live pools of the C API, by name and address range: names are unique
/// (as with `rte_mempool_create`), and `ha_iova` finds a pool's memory here.
enum CMempoolRegistry {
    struct Entry {
        var name: String
        var start: UInt
        var end: UInt
        /// The `CMempoolHandle` address (0 while the pool is being made).
        var handle: UInt
    }

    static let entries = Mutex<[Entry]>([])

    /// The IOVA of `address` when it lies in a live pool's memory.
    static func iova(of address: UInt) -> UInt64? {
        entries.withLock { entries in
            for entry in entries where address >= entry.start && address < entry.end {
                let handle = unsafe UnsafePointer<CMempoolHandle>(bitPattern: entry.handle)!
                let pool = unsafe handle.pointee.pool.takeUnretainedValue()
                return unsafe pool.physicalAddress(of: UnsafeRawPointer(bitPattern: address)!)?.rawValue
            }
            return nil
        }
    }
}

let maximumNameBytes = 63

/// hugealloc.h's `HA_MEMPOOL_*` flags.
enum CMempoolFlags {
    static let checked: UInt32 = 1 << 0
    static let singleThread: UInt32 = 1 << 1
    static let stack: UInt32 = 1 << 2
    static let all = checked | singleThread | stack
}

@_cdecl("ha_mempool_create")
public func ha_mempool_create(
    _ name: UnsafePointer<CChar>?, _ count: UInt, _ objectSize: UInt, _ cacheSize: UInt,
    _ numaNode: Int32, _ flags: UInt32, _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> Int32 {
    let function = "ha_mempool_create"
    guard let out = unsafe out else {
        return CAPIError.record(CAPIError.invalidArgument, "\(function): out is NULL: pass the address of an ha_mempool * to receive the pool")
    }
    guard let name = unsafe name else {
        return CAPIError.record(CAPIError.invalidArgument, "\(function): name is NULL: give the pool a name of 1 to \(maximumNameBytes) bytes")
    }
    let poolName = unsafe String(cString: name)
    guard !poolName.isEmpty, poolName.utf8.count <= maximumNameBytes else {
        return CAPIError.record(CAPIError.invalidArgument,
            "\(function): name \"\(poolName.prefix(80))\" is \(poolName.utf8.count) bytes long: give a name of 1 to \(maximumNameBytes) bytes")
    }
    guard flags & ~CMempoolFlags.all == 0 else {
        return CAPIError.record(CAPIError.invalidArgument,
            "\(function): unknown flags 0x\(String(flags & ~CMempoolFlags.all, radix: 16)): use HA_MEMPOOL_CHECKED, HA_MEMPOOL_SINGLE_THREAD, HA_MEMPOOL_STACK or 0")
    }
    guard checkNode(numaNode, in: function) else { return CAPIError.invalidArgument }
    // Counts and sizes beyond what a pool can hold are refused by the
    // pool's own checks; anything past these limits would overflow first.
    guard let count = checkedSize(count, limit: Mempool.maximumCount, "object count", in: function),
          let objectSize = checkedSize(objectSize, limit: 1 << 40, "object size", in: function),
          let cacheSize = checkedSize(cacheSize, limit: Mempool.maximumCacheSize, "cache size", in: function)
    else { return CAPIError.invalidArgument }

    let configuration = MempoolConfiguration(
        count: count, objectSize: objectSize, cacheSize: cacheSize,
        backend: flags & CMempoolFlags.stack != 0 ? .stack : .ring,
        threading: flags & CMempoolFlags.singleThread != 0 ? .singleThread : .shared,
        checked: flags & CMempoolFlags.checked != 0, memoryChannels: 4)
    let mapping = MappingOptions(numaPolicy: numaNode == -1 ? .any : .bind(Int(numaNode)))

    // The name is taken under the registry's lock before the (slow) mapping,
    // so two threads creating the same name cannot both succeed.
    let taken = CMempoolRegistry.entries.withLock { entries in
        if entries.contains(where: { $0.name == poolName }) { return true }
        entries.append(.init(name: poolName, start: 0, end: 0, handle: 0))
        return false
    }
    if taken {
        return CAPIError.record(CAPIError.nameExists,
            "\(function): a pool named \"\(poolName)\" exists: choose another name or destroy that pool first")
    }
    let pool: Mempool
    do {
        pool = try Mempool(configuration: configuration, mapping: mapping)
    } catch {
        CMempoolRegistry.entries.withLock { $0.removeAll { $0.name == poolName } }
        return CAPIError.record(error, in: function)
    }
    let start = UInt(bitPattern: unsafe pool.base)
    let handle = UnsafeMutablePointer<CMempoolHandle>.allocate(capacity: 1)
    unsafe handle.initialize(to: CMempoolHandle(
        pool: Unmanaged.passRetained(pool), start: start, end: start + UInt(pool.length),
        checked: pool.isChecked, count: pool.count))
    CMempoolRegistry.entries.withLock { entries in
        if let i = entries.firstIndex(where: { $0.name == poolName }) {
            entries[i] = .init(name: poolName, start: start, end: start + UInt(pool.length), handle: UInt(bitPattern: handle))
        }
    }
    unsafe out.pointee = OpaquePointer(handle)
    return 0
}

@_cdecl("ha_mempool_destroy")
public func ha_mempool_destroy(_ pool: OpaquePointer?) {
    guard let pool = unsafe pool else { return }
    let handle = unsafe UnsafeMutablePointer<CMempoolHandle>(pool)
    let known = CMempoolRegistry.entries.withLock { entries in
        guard let i = entries.firstIndex(where: { $0.handle == UInt(bitPattern: handle) }) else { return false }
        entries.remove(at: i)
        return true
    }
    guard known else {
        CAPIError.record(CAPIError.badPointer,
            "ha_mempool_destroy: 0x\(String(UInt(bitPattern: handle), radix: 16)) is not a live pool of this API: destroy each pool once, with the pointer ha_mempool_create gave")
        return
    }
    unsafe handle.pointee.pool.release()
    unsafe handle.deinitialize(count: 1)
    unsafe handle.deallocate()
}

@inline(never)
func nullPool(_ function: StaticString) {
    CAPIError.record(CAPIError.invalidArgument, "\(function): pool is NULL: pass the pool ha_mempool_create gave")
}

@_cdecl("ha_mempool_get")
public func ha_mempool_get(_ pool: OpaquePointer?) -> UnsafeMutableRawPointer? {
    guard let pool = unsafe pool else { nullPool("ha_mempool_get"); return nil }
    let handle = unsafe UnsafePointer<CMempoolHandle>(pool)
    if let object = unsafe handle.pointee.pool._withUnsafeGuaranteedRef(getOne) { return unsafe object }
    poolEmpty()
    return nil
}

/// The pool's inlined get, as a function the optimizer inlines into the
/// entry point (a closure here stays a call of its own).
@inline(__always)
func getOne(_ pool: Mempool) -> UnsafeMutableRawPointer? { unsafe pool.get() }

@inline(never)
func poolEmpty() {
    CAPIError.record(CAPIError.noObjects,
        fixed: "ha_mempool_get: the pool is empty (every object is handed out): put objects back or create a larger pool")
}

@_cdecl("ha_mempool_get_bulk")
public func ha_mempool_get_bulk(_ pool: OpaquePointer?, _ objects: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ n: UInt32) -> Int32 {
    guard let pool = unsafe pool else { nullPool("ha_mempool_get_bulk"); return CAPIError.invalidArgument }
    let handle = unsafe UnsafePointer<CMempoolHandle>(pool)
    guard let objects = unsafe objects else {
        if n == 0 { return 0 }
        return CAPIError.record(CAPIError.invalidArgument, "ha_mempool_get_bulk: objects is NULL: pass an array of \(n) pointers")
    }
    let table = unsafe UnsafeMutableRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    // Common counts get a copy of the pool's inlined path with the count
    // folded in (as a caller's constant would be in Swift or C).
    @inline(__always) func getMany(_ p: Mempool) -> Bool {
        switch n {
        case 32: unsafe p.get(into: table, count: 32)
        case 64: unsafe p.get(into: table, count: 64)
        case 16: unsafe p.get(into: table, count: 16)
        case 8: unsafe p.get(into: table, count: 8)
        default: unsafe p.get(into: table, count: Int(n))
        }
    }
    let ok = unsafe handle.pointee.pool._withUnsafeGuaranteedRef(getMany)
    if ok { return 0 }
    return unsafe bulkGetFailed(handle, n)
}

@inline(never)
func bulkGetFailed(_ handle: UnsafePointer<CMempoolHandle>, _ n: UInt32) -> Int32 {
    let count = unsafe handle.pointee.count
    if Int(n) > count {
        return CAPIError.record(CAPIError.invalidArgument,
            "ha_mempool_get_bulk: asked for \(n) objects from a pool of \(count): ask for at most \(count)")
    }
    return CAPIError.record(CAPIError.noObjects,
        fixed: "ha_mempool_get_bulk: fewer objects are available than asked for (nothing was taken): put objects back or create a larger pool")
}

@_cdecl("ha_mempool_put")
public func ha_mempool_put(_ pool: OpaquePointer?, _ object: UnsafeMutableRawPointer?) {
    guard let pool = unsafe pool else { nullPool("ha_mempool_put"); return }
    let handle = unsafe UnsafePointer<CMempoolHandle>(pool)
    let address = UInt(bitPattern: object)
    // One branch covers NULL, foreign pointers and checked mode.
    if _slowPath(unsafe address &- handle.pointee.start >= handle.pointee.end &- handle.pointee.start || handle.pointee.checked) {
        var one = unsafe object
        unsafe withUnsafePointer(to: &one) { unsafe slowPut(handle, $0, 1, "ha_mempool_put") }
        return
    }
    // A local function, not a closure, so the optimizer inlines it (and
    // with it the pool's put) into this entry point.
    @inline(__always) func putOne(_ p: Mempool) { unsafe p.put(object.unsafelyUnwrapped) }
    unsafe handle.pointee.pool._withUnsafeGuaranteedRef(putOne)
}

@_cdecl("ha_mempool_put_bulk")
public func ha_mempool_put_bulk(_ pool: OpaquePointer?, _ objects: UnsafePointer<UnsafeMutableRawPointer?>?, _ n: UInt32) {
    guard let pool = unsafe pool else { nullPool("ha_mempool_put_bulk"); return }
    let handle = unsafe UnsafePointer<CMempoolHandle>(pool)
    guard let objects = unsafe objects else {
        if n != 0 { CAPIError.record(CAPIError.invalidArgument, "ha_mempool_put_bulk: objects is NULL: pass the array of \(n) objects to put back") }
        return
    }
    // One compare per call, none per object: in bulk, checking each
    // pointer's range would cost more than the put itself (the pool's copy
    // of 32 pointers is a few cycles). Checked pools check every object.
    let (checked, count) = unsafe (handle.pointee.checked, handle.pointee.count)
    if _slowPath(checked || Int(n) > count) {
        unsafe slowPut(handle, objects, Int(n), "ha_mempool_put_bulk")
        return
    }
    let table = unsafe UnsafeRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    @inline(__always) func putMany(_ p: Mempool) {
        switch n {
        case 32: _ = unsafe p.put(from: table, count: 32)
        case 64: _ = unsafe p.put(from: table, count: 64)
        case 16: _ = unsafe p.put(from: table, count: 16)
        case 8: _ = unsafe p.put(from: table, count: 8)
        default: _ = unsafe p.put(from: table, count: Int(n))
        }
    }
    unsafe handle.pointee.pool._withUnsafeGuaranteedRef(putMany)
}

/// The put path for checked pools and for calls the fast path refused:
/// every misuse becomes an error for `ha_last_error()`, nothing is put back.
@inline(never)
func slowPut(_ handle: UnsafePointer<CMempoolHandle>, _ objects: UnsafePointer<UnsafeMutableRawPointer?>, _ n: Int, _ function: String) {
    let h = unsafe handle.pointee
    let pool = unsafe h.pool.takeUnretainedValue()
    guard n <= h.count else {
        CAPIError.record(CAPIError.invalidArgument, "\(function): \(n) objects put back into a pool of \(h.count): a pool never hands out more than it holds")
        return
    }
    for i in 0..<n {
        let address = UInt(bitPattern: unsafe objects[i])
        if address == 0 {
            CAPIError.record(CAPIError.invalidArgument, "\(function): object \(i) is NULL: put back only pointers the pool handed out (nothing was put back)")
            return
        }
        if address < h.start || address >= h.end {
            CAPIError.record(CAPIError.badPointer,
                "\(function): object \(i) at 0x\(String(address, radix: 16)) does not belong to this pool: put it back into the pool it came from (nothing was put back)")
            return
        }
    }
    let table = unsafe UnsafeRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    if h.checked {
        do { try unsafe pool.putChecked(from: table, count: n) } catch { CAPIError.record(error, in: function) }
    } else {
        _ = unsafe pool.put(from: table, count: n)
    }
}

@_cdecl("ha_mempool_available")
public func ha_mempool_available(_ pool: OpaquePointer?) -> UInt32 {
    guard let pool = unsafe pool else { return 0 }
    let handle = unsafe UnsafePointer<CMempoolHandle>(pool)
    return UInt32(clamping: unsafe handle.pointee.pool.takeUnretainedValue().availableCount)
}
