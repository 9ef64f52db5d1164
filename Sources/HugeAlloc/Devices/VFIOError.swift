/// What went wrong setting up VFIO or mapping memory for a device, with the fix.
public enum VFIOError: Error, Equatable, Sendable, CustomStringConvertible {
    /// /dev/vfio/vfio is missing: no vfio module, or no IOMMU.
    case noVFIO(path: String)
    /// The kernel speaks another VFIO API version, or lacks the type1v2 IOMMU.
    case unsupported(String)
    /// The device has no IOMMU group: the IOMMU is off (`intel_iommu=on` / `amd_iommu=on`).
    case noIOMMUGroup(device: PCIAddress)
    /// Another device of the group is bound to a kernel driver.
    case groupNotViable(group: Int, blockers: [String])
    /// `VFIO_SET_IOMMU` refused with EPERM: the IOMMU cannot remap interrupts.
    case noInterruptRemapping
    /// The IOVA range lies outside every range the IOMMU can translate.
    case outsideAperture(iova: UInt64, length: Int, apertures: [ClosedRange<UInt64>])
    /// Pinning the memory would exceed RLIMIT_MEMLOCK.
    case memlockLimitTooLow(MemlockShortage)
    /// A pool can be attached or detached only while all its buffers are in it.
    case poolInUse(inUse: Int, count: Int)
    case pci(PCIError)
    case kernelFile(KernelFileError)
    case systemCall(SystemCallError)

    public var description: String {
        switch self {
        case .noVFIO(let path):
            return "\(path) does not exist: load the modules (modprobe vfio-pci) and boot with the IOMMU on (intel_iommu=on or amd_iommu=on)"
        case .unsupported(let what):
            return "VFIO: \(what)"
        case .noIOMMUGroup(let device):
            return "PCI device \(device) has no IOMMU group: the IOMMU is off; boot with intel_iommu=on (or amd_iommu=on)"
        case .groupNotViable(let group, let blockers):
            return "IOMMU group \(group) is not viable: every device in it must be bound to vfio-pci or unbound; bound: "
                + blockers.joined(separator: "; ")
        case .noInterruptRemapping:
            return "VFIO_SET_IOMMU failed with EPERM: the IOMMU has no interrupt remapping (QEMU: -device intel-iommu,intremap=on). "
                + "`modprobe vfio_iommu_type1 allow_unsafe_interrupts=1` accepts it anyway, at the cost that a device can forge "
                + "MSI writes and raise any interrupt in the host: only for trusted devices"
        case .outsideAperture(let iova, let length, let apertures):
            let ranges = apertures.map { "0x\(String($0.lowerBound, radix: 16))…0x\(String($0.upperBound, radix: 16))" }
            return "IOVA 0x\(String(iova, radix: 16)) + \(length) bytes is outside the IOMMU's ranges \(ranges.joined(separator: ", ")): "
                + "the IOMMU's address width is too small for virtual addresses as IOVAs (QEMU: intel-iommu,aw-bits=48), "
                + "or map at a chosen IOVA base inside a range"
        case .memlockLimitTooLow(let shortage):
            return "VFIO pins the pages it maps: \(shortage)"
        case .poolInUse(let inUse, let count):
            return "\(inUse) of the pool's \(count) buffers are handed out: attach a pool to the container (or detach it) "
                + "before handing out its buffers, when all of them are free"
        case .pci(let error): return error.description
        case .kernelFile(let error): return error.description
        case .systemCall(let error): return "VFIO: \(error)"
        }
    }
}
