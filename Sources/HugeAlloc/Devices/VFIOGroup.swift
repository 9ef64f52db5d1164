import SystemPackage

/// An IOMMU group opened through VFIO (`/dev/vfio/<group>`) and joined to a
/// container: the unit the kernel hands to user space. Closed exactly once.
public struct VFIOGroup: ~Copyable, Sendable {
    let fd: FileDescriptor
    public let number: Int

    /// Opens the group of `device`, checks it is viable (sysfs first, for
    /// the names of the devices in the way, then `VFIO_GROUP_GET_STATUS`),
    /// joins it to `container` (`VFIO_GROUP_SET_CONTAINER`) and, for the
    /// container's first group, sets the type1v2 IOMMU (`VFIO_SET_IOMMU`).
    public init(device: PCIDevice, container: inout VFIOContainer, root: String = "/") throws(VFIOError) {
        guard let group = device.iommuGroup else { throw .noIOMMUGroup(device: device.address) }
        let status = try VFIOGroupStatus.read(group: group, root: root)
        guard status.isViable else { throw .groupNotViable(group: group, blockers: status.blockers) }
        let path = KernelFiles(root: root).path("/dev/vfio/\(group)")
        let fd: FileDescriptor
        do { fd = try Sys.openReadWrite(path) } catch {
            if error.errno == .noSuchFileOrDirectory { throw .noVFIO(path: path) }
            throw .systemCall(error)
        }
        do {
            var groupStatus: (UInt32, UInt32) = (8, 0)  // struct vfio_group_status: argsz, flags
            _ = try Sys.ioctl(fd, VFIORequest.groupGetStatus, "VFIO_GROUP_GET_STATUS", struct: &groupStatus)
            guard groupStatus.1 & VFIORequest.groupFlagViable != 0 else {
                Sys.close(fd)
                throw VFIOError.groupNotViable(group: group, blockers: status.blockers.isEmpty ? ["(the kernel says so)"] : status.blockers)
            }
            var containerFD = container.fd.rawValue
            _ = try Sys.ioctl(fd, VFIORequest.groupSetContainer, "VFIO_GROUP_SET_CONTAINER", struct: &containerFD)
            do { try container.setIOMMUIfNeeded() } catch { Sys.close(fd); throw error }
        } catch let error as VFIOError { throw error } catch let error as SystemCallError {
            Sys.close(fd); throw .systemCall(error)
        } catch { Sys.close(fd); throw .unsupported("\(error)") }
        self.fd = fd
        self.number = group
    }

    /// The device's descriptor (`VFIO_GROUP_GET_DEVICE_FD`).
    public func device(_ address: PCIAddress) throws(VFIOError) -> VFIODevice {
        do {
            return VFIODevice(fd: try Sys.vfioDeviceDescriptor(fd, request: VFIORequest.groupGetDeviceFD, device: address.description),
                              address: address)
        } catch { throw .systemCall(error) }
    }

    deinit { Sys.close(fd) }
}

/// A PCI device opened through VFIO: its regions (BARs, config space) by
/// `VFIO_DEVICE_GET_REGION_INFO`, read, written and mapped through the
/// device descriptor. Closed exactly once.
public struct VFIODevice: ~Copyable, Sendable {
    let fd: FileDescriptor
    public let address: PCIAddress

    init(fd: FileDescriptor, address: PCIAddress) {
        self.fd = fd
        self.address = address
    }

    /// A region's size, offset in the device descriptor and flags.
    func region(_ index: UInt32) throws(VFIOError) -> (size: Int, offset: Int, flags: UInt32) {
        try Self.region(fd, index)
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` on a device descriptor.
    static func region(_ fd: FileDescriptor, _ index: UInt32) throws(VFIOError) -> (size: Int, offset: Int, flags: UInt32) {
        // struct vfio_region_info: argsz, flags, index, cap_offset, size, offset.
        var info: (UInt32, UInt32, UInt32, UInt32, UInt64, UInt64) = (32, 0, index, 0, 0, 0)
        do { _ = try Sys.ioctl(fd, VFIORequest.deviceGetRegionInfo, "VFIO_DEVICE_GET_REGION_INFO", struct: &info) } catch {
            throw .systemCall(error)
        }
        return (Int(info.4), Int(info.5), info.1)
    }

    /// Maps memory BAR `index` (a region VFIO lets user space `mmap`).
    public func mapBAR(_ index: Int = 0) throws(VFIOError) -> PCIBARMapping {
        let r = try region(UInt32(index))
        guard r.size > 0, r.flags & VFIORequest.regionFlagMmap != 0 else {
            throw .pci(.barNotMemoryMappable(device: address, bar: index,
                                             reason: r.size == 0 ? "BAR\(index) is unused (size 0)" : "VFIO does not allow mapping BAR\(index)"))
        }
        let length = (r.size + Sys.basePageSize - 1) / Sys.basePageSize * Sys.basePageSize
        do {
            let base = try unsafe Sys.mapDevice(fd, length: length, offset: r.offset)
            return unsafe PCIBARMapping(base: base, length: length, size: r.size, physicalAddress: nil, device: address, index: index)
        } catch { throw .systemCall(error) }
    }

    /// A little-endian 16-bit config register (`pread(2)` of the config region).
    public func readConfig16(_ offset: Int) throws(VFIOError) -> UInt16 {
        try VFIODeviceConfig(fd: fd, address: address).read16(offset)
    }

    /// Writes a 16-bit config register (`pwrite(2)` of the config region).
    public func writeConfig16(_ offset: Int, _ value: UInt16) throws(VFIOError) {
        try VFIODeviceConfig(fd: fd, address: address).write16(offset, value)
    }

    /// Sets memory space and bus master in the command register.
    @discardableResult
    public func enableMemoryAndBusMastering() throws(VFIOError) -> (before: UInt16, after: UInt16) {
        let config = VFIODeviceConfig(fd: fd, address: address)
        return try PCIDevice.enableMemoryAndBusMastering(read: config.read16, write: config.write16)
    }

    deinit { Sys.close(fd) }
}

/// A VFIO device's config region through its descriptor (copyable, for closures).
struct VFIODeviceConfig {
    let fd: FileDescriptor
    let address: PCIAddress

    func offset() throws(VFIOError) -> Int { try VFIODevice.region(fd, VFIORequest.pciConfigRegion).offset }

    func read16(_ offset: Int) throws(VFIOError) -> UInt16 {
        let base = try self.offset()
        var bytes = [UInt8](repeating: 0, count: 2)
        let result: Result<Int, SystemCallError> = unsafe bytes.withUnsafeMutableBytes { b in
            do throws(SystemCallError) { return .success(try unsafe Sys.pread(fd, into: b, offset: base + offset)) }
            catch { return .failure(error) }
        }
        do { _ = try result.get() } catch { throw .systemCall(error) }
        return UInt16(bytes[0]) | UInt16(bytes[1]) << 8
    }

    func write16(_ offset: Int, _ value: UInt16) throws(VFIOError) {
        let base = try self.offset()
        do { try Sys.pwrite(fd, [UInt8(truncatingIfNeeded: value), UInt8(truncatingIfNeeded: value >> 8)], offset: base + offset) }
        catch { throw .systemCall(error) }
    }
}
