/// A page size the kernel can back memory with: the base page or a hugepage size.
public struct PageSize: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Size in bytes; always a power of two.
    public let rawValue: Int

    public init?(rawValue: Int) {
        guard rawValue > 0, rawValue & (rawValue - 1) == 0 else { return nil }
        self.rawValue = rawValue
    }

    @inlinable public var bytes: Int { rawValue }

    /// The base page size of this kernel (`sysconf(_SC_PAGESIZE)`, 4 KiB on x86-64).
    public static var base: PageSize { PageSize(rawValue: Sys.basePageSize)! }
    public static let huge2M = PageSize(rawValue: 2 << 20)!
    public static let huge1G = PageSize(rawValue: 1 << 30)!

    /// Whether this is a hugepage size (larger than the base page).
    public var isHuge: Bool { rawValue > Sys.basePageSize }

    /// Parses "4K", "2M", "1G", "2048kB", or a plain byte count.
    public init?(parsing text: String) {
        guard let bytes = ByteCount.parse(text) else { return nil }
        self.init(rawValue: bytes)
    }

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// "4K", "2M", "1G".
    public var description: String { ByteCount.format(rawValue) }
}

/// Parsing and printing of byte counts with binary suffixes.
package enum ByteCount {
    /// Parses "64", "4K", "4k", "4KB", "4kB", "4KiB", "2M", "1G", "1T"; nil for
    /// anything else, negative numbers, or values that overflow `Int`.
    package static func parse(_ text: String) -> Int? {
        var digits = Substring(text.trimmingWhitespace())
        var unit = 1
        let lowered = digits.lowercased()
        for (suffixes, multiplier) in [(["kib", "kb", "k"], 1 << 10), (["mib", "mb", "m"], 1 << 20),
                                       (["gib", "gb", "g"], 1 << 30), (["tib", "tb", "t"], 1 << 40)] {
            if let s = suffixes.first(where: { lowered.hasSuffix($0) }) {
                digits = digits.dropLast(s.count)
                unit = multiplier
                break
            }
        }
        if lowered.hasSuffix("b") && unit == 1 { digits = digits.dropLast() }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCIIDigit), let n = Int(digits) else { return nil }
        let (product, overflow) = n.multipliedReportingOverflow(by: unit)
        return overflow ? nil : product
    }

    /// "4K", "2M", "1G" when exact, else bytes.
    package static func format(_ bytes: Int) -> String {
        for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }
}

extension Character {
    package var isASCIIDigit: Bool { isASCII && isNumber }
}

extension StringProtocol {
    package func trimmingWhitespace() -> Substring {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return s
    }
}
