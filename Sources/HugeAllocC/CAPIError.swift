import CHugeAllocShims
import HugeAlloc

/// The error codes of hugealloc.h (`HA_ERR_*`) and the one place a failure
/// is recorded for `ha_last_error()`: the calling thread's code and message,
/// in `_Thread_local` storage of the C shims.
enum CAPIError {
    static let invalidArgument: Int32 = -1
    static let noMemory: Int32 = -2
    static let noObjects: Int32 = -3
    static let nameExists: Int32 = -4
    static let badPointer: Int32 = -5
    static let limit: Int32 = -6
    static let system: Int32 = -7

    /// Records `code` and `message` for this thread; returns `code`.
    @discardableResult @inline(never)
    static func record(_ code: Int32, _ message: String) -> Int32 {
        unsafe message.withCString { unsafe ha_capi_set_error(code, $0) }
        return code
    }

    /// Records a fixed message: no formatting, for failures a polling loop
    /// may hit all the time (an empty pool).
    @discardableResult @inline(never)
    static func record(_ code: Int32, fixed message: StaticString) -> Int32 {
        message.withUTF8Buffer { buffer in
            unsafe buffer.withMemoryRebound(to: CChar.self) { unsafe ha_capi_set_error(code, $0.baseAddress) }
        }
        return code
    }

    /// The code a ``MempoolError`` maps to, recorded with its description.
    @discardableResult @inline(never)
    static func record(_ error: MempoolError, in function: String) -> Int32 {
        let code: Int32
        switch error {
        case .zeroCount, .countTooLarge, .zeroObjectSize, .alignmentNotPowerOfTwo, .alignmentLargerThanPage,
             .cacheSizeOutOfRange, .objectLargerThanPage, .countDoesNotFit, .invalidMemory, .bulkCountOutOfRange,
             .checksDisabled, .invalidSharedControl, .sharedControlNotInitialized, .sharedControlMismatch,
             .sharedPoolNeedsSharedThreading, .threadRecordsOutOfRange:
            code = invalidArgument
        case .notEnoughHugepages, .memoryUnavailable:
            code = noMemory
        case .tooManyPools:
            code = limit
        case .notEnoughObjects:
            code = noObjects
        case .foreignPointer, .notAnObjectStart, .doubleFree, .guardCookieOverwritten:
            code = badPointer
        }
        return record(code, "\(function): \(error)")
    }
}

extension CAPIError {
    /// The code a ``DMAHeapError`` maps to, recorded with its description.
    @discardableResult @inline(never)
    static func record(_ error: DMAHeapError, in function: String) -> Int32 {
        let code: Int32
        switch error {
        case .zeroSize, .sizeTooLarge, .alignmentNotPowerOfTwo, .boundaryNotPowerOfTwo, .boundarySmallerThanSize,
             .unknownNode, .checksDisabled, .memzoneExists, .memzoneNotFound, .invalidMemzoneName:
            code = invalidArgument
        case .noContiguousRun, .growthFailed, .rangeExhausted, .eventRefused, .noPhysicalAddresses:
            code = noMemory
        case .tooManyHeaps:
            code = limit
        case .systemCall:
            code = system
        case .foreignPointer, .interiorPointer, .doubleFree, .overrun:
            code = badPointer
        }
        return record(code, "\(function): \(error)")
    }
}

/// Bytes as C gives them (`size_t`), refused above `limit` before any
/// arithmetic can overflow.
func checkedSize(_ value: UInt, limit: Int, _ what: String, in function: String) -> Int? {
    guard value <= UInt(limit) else {
        CAPIError.record(CAPIError.invalidArgument,
                         "\(function): \(what) \(value) is larger than the maximum of \(limit): ask for less")
        return nil
    }
    return Int(value)
}

/// The nodes of this machine, read once (node 0 alone without NUMA).
let machineNodes: Set<Int> = {
    guard let topology = try? NUMATopology.read(), !topology.nodes.isEmpty else { return [0] }
    return Set(topology.nodes.map(\.id))
}()

/// Whether `node` is `HA_NODE_ANY` or a node of this machine; records why not.
func checkNode(_ node: Int32, in function: String) -> Bool {
    guard node == -1 || (node >= 0 && machineNodes.contains(Int(node))) else {
        CAPIError.record(CAPIError.invalidArgument,
            "\(function): NUMA node \(node) does not exist: use HA_NODE_ANY (-1) or one of \(machineNodes.sorted())")
        return false
    }
    return true
}

@_cdecl("ha_last_error")
public func ha_last_error() -> UnsafePointer<CChar> {
    unsafe ha_capi_error_text()
}

@_cdecl("ha_last_error_code")
public func ha_last_error_code() -> Int32 {
    ha_capi_error_code()
}
