/// What `VFIO_IOMMU_GET_INFO` says about a container's IOMMU: the page
/// sizes it maps and the IOVA ranges it can translate (the
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE` capability).
public struct VFIOIOMMUInfo: Sendable, Equatable {
    /// Bit N set: pages of 2^N bytes can be mapped.
    public var pageSizes: UInt64
    /// The usable IOVA ranges, inclusive; empty when the kernel did not say.
    public var ranges: [ClosedRange<UInt64>]

    public init(pageSizes: UInt64, ranges: [ClosedRange<UInt64>]) {
        self.pageSizes = pageSizes
        self.ranges = ranges
    }

    // struct vfio_iommu_type1_info (include/uapi/linux/vfio.h):
    // argsz u32, flags u32, iova_pgsizes u64, cap_offset u32, pad u32.
    static let headerSize = 24
    static let flagPageSizes: UInt32 = 1 << 0
    static let flagCapabilities: UInt32 = 1 << 1
    static let capabilityIOVARange: UInt16 = 1

    /// Parses the bytes the kernel filled in: the header, then the
    /// capability chain (`vfio_info_cap_header`: id u16, version u16, next
    /// u32, offsets from the start of the buffer).
    package static func parse(_ bytes: [UInt8]) -> VFIOIOMMUInfo? {
        func u16(_ o: Int) -> UInt16 { UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8 }
        func u32(_ o: Int) -> UInt32 { UInt32(u16(o)) | UInt32(u16(o + 2)) << 16 }
        func u64(_ o: Int) -> UInt64 { UInt64(u32(o)) | UInt64(u32(o + 4)) << 32 }
        guard bytes.count >= headerSize else { return nil }
        let flags = u32(4)
        var info = VFIOIOMMUInfo(pageSizes: flags & flagPageSizes != 0 ? u64(8) : 0, ranges: [])
        guard flags & flagCapabilities != 0 else { return info }
        var offset = Int(u32(16))
        var visited = 0
        while offset != 0, offset + 8 <= bytes.count, visited < 64 {
            visited += 1
            if u16(offset) == capabilityIOVARange, offset + 16 <= bytes.count {
                let count = Int(u32(offset + 8))
                for i in 0..<count {
                    let at = offset + 16 + 16 * i
                    guard at + 16 <= bytes.count else { break }
                    let start = u64(at), end = u64(at + 8)
                    if start <= end { info.ranges.append(start...end) }
                }
            }
            offset = Int(u32(offset + 4))
        }
        return info
    }

    /// Throws ``VFIOError/outsideAperture(iova:length:apertures:)`` unless
    /// `iova ..< iova + length` lies inside one range (no ranges: unknown, allowed).
    public func check(iova: UInt64, length: Int) throws(VFIOError) {
        guard !ranges.isEmpty, length > 0 else { return }
        let (last, overflow) = iova.addingReportingOverflow(UInt64(length) - 1)
        if !overflow, ranges.contains(where: { $0.contains(iova) && $0.contains(last) }) { return }
        throw .outsideAperture(iova: iova, length: length, apertures: ranges)
    }
}

/// The devices of an IOMMU group and the drivers they are bound to: VFIO
/// gives a group to user space only when none of its devices is held by a
/// kernel driver other than vfio-pci (or pci-stub).
public struct VFIOGroupStatus: Sendable, Equatable {
    public var group: Int
    /// Each device of the group with its driver, nil when unbound.
    public var devices: [(address: String, driver: String?)]

    public static func == (a: Self, b: Self) -> Bool {
        a.group == b.group && a.devices.map(\.address) == b.devices.map(\.address) && a.devices.map(\.driver) == b.devices.map(\.driver)
    }

    /// Drivers that do not stop a group from being given to user space.
    public static let harmlessDrivers: Set<String> = ["vfio-pci", "pci-stub"]

    /// "address (driver)" for each device that keeps the group from being viable.
    public var blockers: [String] {
        devices.compactMap { d in d.driver.flatMap { Self.harmlessDrivers.contains($0) ? nil : "\(d.address) (\($0))" } }
    }

    public var isViable: Bool { blockers.isEmpty }

    /// Reads /sys/kernel/iommu_groups/<group>/devices and each device's `driver` link.
    public static func read(group: Int, root: String = "/") throws(VFIOError) -> VFIOGroupStatus {
        let files = KernelFiles(root: root)
        let directory = "/sys/kernel/iommu_groups/\(group)/devices"
        let names: [String]?
        do { names = try files.entriesIfPresent(directory) } catch { throw .kernelFile(error) }
        guard let names else {
            throw .kernelFile(.unreadable(UnreadableFile(path: files.path(directory), errno: .noSuchFileOrDirectory)))
        }
        let devices = names.map { name in
            (address: name, driver: (try? Sys.readLink(files.path(directory + "/\(name)/driver")))
                .map { String($0.split(separator: "/").last ?? "") })
        }
        return VFIOGroupStatus(group: group, devices: devices)
    }
}
