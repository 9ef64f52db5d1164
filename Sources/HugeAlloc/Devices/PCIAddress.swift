/// A PCI function's address, `domain:bus:device.function` as sysfs names
/// it (`0000:00:03.0`).
public struct PCIAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var domain: UInt32
    public var bus: UInt8
    public var device: UInt8
    public var function: UInt8

    public init(domain: UInt32 = 0, bus: UInt8, device: UInt8, function: UInt8) {
        self.domain = domain
        self.bus = bus
        self.device = device
        self.function = function
    }

    /// Parses `0000:00:03.0` or the short form `00:03.0` (domain 0); nil
    /// when the text is not a PCI address (device ≤ 0x1f, function ≤ 7).
    public init?(_ text: String) {
        var parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        if parts.count == 2 { parts.insert("0000", at: 0) }
        guard parts.count == 3,
              let domain = UInt32(parts[0], radix: 16),
              let bus = UInt8(parts[1], radix: 16) else { return nil }
        let slot = parts[2].split(separator: ".", omittingEmptySubsequences: false)
        guard slot.count == 2, let device = UInt8(slot[0], radix: 16), let function = UInt8(slot[1], radix: 16),
              device <= 0x1f, function <= 7 else { return nil }
        self.init(domain: domain, bus: bus, device: device, function: function)
    }

    /// The sysfs spelling, `dddd:bb:dd.f`.
    public var description: String {
        hex(domain, 4) + ":" + hex(UInt32(bus), 2) + ":" + hex(UInt32(device), 2) + "." + String(function)
    }

    public static func < (a: Self, b: Self) -> Bool {
        (a.domain, a.bus, a.device, a.function) < (b.domain, b.bus, b.device, b.function)
    }

    private func hex(_ value: UInt32, _ width: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

/// A PCI vendor and device id pair (`8086:100e` is the 82540EM).
public struct PCIDeviceID: Hashable, Sendable, CustomStringConvertible {
    public var vendor: UInt16
    public var device: UInt16

    public init(vendor: UInt16, device: UInt16) {
        self.vendor = vendor
        self.device = device
    }

    /// Parses `8086:100e`; nil otherwise.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let v = UInt16(parts[0], radix: 16), let d = UInt16(parts[1], radix: 16) else { return nil }
        self.init(vendor: v, device: d)
    }

    public var description: String {
        func hex4(_ v: UInt16) -> String { let s = String(v, radix: 16); return String(repeating: "0", count: 4 - s.count) + s }
        return hex4(vendor) + ":" + hex4(device)
    }
}
