import Foundation
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// PCI discovery, config space and BAR mapping on fixture sysfs trees.
@Suite struct PCIDeviceTests {
    @Test func addressesParseAndPrintAsSysfsDoes() throws {
        let a = try #require(PCIAddress("0000:00:03.0"))
        #expect(a == PCIAddress(bus: 0, device: 3, function: 0))
        #expect(PCIAddress("00:1f.7")?.description == "0000:00:1f.7")
        #expect(PCIAddress("0000:00:20.0") == nil, "device numbers stop at 0x1f")
        #expect(PCIAddress("0000:00:03.8") == nil, "functions stop at 7")
        #expect(PCIAddress("e1000") == nil)
        #expect(PCIDeviceID("8086:100e") == PCIDeviceID(vendor: 0x8086, device: 0x100e))
        #expect(PCIDeviceID("8086:100e")?.description == "8086:100e")
    }

    @Test func findsByAddressAndByIDWithResourcesDriverAndGroup() throws {
        let root = try PCIFixture.make()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let all = try PCIDevice.all(root: root)
        #expect(all.map(\.address.description) == ["0000:00:00.0", "0000:00:03.0", "0000:00:04.0"])

        let nic = try PCIDevice.find(PCIDeviceID(vendor: 0x8086, device: 0x100e), root: root)
        #expect(nic.address.description == "0000:00:03.0", "the lowest address with the id")
        #expect(nic.classCode == 0x020000)
        #expect(nic.driver == nil && nic.iommuGroup == nil)
        #expect(nic.resources[0].isMemory && nic.resources[0].size == 0x20000)
        #expect(nic.resources[1].isIO && !nic.resources[1].isMemory)

        let bound = try PCIDevice.find(try #require(PCIAddress("0000:00:04.0")), root: root)
        #expect(bound.driver == "e1000")
        #expect(bound.iommuGroup == 7)
    }

    @Test func aMissingDeviceNamesWhatIsPresent() throws {
        let root = try PCIFixture.make()
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(throws: PCIError.noSuchDevice(wanted: "0000:00:05.0",
                                              present: ["0000:00:00.0", "0000:00:03.0", "0000:00:04.0"])) {
            try PCIDevice.find(PCIAddress(bus: 0, device: 5, function: 0), root: root)
        }
        #expect(throws: PCIError.self) { try PCIDevice.find(PCIDeviceID(vendor: 0x8086, device: 0x10d3), root: root) }
    }

    @Test func aBoundDeviceIsRefusedWithTheUnbindAndOverrideCommands() throws {
        let root = try PCIFixture.make()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let bound = try PCIDevice.find(try #require(PCIAddress("0000:00:04.0")), root: root)
        do {
            _ = try bound.mapBAR(0)
            Issue.record("mapping a bound device's BAR succeeded")
        } catch let error {
            guard case .boundToDriver(_, let driver, let commands) = error else { Issue.record("\(error)"); return }
            #expect(driver == "e1000")
            #expect(commands[0] == "echo 0000:00:04.0 > /sys/bus/pci/devices/0000:00:04.0/driver/unbind")
            #expect(commands[1].hasPrefix("echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override"))
            #expect(error.description.contains("drivers_probe"))
        }
    }

    @Test func ioPortAndUnusedBARsAreNotMappable() throws {
        let root = try PCIFixture.make()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let nic = try PCIDevice.find(try #require(PCIAddress("0000:00:03.0")), root: root)
        #expect { _ = try nic.mapBAR(1) } throws: { error in
            guard case PCIError.barNotMemoryMappable(_, 1, let reason) = error else { return false }
            return reason.contains("I/O-port")
        }
        #expect { _ = try nic.mapBAR(2) } throws: { error in
            guard case PCIError.barNotMemoryMappable(_, 2, let reason) = error else { return false }
            return reason.contains("size 0")
        }
    }

    @Test func configSpaceReadsAndBusMasteringSetsOnlyItsBits() throws {
        let root = try PCIFixture.make()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let nic = try PCIDevice.find(try #require(PCIAddress("0000:00:03.0")), root: root)
        #expect(try nic.readConfig32(0) == 0x100e_8086)
        let (before, after) = try nic.enableMemoryAndBusMastering()
        #expect(before == 0x0103)
        #expect(after == 0x0107, "bus master added; memory space and the other bits kept")
        #expect(try nic.readConfig16(PCIDevice.commandRegister) == 0x0107)
        #expect(throws: PCIError.configOutOfRange(device: nic.address, offset: 254, width: 4, size: 256)) {
            try nic.readConfig(offset: 254, count: 4)
        }
    }

    @Test func bar0MapsAndRegistersReadBackWhatWasWritten() throws {
        let root = try PCIFixture.make()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let nic = try PCIDevice.find(try #require(PCIAddress("0000:00:03.0")), root: root)
        let bar = try nic.mapBAR(0)
        #expect(bar.physicalAddress == PhysicalAddress(0xfebc0000))
        bar.write32(0x08, 0xdead_beef)
        #expect(bar.read32(0x08) == 0xdead_beef)
        try bar.unmap()
        let file = try Data(contentsOf: URL(fileURLWithPath: nic.sysfsPath + "/resource0"))
        #expect(Array(file[8..<12]) == [0xef, 0xbe, 0xad, 0xde], "the store went through the shared mapping")
    }
}
