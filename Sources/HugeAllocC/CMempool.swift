import HugeAlloc
import CHugeAllocShims
import Synchronization

/// An `ha_mempool *`: the address of the pool's head
/// (`ha_capi_mempool_head`, which hugealloc.h reads as
/// `struct ha__mempool_head` in its inline get and put), holding the facts
/// those inline paths need and the `Mempool` itself, retained by
/// `ha_mempool_create` and released by `ha_mempool_destroy`.
@safe
struct CMempoolHandle {
    let head: UnsafeMutablePointer<ha_capi_mempool_head>

    init(_ pointer: OpaquePointer) {
        unsafe head = UnsafeMutablePointer(pointer)
    }

    init?(bits: UInt) {
        guard let head = unsafe UnsafeMutablePointer<ha_capi_mempool_head>(bitPattern: bits) else { return nil }
        unsafe self.head = head
    }

    /// A new head for `pool`, retaining it.
    init(retaining pool: Mempool) {
        var flags: UInt32 = pool.isChecked ? HA_CAPI_HEAD_CHECKED : 0
        var facts = (poolID: UInt64(HA_CAPI_NO_POOL_ID), slot: UInt64(0), capacity: Int64(0))
        if let cache = pool.inlineCache {
            flags |= HA_CAPI_HEAD_CACHE | (cache.countsOperations ? HA_CAPI_HEAD_STATS : 0)
            facts = (cache.poolID, UInt64(cache.slot), Int64(cache.capacity))
        }
        unsafe head = .allocate(capacity: 1)
        unsafe head.initialize(to: ha_capi_mempool_head(
            pool_id: facts.poolID, slot: facts.slot, cache_capacity: facts.capacity,
            base: UInt(bitPattern: pool.base), length: UInt(pool.length),
            flags: flags, abi: HA_CAPI_HEAD_ABI,
            pool: Unmanaged.passRetained(pool).toOpaque()))
    }

    var bits: UInt { UInt(bitPattern: unsafe head) }
    var opaque: OpaquePointer { unsafe OpaquePointer(head) }
    @inline(__always) var checked: Bool { unsafe head.pointee.flags & HA_CAPI_HEAD_CHECKED != 0 }
    @inline(__always) var pool: Unmanaged<Mempool> {
        unsafe Unmanaged.fromOpaque(head.pointee.pool.unsafelyUnwrapped)
    }

    /// Releases the pool and frees the head: the handle is dangling after.
    func destroy() {
        unsafe pool.release()
        unsafe head.deallocate()
    }
}

/// The live pools of the C API, by name and address range: names are unique
/// (as with `rte_mempool_create`), and `ha_iova` finds a pool's memory here.
enum CMempoolRegistry {
    struct Entry {
        var name: String
        var start: UInt
        var end: UInt
        /// The `CMempoolHandle` bits (0 while the pool is being made).
        var handle: UInt
    }

    static let entries = Mutex<[Entry]>([])

    /// The IOVA of `address` when it lies in a live pool's memory.
    static func iova(of address: UInt) -> UInt64? {
        entries.withLock { entries in
            for entry in entries where address >= entry.start && address < entry.end {
                guard let handle = CMempoolHandle(bits: entry.handle) else { return nil }
                let pool = unsafe handle.pool.takeUnretainedValue()
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
    let handle = CMempoolHandle(retaining: pool)
    CMempoolRegistry.entries.withLock { entries in
        if let i = entries.firstIndex(where: { $0.name == poolName }) {
            entries[i] = .init(name: poolName, start: start, end: start + UInt(pool.length), handle: handle.bits)
        }
    }
    unsafe out.pointee = handle.opaque
    return 0
}

@_cdecl("ha_mempool_destroy")
public func ha_mempool_destroy(_ pool: OpaquePointer?) {
    guard let pool = unsafe pool else { return }
    let handle = unsafe CMempoolHandle(pool)
    let known = CMempoolRegistry.entries.withLock { entries in
        guard let i = entries.firstIndex(where: { $0.handle == handle.bits }) else { return false }
        entries.remove(at: i)
        return true
    }
    guard known else {
        CAPIError.record(CAPIError.badPointer,
            "ha_mempool_destroy: 0x\(String(handle.bits, radix: 16)) is not a live pool of this API: destroy each pool once, with the pointer ha_mempool_create gave")
        return
    }
    handle.destroy()
}

@inline(never)
func nullPool(_ function: StaticString) {
    CAPIError.record(CAPIError.invalidArgument, "\(function): pool is NULL: pass the pool ha_mempool_create gave")
}

@c(ha_mempool_get)
public func ha_mempool_get(_ pool: OpaquePointer?) -> UnsafeMutableRawPointer? {
    // The fast path is the pool's cache alone and needs no frame: anything
    // else (NULL, checked pools, an empty cache, a thread's first get) is
    // `getSlow`, a tail call.
    if let pool = unsafe pool,
       let object = unsafe CMempoolHandle(pool).pool._withUnsafeGuaranteedRef(getFromCache) {
        return unsafe object
    }
    return unsafe getSlow(pool)
}

/// The pool's cache fast path, as a function the optimizer inlines into the
/// entry point (a closure here stays a call of its own).
@inline(__always)
func getFromCache(_ pool: Mempool) -> UnsafeMutableRawPointer? { unsafe pool.getFromCache() }

/// `ha_mempool_get` past the cache: the pool's whole `get()`.
@inline(never)
func getSlow(_ pool: OpaquePointer?) -> UnsafeMutableRawPointer? {
    guard let pool = unsafe pool else { nullPool("ha_mempool_get"); return nil }
    let handle = unsafe CMempoolHandle(pool)
    if let object = unsafe handle.pool._withUnsafeGuaranteedRef(getOne) { return unsafe object }
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

@c(ha_mempool_get_bulk)
public func ha_mempool_get_bulk(_ pool: OpaquePointer?, _ objects: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ n: UInt32) -> Int32 {
    // As in ha_mempool_get: the cache alone here, for a count of 32 (the
    // common burst, copied with the count folded in as a caller's constant
    // would be in Swift or C); any other count is `getBulk`, whose copy
    // loop needs registers this path does not save.
    if n == 32, let pool = unsafe pool, let objects = unsafe objects {
        let table = unsafe UnsafeMutableRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
        @inline(__always) func getFromCache(_ p: Mempool) -> Bool { unsafe p.getFromCache(into: table, count: 32) }
        if unsafe CMempoolHandle(pool).pool._withUnsafeGuaranteedRef(getFromCache) { return 0 }
    }
    return unsafe getBulk(pool, objects, n)
}

/// `ha_mempool_get_bulk` for any count: the cache, then `getBulkSlow`.
@inline(never)
func getBulk(_ pool: OpaquePointer?, _ objects: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ n: UInt32) -> Int32 {
    if let pool = unsafe pool, let objects = unsafe objects {
        let table = unsafe UnsafeMutableRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
        @inline(__always) func getFromCache(_ p: Mempool) -> Bool { unsafe p.getFromCache(into: table, count: Int(n)) }
        if unsafe CMempoolHandle(pool).pool._withUnsafeGuaranteedRef(getFromCache) { return 0 }
    }
    return unsafe getBulkSlow(pool, objects, n)
}

/// `ha_mempool_get_bulk` past the cache: refusals and the pool's whole `get(into:count:)`.
@inline(never)
func getBulkSlow(_ pool: OpaquePointer?, _ objects: UnsafeMutablePointer<UnsafeMutableRawPointer?>?, _ n: UInt32) -> Int32 {
    guard let pool = unsafe pool else { nullPool("ha_mempool_get_bulk"); return CAPIError.invalidArgument }
    let handle = unsafe CMempoolHandle(pool)
    guard let objects = unsafe objects else {
        if n == 0 { return 0 }
        return CAPIError.record(CAPIError.invalidArgument, "ha_mempool_get_bulk: objects is NULL: pass an array of \(n) pointers")
    }
    let table = unsafe UnsafeMutableRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    @inline(__always) func getMany(_ p: Mempool) -> Bool { unsafe p.get(into: table, count: Int(n)) }
    if unsafe handle.pool._withUnsafeGuaranteedRef(getMany) { return 0 }
    return bulkGetFailed(handle, n)
}

@inline(never)
func bulkGetFailed(_ handle: CMempoolHandle, _ n: UInt32) -> Int32 {
    let count = unsafe handle.pool.takeUnretainedValue().count
    if Int(n) > count {
        return CAPIError.record(CAPIError.invalidArgument,
            "ha_mempool_get_bulk: asked for \(n) objects from a pool of \(count): ask for at most \(count)")
    }
    return CAPIError.record(CAPIError.noObjects,
        fixed: "ha_mempool_get_bulk: fewer objects are available than asked for (nothing was taken): put objects back or create a larger pool")
}

@c(ha_mempool_put)
public func ha_mempool_put(_ pool: OpaquePointer?, _ object: UnsafeMutableRawPointer?) {
    // As in ha_mempool_get: the cache alone here, the rest in `putSlow`.
    // One compare refuses NULL and pointers outside the pool.
    @inline(__always) func putIntoCache(_ p: Mempool) -> Bool {
        guard UInt(bitPattern: object) &- UInt(bitPattern: unsafe p.base) < UInt(bitPattern: p.length) else { return false }
        return unsafe p.putIntoCache(object.unsafelyUnwrapped)
    }
    if let pool = unsafe pool, unsafe CMempoolHandle(pool).pool._withUnsafeGuaranteedRef(putIntoCache) { return }
    unsafe putSlow(pool, object)
}

/// `ha_mempool_put` past the cache: refusals, checked pools, a full cache.
@inline(never)
func putSlow(_ pool: OpaquePointer?, _ object: UnsafeMutableRawPointer?) {
    guard let pool = unsafe pool else { nullPool("ha_mempool_put"); return }
    let handle = unsafe CMempoolHandle(pool)
    @inline(__always) func putOne(_ p: Mempool) -> Bool {
        guard UInt(bitPattern: object) &- UInt(bitPattern: unsafe p.base) < UInt(bitPattern: p.length) else { return false }
        unsafe p.put(object.unsafelyUnwrapped)
        return true
    }
    if !handle.checked, unsafe handle.pool._withUnsafeGuaranteedRef(putOne) { return }
    unsafe slowPutOne(handle, object)
}

/// `slowPut` for one object, out of line so `ha_mempool_put` keeps no
/// address-taken local (and so no stack-protector check).
@inline(never)
func slowPutOne(_ handle: CMempoolHandle, _ object: UnsafeMutableRawPointer?) {
    var one = unsafe object
    unsafe withUnsafePointer(to: &one) { unsafe slowPut(handle, $0, 1, "ha_mempool_put") }
}

@c(ha_mempool_put_bulk)
public func ha_mempool_put_bulk(_ pool: OpaquePointer?, _ objects: UnsafePointer<UnsafeMutableRawPointer?>?, _ n: UInt32) {
    // As in ha_mempool_get_bulk. No range check per object: in bulk it
    // would cost more than the put itself (the copy of 32 pointers is a few
    // cycles); checked pools check every object, in `putBulkSlow`.
    if n == 32, let pool = unsafe pool, let objects = unsafe objects {
        let table = unsafe UnsafeRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
        @inline(__always) func putIntoCache(_ p: Mempool) -> Bool { unsafe p.putIntoCache(from: table, count: 32) }
        if unsafe CMempoolHandle(pool).pool._withUnsafeGuaranteedRef(putIntoCache) { return }
    }
    unsafe putBulk(pool, objects, n)
}

/// `ha_mempool_put_bulk` for any count: the cache, then `putBulkSlow`.
@inline(never)
func putBulk(_ pool: OpaquePointer?, _ objects: UnsafePointer<UnsafeMutableRawPointer?>?, _ n: UInt32) {
    if let pool = unsafe pool, let objects = unsafe objects {
        let table = unsafe UnsafeRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
        @inline(__always) func putIntoCache(_ p: Mempool) -> Bool { unsafe p.putIntoCache(from: table, count: Int(n)) }
        if unsafe CMempoolHandle(pool).pool._withUnsafeGuaranteedRef(putIntoCache) { return }
    }
    unsafe putBulkSlow(pool, objects, n)
}

/// `ha_mempool_put_bulk` past the cache: refusals, checked pools, the
/// pool's whole `put(from:count:)`.
@inline(never)
func putBulkSlow(_ pool: OpaquePointer?, _ objects: UnsafePointer<UnsafeMutableRawPointer?>?, _ n: UInt32) {
    guard let pool = unsafe pool else { nullPool("ha_mempool_put_bulk"); return }
    let handle = unsafe CMempoolHandle(pool)
    guard let objects = unsafe objects else {
        if n != 0 { CAPIError.record(CAPIError.invalidArgument, "ha_mempool_put_bulk: objects is NULL: pass the array of \(n) objects to put back") }
        return
    }
    if _slowPath(handle.checked) {
        unsafe slowPut(handle, objects, Int(n), "ha_mempool_put_bulk")
        return
    }
    let table = unsafe UnsafeRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    // The pool refuses (false, nothing put back) a count larger than itself.
    @inline(__always) func putMany(_ p: Mempool) -> Bool { unsafe p.put(from: table, count: Int(n)) }
    if unsafe handle.pool._withUnsafeGuaranteedRef(putMany) { return }
    unsafe slowPut(handle, objects, Int(n), "ha_mempool_put_bulk")
}

/// The put path for checked pools and for calls the fast path refused:
/// every misuse becomes an error for `ha_last_error()`, nothing is put back.
@inline(never)
func slowPut(_ handle: CMempoolHandle, _ objects: UnsafePointer<UnsafeMutableRawPointer?>, _ n: Int, _ function: String) {
    let pool = unsafe handle.pool.takeUnretainedValue()
    let start = UInt(bitPattern: unsafe pool.base)
    let end = start + UInt(pool.length)
    guard n <= pool.count else {
        CAPIError.record(CAPIError.invalidArgument, "\(function): \(n) objects put back into a pool of \(pool.count): a pool never hands out more than it holds")
        return
    }
    for i in 0..<n {
        let address = UInt(bitPattern: unsafe objects[i])
        if address == 0 {
            CAPIError.record(CAPIError.invalidArgument, "\(function): object \(i) is NULL: put back only pointers the pool handed out (nothing was put back)")
            return
        }
        if address < start || address >= end {
            CAPIError.record(CAPIError.badPointer,
                "\(function): object \(i) at 0x\(String(address, radix: 16)) does not belong to this pool: put it back into the pool it came from (nothing was put back)")
            return
        }
    }
    let table = unsafe UnsafeRawPointer(objects).assumingMemoryBound(to: UnsafeMutableRawPointer.self)
    if handle.checked {
        do { try unsafe pool.putChecked(from: table, count: n) } catch { CAPIError.record(error, in: function) }
    } else {
        _ = unsafe pool.put(from: table, count: n)
    }
}

@_cdecl("ha_mempool_available")
public func ha_mempool_available(_ pool: OpaquePointer?) -> UInt32 {
    guard let pool = unsafe pool else { return 0 }
    let handle = unsafe CMempoolHandle(pool)
    return UInt32(clamping: unsafe handle.pool.takeUnretainedValue().availableCount)
}
