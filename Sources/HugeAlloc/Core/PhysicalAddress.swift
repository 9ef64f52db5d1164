/// A physical (bus) address: what a device without an IOMMU puts on the wire.
///
/// A value type on purpose: it is never dereferenced, so it is never a pointer.
/// With an IOMMU in use the same type carries an I/O virtual address (IOVA).
public struct PhysicalAddress: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64

    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt64) { self.rawValue = value }

    /// The address of byte `offset` within the frame `pfn` of `pageSize`-sized
    /// base frames (pagemap frames are always base-page sized).
    @inlinable public init(pfn: UInt64, offset: Int = 0, basePageSize: Int) {
        self.rawValue = pfn &* UInt64(basePageSize) &+ UInt64(offset)
    }

    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    @inlinable public static func + (a: Self, b: Int) -> Self { Self(rawValue: a.rawValue &+ UInt64(b)) }
    @inlinable public static func - (a: Self, b: Self) -> Int { Int(truncatingIfNeeded: a.rawValue &- b.rawValue) }

    /// "0x…" lower-case hex, the form every JSON output uses.
    public var description: String { "0x" + String(rawValue, radix: 16) }
}
