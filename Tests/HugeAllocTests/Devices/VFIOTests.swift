import Foundation
import Synchronization
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// VFIO without a device: the IOMMU-info parser and aperture check, group
/// viability from fixture sysfs trees, and arena-driven map/unmap.
@Suite struct VFIOTests {
    /// A `vfio_iommu_type1_info` answer with an IOVA-range capability, laid out as the kernel writes it.
    static func infoBytes(pageSizes: UInt64, ranges: [(UInt64, UInt64)]) -> [UInt8] {
        var b: [UInt8] = []
        func u16(_ v: UInt16) { b += withUnsafeBytes(of: v.littleEndian, Array.init) }
        func u32(_ v: UInt32) { b += withUnsafeBytes(of: v.littleEndian, Array.init) }
        func u64(_ v: UInt64) { b += withUnsafeBytes(of: v.littleEndian, Array.init) }
        let size = 24 + 16 + 16 * ranges.count
        u32(UInt32(size)); u32(0b11); u64(pageSizes); u32(24); u32(0)
        u16(1); u16(1); u32(0)                       // cap header: IOVA range, version 1, last
        u32(UInt32(ranges.count)); u32(0)
        for (start, end) in ranges { u64(start); u64(end) }
        return b
    }

    @Test func iovaRangesAreParsedFromTheCapabilityChain() throws {
        let bytes = Self.infoBytes(pageSizes: 0x40201000, ranges: [(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)])
        let info = try #require(VFIOIOMMUInfo.parse(bytes))
        #expect(info.pageSizes == 0x40201000)
        #expect(info.ranges == [0...0xfedf_ffff, 0xfef0_0000...0x7f_ffff_ffff])
        #expect(VFIOIOMMUInfo.parse(Array(bytes.prefix(10))) == nil)
    }

    @Test func anIOVAOutsideTheApertureNamesItAndTheFix() throws {
        // A 39-bit IOMMU (QEMU's intel-iommu default) and a user-space address as IOVA.
        let info = VFIOIOMMUInfo(pageSizes: 0x1000, ranges: [0xfef0_0000...0x7f_ffff_ffff])
        try info.check(iova: 0x7f_0000_0000, length: 0x20_0000)
        #expect(throws: VFIOError.outsideAperture(iova: 0x7fa3_0000_0000, length: 0x20_0000,
                                                  apertures: [0xfef0_0000...0x7f_ffff_ffff])) {
            try info.check(iova: 0x7fa3_0000_0000, length: 0x20_0000)
        }
        #expect(throws: VFIOError.self, "a range straddling the end") {
            try info.check(iova: 0x7f_ffff_f000, length: 0x2000)
        }
        let message = VFIOError.outsideAperture(iova: 0x7fa3_0000_0000, length: 4096, apertures: info.ranges).description
        #expect(message.contains("aw-bits=48") && message.contains("0x7fa300000000"))
        try VFIOIOMMUInfo(pageSizes: 0x1000, ranges: []).check(iova: .max - 10, length: 4)  // unknown: allowed
    }

    @Test func aGroupWithAKernelDriverIsNotViable() throws {
        var devices = PCIFixture.guest
        devices[1].iommuGroup = 7   // 00:03.0 unbound, in the group of 00:04.0 (e1000-bound)
        let root = try PCIFixture.make(devices)
        defer { try? FileManager.default.removeItem(atPath: root) }
        // iommu_groups/7/devices/<bdf> links to each member.
        let groupDevices = root + "/sys/kernel/iommu_groups/7/devices"
        try FileManager.default.createDirectory(atPath: groupDevices, withIntermediateDirectories: true)
        for bdf in ["0000:00:03.0", "0000:00:04.0"] {
            try FileManager.default.createSymbolicLink(atPath: groupDevices + "/" + bdf,
                                                       withDestinationPath: root + "/sys/devices/pci0000:00/" + bdf)
        }
        let status = try VFIOGroupStatus.read(group: 7, root: root)
        #expect(status.devices.map(\.address) == ["0000:00:03.0", "0000:00:04.0"])
        #expect(status.blockers == ["0000:00:04.0 (e1000)"])
        #expect(!status.isViable)
        // Rebinding the blocker to vfio-pci makes the group viable.
        let link = root + "/sys/devices/pci0000:00/0000:00:04.0/driver"
        try FileManager.default.removeItem(atPath: link)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: root + "/sys/bus/pci/drivers/vfio-pci")
        #expect(try VFIOGroupStatus.read(group: 7, root: root).isViable)
        #expect(throws: VFIOError.self) { try VFIOGroupStatus.read(group: 9, root: root) }
    }

    @Test func arenaEventsMapAndUnmapAndARefusalRollsBack() throws {
        let calls = Mutex<[String]>([])
        let mapper = VFIODMAMapper(iovaBase: nil, map: { address, length, iova in
            calls.withLock { $0.append("map \(String(address, radix: 16)) \(length) at \(String(iova, radix: 16))") }
        }, unmap: { iova, length in
            calls.withLock { $0.append("unmap \(String(iova, radix: 16)) \(length)") }
        })
        let arena = MemoryArena()
        let a = MemoryRegion(address: 0x7f00_0000_0000, length: 0x20_0000, pageSize: .huge2M, pieces: [])
        let b = MemoryRegion(address: 0x7f00_0040_0000, length: 0x40_0000, pageSize: .huge2M, pieces: [])
        try arena.add(a)
        let registration = try arena.register(mapper.handle)   // told of `a` at once
        try arena.add(b)
        #expect(calls.withLock { $0 } == ["map 7f0000000000 2097152 at 7f0000000000", "map 7f0000400000 4194304 at 7f0000400000"])

        // A second device whose kernel refuses the next region: the addition
        // fails and this container is told to unmap what it had mapped.
        let c = MemoryRegion(address: 0x7f00_0100_0000, length: 0x20_0000, pageSize: .huge2M, pieces: [])
        let refusing = try arena.register { event in
            if case .added(let r) = event, r.address == c.address {
                throw VFIOError.systemCall(SystemCallError(call: "VFIO_IOMMU_MAP_DMA", errno: .invalidArgument))
            }
        }
        calls.withLock { $0.removeAll() }
        #expect(throws: MemoryArenaError.self) { try arena.add(c) }
        #expect(!arena.regions.contains(c))
        #expect(calls.withLock { $0 } == ["map 7f0001000000 2097152 at 7f0001000000", "unmap 7f0001000000 2097152"])
        calls.withLock { $0.removeAll() }
        arena.remove(b)
        #expect(calls.withLock { $0 } == ["unmap 7f0000400000 4194304"])
        refusing.cancel()
        registration.cancel()
    }

    @Test func aChosenIOVABaseKeepsOffsetsBetweenRegions() {
        let mapper = VFIODMAMapper(iovaBase: 0x1_0000_0000, map: { _, _, _ in }, unmap: { _, _ in })
        let a = MemoryRegion(address: 0x7f00_0000_0000, length: 0x20_0000, pageSize: .huge2M, pieces: [])
        let b = MemoryRegion(address: 0x7f00_0040_0000, length: 0x20_0000, pageSize: .huge2M, pieces: [])
        #expect(mapper.iova(of: a) == 0x1_0000_0000)
        #expect(mapper.iova(of: b) == 0x1_0040_0000)
    }
}
