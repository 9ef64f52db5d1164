import Foundation

/// Sysfs trees of PCI devices, written to a temporary directory per test
/// (they hold symbolic links and binary config space, and write tests
/// change them). Each is laid out as the kernel lays out /sys/bus/pci.
enum PCIFixture {
    struct Device {
        var address: String
        var vendor: String
        var device: String
        var classCode: String
        var driver: String? = nil
        var iommuGroup: Int? = nil
        /// Lines of sysfs `resource`.
        var resources: [String]
        /// Config space: 256 bytes, vendor/device ids and the command register filled in.
        var command: UInt16 = 0x0103
    }

    /// A q35 guest's 82540EM at 00:03.0 with no driver (BAR0 memory, BAR1
    /// I/O ports), the host bridge and an e1000 bound to its kernel driver.
    static let guest: [Device] = [
        Device(address: "0000:00:00.0", vendor: "0x8086", device: "0x29c0", classCode: "0x060000",
               resources: Array(repeating: "0x0000000000000000 0x0000000000000000 0x0000000000000000", count: 13)),
        Device(address: "0000:00:03.0", vendor: "0x8086", device: "0x100e", classCode: "0x020000",
               resources: ["0x00000000febc0000 0x00000000febdffff 0x0000000000040200",
                           "0x000000000000c000 0x000000000000c03f 0x0000000000040101"]
                   + Array(repeating: "0x0000000000000000 0x0000000000000000 0x0000000000000000", count: 4)
                   + ["0x00000000feb80000 0x00000000febbffff 0x0000000000046200"]),
        Device(address: "0000:00:04.0", vendor: "0x8086", device: "0x100e", classCode: "0x020000",
               driver: "e1000", iommuGroup: 7,
               resources: ["0x00000000fea00000 0x00000000fea1ffff 0x0000000000040200"]),
    ]

    /// Writes `devices` below a new temporary root and returns the root.
    static func make(_ devices: [Device] = guest) throws -> String {
        let fm = FileManager.default
        let root = fm.temporaryDirectory.appendingPathComponent("pci-fixture-\(UUID().uuidString)").path
        let bus = root + "/sys/bus/pci"
        try fm.createDirectory(atPath: bus + "/devices", withIntermediateDirectories: true)
        for d in devices {
            let real = root + "/sys/devices/pci0000:00/" + d.address
            try fm.createDirectory(atPath: real, withIntermediateDirectories: true)
            try fm.createSymbolicLink(atPath: bus + "/devices/" + d.address, withDestinationPath: real)
            for (name, text) in [("vendor", d.vendor), ("device", d.device), ("class", d.classCode)] {
                try (text + "\n").write(toFile: real + "/" + name, atomically: false, encoding: .utf8)
            }
            try (d.resources.joined(separator: "\n") + "\n").write(toFile: real + "/resource", atomically: false, encoding: .utf8)
            var config = [UInt8](repeating: 0, count: 256)
            let vendor = UInt16(d.vendor.dropFirst(2), radix: 16)!, device = UInt16(d.device.dropFirst(2), radix: 16)!
            config[0] = UInt8(vendor & 0xff); config[1] = UInt8(vendor >> 8)
            config[2] = UInt8(device & 0xff); config[3] = UInt8(device >> 8)
            config[4] = UInt8(d.command & 0xff); config[5] = UInt8(d.command >> 8)
            try Data(config).write(to: URL(fileURLWithPath: real + "/config"))
            // A BAR0 file the size of one page: enough to map and poke.
            if let first = d.resources.first, first.hasSuffix("200") {
                try Data(count: 4096).write(to: URL(fileURLWithPath: real + "/resource0"))
            }
            if let driver = d.driver {
                let driverDirectory = bus + "/drivers/" + driver
                try fm.createDirectory(atPath: driverDirectory, withIntermediateDirectories: true)
                try fm.createSymbolicLink(atPath: real + "/driver", withDestinationPath: driverDirectory)
            }
            if let group = d.iommuGroup {
                let groupDirectory = root + "/sys/kernel/iommu_groups/\(group)"
                try fm.createDirectory(atPath: groupDirectory, withIntermediateDirectories: true)
                try fm.createSymbolicLink(atPath: real + "/iommu_group", withDestinationPath: groupDirectory)
            }
        }
        return root
    }
}
