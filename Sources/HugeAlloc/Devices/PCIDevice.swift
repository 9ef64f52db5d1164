import SystemPackage

/// One address range of a PCI function, a line of sysfs `resource`.
public struct PCIResource: Hashable, Sendable {
    /// First bus address (a physical address for memory BARs).
    public var start: UInt64
    /// Last bus address, inclusive; 0 with `start` 0 when unused.
    public var end: UInt64
    /// The kernel's `IORESOURCE_*` flags.
    public var flags: UInt64

    /// `IORESOURCE_IO`: an I/O-port range (not mappable).
    public static let ioFlag: UInt64 = 0x100
    /// `IORESOURCE_MEM`: a memory range (mappable through `resourceN`).
    public static let memoryFlag: UInt64 = 0x200

    public var size: Int { end > start || start != 0 ? Int(end &- start &+ 1) : 0 }
    public var isMemory: Bool { flags & Self.memoryFlag != 0 }
    public var isIO: Bool { flags & Self.ioFlag != 0 }
}

/// A PCI function as sysfs shows it under `/sys/bus/pci/devices/<address>`:
/// ids, driver, IOMMU group, resources; config-space access and BAR
/// mapping for a user-space driver that runs without VFIO (physical
/// addresses; the device must not be bound to a kernel driver).
///
/// Every reader takes a file-system `root` ("/" for this machine, or a
/// fixture tree laid out the same way).
public struct PCIDevice: Sendable, CustomStringConvertible {
    public let address: PCIAddress
    public let id: PCIDeviceID
    /// The 24-bit class code (`0x020000` = Ethernet controller).
    public let classCode: UInt32
    /// The kernel driver bound to the device (`e1000`, `vfio-pci`), nil when none.
    public let driver: String?
    /// The IOMMU group, nil without an IOMMU.
    public let iommuGroup: Int?
    /// The address ranges (BAR0...BAR5, then the ROM and bridge windows), from sysfs `resource`.
    public let resources: [PCIResource]
    let files: KernelFiles

    /// The PCI command register (config offset 0x04, PCI Local Bus spec 6.2.2).
    public static let commandRegister = 0x04
    /// Command bits: I/O space, memory space, bus master.
    public static let commandIOSpace: UInt16 = 1 << 0
    public static let commandMemorySpace: UInt16 = 1 << 1
    public static let commandBusMaster: UInt16 = 1 << 2

    static let devicesDirectory = "/sys/bus/pci/devices"

    /// The directory of the device below the root.
    public var sysfsPath: String { files.path(Self.devicesDirectory + "/\(address)") }

    public var description: String {
        "\(address) [\(id)] class \(String(classCode, radix: 16)) driver \(driver ?? "none")"
            + (iommuGroup.map { " iommu_group \($0)" } ?? "")
    }

    // MARK: finding devices

    /// Every PCI function under `root`, sorted by address. Reads /sys/bus/pci/devices.
    public static func all(root: String = "/") throws(PCIError) -> [PCIDevice] {
        let files = KernelFiles(root: root)
        var devices: [PCIDevice] = []
        for name in files.entries(devicesDirectory) {
            guard let address = PCIAddress(name) else { continue }
            devices.append(try read(address, files: files))
        }
        return devices.sorted { $0.address < $1.address }
    }

    /// The device at `address`. Reads /sys/bus/pci/devices/<address>.
    public static func find(_ address: PCIAddress, root: String = "/") throws(PCIError) -> PCIDevice {
        let files = KernelFiles(root: root)
        guard files.exists(devicesDirectory + "/\(address)") else {
            throw .noSuchDevice(wanted: address.description, present: files.entries(devicesDirectory))
        }
        return try read(address, files: files)
    }

    /// The first device (lowest address) with `id`. Reads /sys/bus/pci/devices/*/{vendor,device}.
    public static func find(_ id: PCIDeviceID, root: String = "/") throws(PCIError) -> PCIDevice {
        let devices = try all(root: root)
        guard let device = devices.first(where: { $0.id == id }) else {
            throw .noSuchDevice(wanted: id.description, present: devices.map { "\($0.address) [\($0.id)]" })
        }
        return device
    }

    static func read(_ address: PCIAddress, files: KernelFiles) throws(PCIError) -> PCIDevice {
        let directory = devicesDirectory + "/\(address)"
        func hexFile(_ name: String) throws(PCIError) -> UInt64 {
            let path = directory + "/" + name
            let text: String
            do { text = try files.text(path) } catch { throw .kernelFile(error) }
            let trimmed = text.trimmingWhitespace()
            guard trimmed.hasPrefix("0x"), let value = UInt64(trimmed.dropFirst(2), radix: 16) else {
                throw .kernelFile(.malformed(path: files.path(path), line: 1, text: String(trimmed), expected: "a hexadecimal number 0x…"))
            }
            return value
        }
        let id = PCIDeviceID(vendor: UInt16(truncatingIfNeeded: try hexFile("vendor")),
                             device: UInt16(truncatingIfNeeded: try hexFile("device")))
        let classCode = UInt32(truncatingIfNeeded: try hexFile("class"))
        let driver = (try? Sys.readLink(files.path(directory + "/driver"))).map(lastComponent)
        let group = (try? Sys.readLink(files.path(directory + "/iommu_group"))).flatMap { Int(lastComponent($0)) }
        var resources: [PCIResource] = []
        let resourcePath = directory + "/resource"
        let text: String?
        do { text = try files.textIfPresent(resourcePath) } catch { throw .kernelFile(error) }
        for (number, line) in (text ?? "").split(separator: "\n").enumerated() {
            let fields = line.split(separator: " ").compactMap { field -> UInt64? in
                field.hasPrefix("0x") ? UInt64(field.dropFirst(2), radix: 16) : nil
            }
            guard fields.count == 3 else {
                throw .kernelFile(.malformed(path: files.path(resourcePath), line: number + 1, text: String(line),
                                             expected: "three hexadecimal numbers: start end flags"))
            }
            resources.append(PCIResource(start: fields[0], end: fields[1], flags: fields[2]))
        }
        return PCIDevice(address: address, id: id, classCode: classCode, driver: driver,
                         iommuGroup: group, resources: resources, files: files)
    }

    private static func lastComponent(_ path: String) -> String {
        String(path.split(separator: "/").last ?? Substring(path))
    }

    // MARK: drivers

    /// The commands that take the device from its kernel driver, for a
    /// physical-address driver (unbind) and for VFIO (`driver_override`).
    public var releaseCommands: [String] {
        let device = Self.devicesDirectory + "/\(address)"
        return [
            "echo \(address) > \(device)/driver/unbind",
            "echo vfio-pci > \(device)/driver_override && echo \(address) > /sys/bus/pci/drivers_probe   # for VFIO",
        ]
    }

    /// Throws ``PCIError/boundToDriver(device:driver:commands:)`` when a kernel driver owns the device.
    public func requireNoDriver() throws(PCIError) {
        if let driver { throw .boundToDriver(device: address, driver: driver, commands: releaseCommands) }
    }

    // MARK: config space

    var configPath: String { sysfsPath + "/config" }

    /// `count` bytes of config space at `offset`. Reads sysfs `config`
    /// (`pread(2)`); without root the kernel shows only the first 64 bytes.
    public func readConfig(offset: Int, count: Int) throws(PCIError) -> [UInt8] {
        let fd: FileDescriptor
        do { fd = try Sys.openReadOnly(configPath) } catch { throw Self.translate(error, "reading config space") }
        defer { Sys.close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let result: Result<Int, SystemCallError> = unsafe bytes.withUnsafeMutableBytes { b in
            do throws(SystemCallError) { return .success(try unsafe Sys.pread(fd, into: b, offset: offset)) } catch { return .failure(error) }
        }
        let n: Int
        switch result {
        case .success(let count): n = count
        case .failure(let error): throw .systemCall(error)
        }
        guard n == count else {
            throw .configOutOfRange(device: address, offset: offset, width: count, size: offset + n)
        }
        return bytes
    }

    /// Writes `bytes` to config space at `offset`. Writes sysfs `config` (`pwrite(2)`; root only).
    public func writeConfig(offset: Int, _ bytes: [UInt8]) throws(PCIError) {
        let fd: FileDescriptor
        do { fd = try Sys.openReadWrite(configPath) } catch { throw Self.translate(error, "writing config space") }
        defer { Sys.close(fd) }
        do { try Sys.pwrite(fd, bytes, offset: offset) } catch { throw .systemCall(error) }
    }

    /// A little-endian 16-bit config register.
    public func readConfig16(_ offset: Int) throws(PCIError) -> UInt16 {
        let b = try readConfig(offset: offset, count: 2)
        return UInt16(b[0]) | UInt16(b[1]) << 8
    }

    /// A little-endian 32-bit config register.
    public func readConfig32(_ offset: Int) throws(PCIError) -> UInt32 {
        let b = try readConfig(offset: offset, count: 4)
        return UInt32(b[0]) | UInt32(b[1]) << 8 | UInt32(b[2]) << 16 | UInt32(b[3]) << 24
    }

    public func writeConfig16(_ offset: Int, _ value: UInt16) throws(PCIError) {
        try writeConfig(offset: offset, [UInt8(truncatingIfNeeded: value), UInt8(truncatingIfNeeded: value >> 8)])
    }

    /// Sets memory-space decoding and bus mastering in the command register
    /// (so the device answers at its BARs and may DMA), keeping the other
    /// bits; returns the register before and after.
    @discardableResult
    public func enableMemoryAndBusMastering() throws(PCIError) -> (before: UInt16, after: UInt16) {
        try Self.enableMemoryAndBusMastering(read: readConfig16, write: writeConfig16)
    }

    /// The command-register update of both access modes (sysfs `config`, a
    /// VFIO device's config region): set memory space and bus master, keep the rest.
    static func enableMemoryAndBusMastering<E: Error>(
        read: (Int) throws(E) -> UInt16, write: (Int, UInt16) throws(E) -> Void
    ) throws(E) -> (before: UInt16, after: UInt16) {
        let before = try read(commandRegister)
        let after = before | commandMemorySpace | commandBusMaster
        if after != before { try write(commandRegister, after) }
        return (before, after)
    }

    // MARK: BARs

    /// Maps memory BAR `index` through sysfs `resource<index>` (`mmap(2)`,
    /// `MAP_SHARED`). The device must have no kernel driver; root only.
    public func mapBAR(_ index: Int = 0) throws(PCIError) -> PCIBARMapping {
        try requireNoDriver()
        guard index >= 0, index < 6, index < resources.count else {
            throw .barNotMemoryMappable(device: address, bar: index, reason: "the device has no BAR\(index)")
        }
        let resource = resources[index]
        guard resource.size > 0 else {
            throw .barNotMemoryMappable(device: address, bar: index, reason: "BAR\(index) is unused (size 0)")
        }
        guard resource.isMemory, !resource.isIO else {
            throw .barNotMemoryMappable(device: address, bar: index,
                                        reason: "BAR\(index) is an I/O-port range (flags 0x\(String(resource.flags, radix: 16))); use port I/O or another BAR")
        }
        let path = sysfsPath + "/resource\(index)"
        let fd: FileDescriptor
        do { fd = try Sys.openReadWrite(path) } catch {
            if error.errno == .noSuchFileOrDirectory {
                throw .barNotMemoryMappable(device: address, bar: index, reason: "\(path) does not exist")
            }
            throw Self.translate(error, "mapping BAR\(index)")
        }
        defer { Sys.close(fd) }
        let length = (resource.size + Sys.basePageSize - 1) / Sys.basePageSize * Sys.basePageSize
        do {
            let base = try unsafe Sys.mapDevice(fd, length: length)
            return unsafe PCIBARMapping(base: base, length: length, size: resource.size,
                                        physicalAddress: PhysicalAddress(resource.start), device: address, index: index)
        } catch { throw .systemCall(error) }
    }

    static func translate(_ error: SystemCallError, _ operation: String) -> PCIError {
        if (error.errno == .permissionDenied || error.errno == .notPermitted) && !Sys.isRoot {
            return .notRoot(operation: operation, path: error.detail ?? "")
        }
        return .systemCall(error)
    }
}
