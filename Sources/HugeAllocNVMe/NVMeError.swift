import HugeAlloc

/// The status field of a completion queue entry (4.6.1): what the
/// controller said about a command that did not succeed.
public struct NVMeStatus: Sendable, Equatable, CustomStringConvertible {
    /// SCT, the status code type (4.6.1.1).
    public enum CodeType: UInt8, Sendable {
        case generic = 0, commandSpecific = 1, mediaAndDataIntegrity = 2, pathRelated = 3, vendorSpecific = 7
    }

    /// SCT: 0 generic, 1 command specific, 2 media and data integrity, 3 path related, 7 vendor specific.
    public let codeType: UInt8
    /// SC, the status code within its type.
    public let code: UInt8
    /// DNR: the same command would fail again.
    public let doNotRetry: Bool

    /// From the completion entry's dword 3: SC in bits 24:17, SCT in 27:25, DNR in bit 31.
    init(dword3: UInt32) {
        code = UInt8(truncatingIfNeeded: dword3 >> 17)
        codeType = UInt8(truncatingIfNeeded: dword3 >> 25 & 0x7)
        doNotRetry = dword3 >> 31 != 0
    }

    public init(codeType: UInt8, code: UInt8, doNotRetry: Bool = false) {
        self.codeType = codeType
        self.code = code
        self.doNotRetry = doNotRetry
    }

    public var isSuccess: Bool { codeType == 0 && code == 0 }
    public var type: CodeType? { CodeType(rawValue: codeType) }

    /// The status code's name in the specification, where the driver knows it.
    public var name: String? {
        switch (type, code) {
        // 4.6.1.2.1 Generic Command Status (and the NVM command set's 80h…)
        case (.generic, 0x00): "Successful Completion"
        case (.generic, 0x01): "Invalid Command Opcode"
        case (.generic, 0x02): "Invalid Field in Command"
        case (.generic, 0x03): "Command ID Conflict"
        case (.generic, 0x04): "Data Transfer Error"
        case (.generic, 0x06): "Internal Error"
        case (.generic, 0x07): "Command Abort Requested"
        case (.generic, 0x08): "Command Aborted due to SQ Deletion"
        case (.generic, 0x0B): "Invalid Namespace or Format"
        case (.generic, 0x0C): "Command Sequence Error"
        case (.generic, 0x13): "PRP Offset Invalid"
        case (.generic, 0x80): "LBA Out of Range"
        case (.generic, 0x81): "Capacity Exceeded"
        case (.generic, 0x82): "Namespace Not Ready"
        // 4.6.1.2.2 Command Specific Status
        case (.commandSpecific, 0x00): "Completion Queue Invalid"
        case (.commandSpecific, 0x01): "Invalid Queue Identifier"
        case (.commandSpecific, 0x02): "Invalid Queue Size"
        case (.commandSpecific, 0x08): "Invalid Interrupt Vector"
        case (.commandSpecific, 0x82): "Attempted Write to Read Only Range"
        // 4.6.1.2.3 Media and Data Integrity Errors
        case (.mediaAndDataIntegrity, 0x80): "Write Fault"
        case (.mediaAndDataIntegrity, 0x81): "Unrecovered Read Error"
        case (.mediaAndDataIntegrity, 0x86): "Access Denied"
        default: nil
        }
    }

    public var description: String {
        let typeName = switch type {
        case .generic: "generic"
        case .commandSpecific: "command specific"
        case .mediaAndDataIntegrity: "media and data integrity"
        case .pathRelated: "path related"
        case .vendorSpecific: "vendor specific"
        case nil: "reserved type"
        }
        let hex = "SCT \(codeType) SC 0x\(String(code, radix: 16))"
        return "\(name ?? "status") (\(typeName), \(hex)\(doNotRetry ? ", do not retry" : ""))"
    }
}

/// What can stop the NVMe driver, each with what was wrong and how to fix it.
public enum NVMeError: Error, CustomStringConvertible {
    case pci(PCIError)
    case vfio(VFIOError)
    /// The device's class code is not 010802h (NVM Express).
    case notNVMe(device: PCIAddress, classCode: UInt32)
    /// The DMA heap could not serve queue, identify, PRP list memory.
    case memory(DMAHeapError)
    /// `DMAHeap.iova(of:)` has no address for memory given to the device:
    /// not from the driver's heap, or physical addresses hidden (not root).
    case noDeviceAddress(what: String)
    /// The controller cannot use 4 KiB memory pages (CAP.MPSMIN), or lacks the NVM command set.
    case unsupportedController(String)
    /// CSTS.CFS: the controller hit a fatal error.
    case controllerFatal
    /// A register state or a completion did not come in time.
    case timeout(waitingFor: String, milliseconds: Int)
    /// The controller completed a command with an error status.
    case commandFailed(command: String, status: NVMeStatus)
    /// The namespace is not active (Identify Namespace gave a size of 0), or beyond NN.
    case noSuchNamespace(UInt32, namespaceCount: UInt32)
    /// A read or write the driver refuses before sending it.
    case invalidTransfer(String)
    /// An I/O queue depth below 2 (one slot always stays empty).
    case invalidQueueDepth(Int)

    public var description: String {
        switch self {
        case .pci(let e): return e.description
        case .vfio(let e): return e.description
        case .notNVMe(let device, let classCode):
            return "PCI device \(device) has class \(String(classCode, radix: 16)), not 10802 (NVM Express controller)"
        case .memory(let e): return "NVMe queue or buffer memory: \(e)"
        case .noDeviceAddress(let what):
            return "\(what) has no device address: give the driver memory from its DMAHeap, and run as root (physical "
                + "addresses come from /proc/self/pagemap) or attach the heap to the VFIO container first"
        case .unsupportedController(let why): return "unsupported NVMe controller: \(why)"
        case .controllerFatal:
            return "the controller reports a fatal error (CSTS.CFS): reset it (unbind and rebind, or power-cycle the machine)"
        case .timeout(let what, let ms): return "NVMe: no \(what) after \(ms) ms"
        case .commandFailed(let command, let status): return "NVMe \(command) failed: \(status)"
        case .noSuchNamespace(let id, let count):
            return "namespace \(id) is not active on this controller (\(count) namespace IDs): pick one of 1...\(count) "
                + "that Identify Namespace reports with a non-zero size"
        case .invalidTransfer(let why): return "NVMe transfer refused: \(why)"
        case .invalidQueueDepth(let depth):
            return "an I/O queue of \(depth) entries cannot hold a command (one slot stays empty): ask for 2 or more (at most 64 are used)"
        }
    }
}
