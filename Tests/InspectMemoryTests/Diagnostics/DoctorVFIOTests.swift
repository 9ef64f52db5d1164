import Foundation
import HugeAlloc
import HugeAllocTestSupport
import Testing
@testable import HugeAllocDiagnostics

/// doctor reports each device bound to vfio-pci with its IOMMU group and
/// whether the group is viable (devices issue).
@Suite struct DoctorVFIOTests {
    /// A sysfs tree: devices 0000:00:03.0 (vfio-pci) and 0000:00:03.1 (`other`
    /// driver, or unbound) in IOMMU group 7.
    func tree(otherDriver: String?) throws -> String {
        let fm = FileManager.default
        let root = fm.temporaryDirectory.appendingPathComponent("doctor-vfio-\(UUID().uuidString)").path
        for dir in ["sys/bus/pci/drivers/vfio-pci", "sys/bus/pci/drivers/e1000", "sys/kernel/iommu_groups/7/devices",
                    "sys/devices/pci0000:00/0000:00:03.0", "sys/devices/pci0000:00/0000:00:03.1", "sys/bus/pci/devices"] {
            try fm.createDirectory(atPath: root + "/" + dir, withIntermediateDirectories: true)
        }
        func link(_ path: String, _ target: String) throws {
            try fm.createSymbolicLink(atPath: root + "/" + path, withDestinationPath: target)
        }
        for device in ["0000:00:03.0", "0000:00:03.1"] {
            try link("sys/bus/pci/devices/\(device)", "../../../devices/pci0000:00/\(device)")
            try link("sys/devices/pci0000:00/\(device)/iommu_group", "../../../kernel/iommu_groups/7")
            try link("sys/kernel/iommu_groups/7/devices/\(device)", "../../../../devices/pci0000:00/\(device)")
        }
        try link("sys/bus/pci/drivers/vfio-pci/0000:00:03.0", "../../../../devices/pci0000:00/0000:00:03.0")
        try link("sys/devices/pci0000:00/0000:00:03.0/driver", "../../../bus/pci/drivers/vfio-pci")
        if let otherDriver {
            try fm.createDirectory(atPath: root + "/sys/bus/pci/drivers/\(otherDriver)", withIntermediateDirectories: true)
            try link("sys/devices/pci0000:00/0000:00:03.1/driver", "../../../bus/pci/drivers/\(otherDriver)")
        }
        return root
    }

    @Test func aGroupWithAHostDriverIsNotViableAndSaysWhatToUnbind() throws {
        let root = try tree(otherDriver: "e1000")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let checks = Doctor.vfioChecks(in: KernelFiles(root: root))
        #expect(checks.count == 1)
        let check = try #require(checks.first)
        #expect(check.name == "vfio-0000:00:03.0" && check.status == .warn)
        #expect(check.detail.contains("IOMMU group 7") && check.detail.contains("0000:00:03.1 (e1000)"))
        #expect(check.fix == "echo 0000:00:03.1 > /sys/bus/pci/drivers/e1000/unbind")
    }

    @Test func aGroupWithOnlyVFIOOrUnboundDevicesIsViable() throws {
        let root = try tree(otherDriver: nil)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let check = try #require(Doctor.vfioChecks(in: KernelFiles(root: root)).first)
        #expect(check.status == .ok && check.detail.contains("IOMMU group 7") && check.fix == nil)
        // No vfio-pci devices: no checks at all.
        #expect(Doctor.vfioChecks(in: KernelFiles(root: root + "/nowhere")).isEmpty)
    }
}
