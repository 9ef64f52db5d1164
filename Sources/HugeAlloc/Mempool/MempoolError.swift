/// What went wrong creating or using a ``Mempool``: what was asked, what
/// would fit, and how to fix it.
public enum MempoolError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The object count was zero or negative.
    case zeroCount(requested: Int)
    /// The object count was above ``Mempool/maximumCount``.
    case countTooLarge(requested: Int, maximum: Int)
    /// The object size was zero or negative.
    case zeroObjectSize(requested: Int)
    /// The alignment was not a power of two (or was larger than a page).
    case alignmentNotPowerOfTwo(requested: Int)
    /// The alignment was larger than the page size backing the pool.
    case alignmentLargerThanPage(alignment: Int, pageSize: Int)
    /// The cache size was negative or above ``Mempool/maximumCacheSize``.
    case cacheSizeOutOfRange(requested: Int, maximum: Int)
    /// An object (with its guard cookie) does not fit in one page, and the
    /// pages under it are not physically contiguous.
    case objectLargerThanPage(elementSize: Int, pageSize: Int, contiguousBytesAvailable: Int)
    /// The memory holds fewer objects than asked for.
    case countDoesNotFit(requested: Int, fits: Int, elementSize: Int, memoryLength: Int)
    /// Too few free hugepages (system-wide or on a node) for `requested`
    /// objects; `fits` objects would fit in the free pages.
    case notEnoughHugepages(requested: Int, fits: Int, shortage: HugepageShortage)
    /// The pool's memory (`neededBytes`) could not be mapped.
    case memoryUnavailable(neededBytes: Int, underlying: MappingError)
    /// More pools are alive at once than the per-thread cache table holds.
    case tooManyPools(maximum: Int)
    /// A bulk get asked for more objects than are available right now.
    case notEnoughObjects(requested: Int, available: Int)
    /// A bulk operation's count was negative or larger than the pool.
    case bulkCountOutOfRange(requested: Int, maximum: Int)
    /// The memory given for a pool does not start at a page boundary, is
    /// not a positive whole number of pages, or runs past the address space.
    case invalidMemory(address: UInt, length: Int, pageSize: Int)
    /// A pointer that lies outside this pool's memory.
    case foreignPointer(address: UInt)
    /// A pointer inside the pool that is not at the start of an object.
    case notAnObjectStart(address: UInt, nearestObjectStart: UInt)
    /// An object put back while it is already in the pool.
    case doubleFree(address: UInt, objectIndex: Int)
    /// The guard cookie after an object was overwritten: the user wrote past its end.
    case guardCookieOverwritten(address: UInt, objectIndex: Int, objectSize: Int, found: UInt64)
    /// A checked operation on a pool created without checks.
    case checksDisabled
    /// A shared pool's control memory does not start at a 4096-byte
    /// boundary or is shorter than the `needed` bytes.
    case invalidSharedControl(address: UInt, length: Int, needed: Int)
    /// No shared pool was created in this control memory (no header, or
    /// one of another layout version).
    case sharedControlNotInitialized(address: UInt)
    /// A shared pool was opened with a configuration or memory that differs
    /// from its creator's: `field` was `created` there, `requested` here.
    case sharedControlMismatch(field: String, created: Int, requested: Int)
    /// A shared pool was asked for with `threading: .singleThread`.
    case sharedPoolNeedsSharedThreading
    /// A thread-record count that is negative or above `maximum`.
    case threadRecordsOutOfRange(requested: Int, maximum: Int)

    public var description: String {
        func hex(_ v: UInt) -> String { "0x" + String(v, radix: 16) }
        switch self {
        case .zeroCount(let n):
            return "mempool object count \(n) is not positive: ask for at least 1 object"
        case .countTooLarge(let n, let max):
            return "mempool object count \(n) is above the maximum of \(max) objects per pool: create several pools"
        case .zeroObjectSize(let n):
            return "mempool object size \(n) is not positive: ask for at least 1 byte"
        case .alignmentNotPowerOfTwo(let a):
            return "mempool alignment \(a) is not a power of two: use 64 (a cache line), 128, 4096 or another power of two"
        case .alignmentLargerThanPage(let a, let p):
            return "mempool alignment \(a) is larger than the page size \(p): use an alignment of at most \(p) or a larger page size"
        case .cacheSizeOutOfRange(let n, let max):
            return "mempool per-thread cache size \(n) is out of range: use 0 (no cache) up to \(max)"
        case .objectLargerThanPage(let e, let p, let c):
            return "a mempool element of \(e) bytes does not fit in a \(p)-byte page and the pages beneath are not physically contiguous "
                + "(longest contiguous run: \(c) bytes): use objects of at most \(p) bytes or a larger page size (1G hugepages)"
        case .countDoesNotFit(let n, let fits, let e, let len):
            return "\(n) mempool objects of \(e) bytes (element size) do not fit in \(len) bytes of memory: \(fits) would fit; "
                + "ask for at most \(fits) objects or give the pool more memory"
        case .notEnoughHugepages(let n, let fits, let shortage):
            return "\(n) mempool objects need \(shortage.needed) free \(shortage.pageSize) hugepages but \(shortage.free) are free "
                + "\(shortage.place): \(fits) objects would fit; ask for at most \(fits) or reserve more pages with: \(shortage.command)"
        case .memoryUnavailable(let bytes, let why):
            return "the mempool needs \(bytes) bytes of memory that could not be mapped: \(why)"
        case .tooManyPools(let max):
            return "at most \(max) mempools can be alive at once: destroy a pool before creating another"
        case .notEnoughObjects(let n, let avail):
            return "asked the mempool for \(n) objects but only \(avail) are available: put objects back or create a larger pool"
        case .bulkCountOutOfRange(let n, let max):
            return "a bulk count of \(n) objects is out of range: use 0 to \(max) (the pool's size)"
        case .invalidMemory(let a, let length, let page):
            return "memory of \(length) bytes at \(hex(a)) cannot hold a mempool: give memory that starts at a \(page)-byte page boundary "
                + "and is a positive whole number of pages (Mempool.memoryNeeded(for:pageSize:) says how many bytes)"
        case .foreignPointer(let a):
            return "pointer \(hex(a)) does not belong to this mempool: put it back into the pool it came from"
        case .notAnObjectStart(let a, let nearest):
            return "pointer \(hex(a)) is inside this mempool but not at an object's start (nearest start below: \(hex(nearest))): "
                + "put back the pointer the pool handed out"
        case .doubleFree(let a, let i):
            return "double free: object \(i) at \(hex(a)) was put back while already in the pool"
        case .guardCookieOverwritten(let a, let i, let size, let found):
            return "write past the end of object \(i) at \(hex(a)): the guard cookie after its \(size) bytes reads 0x"
                + String(found, radix: 16) + "; the object was overrun by the code that held it"
        case .checksDisabled:
            return "this mempool was created without checks: create it with `checked: true` to use the checked API"
        case .invalidSharedControl(let a, let length, let needed):
            return "control memory of \(length) bytes at \(hex(a)) cannot hold this shared mempool's state: give \(needed) bytes "
                + "(MempoolSharedControl.bytesNeeded) starting at a 4096-byte boundary"
        case .sharedControlNotInitialized(let a):
            return "no shared mempool was created in the control memory at \(hex(a)) (or one of another version): "
                + "create it first (creating: true) in one process, then open it in the others"
        case .sharedControlMismatch(let field, let created, let requested):
            return "the shared mempool was created with \(field) = \(created) but opened with \(field) = \(requested): "
                + "open it with its creator's configuration and memory"
        case .sharedPoolNeedsSharedThreading:
            return "a mempool shared between processes needs threading: .shared (a single-thread pool has no locks)"
        case .threadRecordsOutOfRange(let n, let max):
            return "\(n) thread records for a shared mempool is out of range: use 0 (no caches) up to \(max)"
        }
    }
}
