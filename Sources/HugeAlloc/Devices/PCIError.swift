/// What went wrong finding or opening a PCI device, with the fix.
public enum PCIError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No device matches: `wanted` is the address or id asked for, `present`
    /// the addresses that exist under /sys/bus/pci/devices.
    case noSuchDevice(wanted: String, present: [String])
    /// A kernel driver owns the device; user-space access would fight it.
    /// `commands` release it (unbind; optionally hand it to vfio-pci).
    case boundToDriver(device: PCIAddress, driver: String, commands: [String])
    /// The BAR cannot be mapped: absent, an I/O-port BAR, or of size 0.
    case barNotMemoryMappable(device: PCIAddress, bar: Int, reason: String)
    /// Device files in sysfs are root's: `operation` needs root.
    case notRoot(operation: String, path: String)
    /// A sysfs file of the device could not be read or is malformed.
    case kernelFile(KernelFileError)
    /// A config-space access outside the file (`offset` + `width` > `size`).
    case configOutOfRange(device: PCIAddress, offset: Int, width: Int, size: Int)
    /// A system call failed.
    case systemCall(SystemCallError)

    public var description: String {
        switch self {
        case .noSuchDevice(let wanted, let present):
            return "no PCI device \(wanted) in /sys/bus/pci/devices"
                + (present.isEmpty ? " (no PCI devices at all)" : "; present: \(present.joined(separator: ", "))")
        case .boundToDriver(let device, let driver, let commands):
            return "PCI device \(device) is bound to the kernel driver \(driver); release it first:\n  "
                + commands.joined(separator: "\n  ")
        case .barNotMemoryMappable(let device, let bar, let reason):
            return "BAR\(bar) of PCI device \(device) is not memory-mappable: \(reason)"
        case .notRoot(let operation, let path):
            return "\(operation) needs root (\(path) is writable by root only); run with sudo"
        case .kernelFile(let error):
            return error.description
        case .configOutOfRange(let device, let offset, let width, let size):
            return "config-space access of \(width) bytes at \(offset) is outside the \(size) bytes of \(device)"
        case .systemCall(let error):
            return "PCI: \(error)"
        }
    }
}
