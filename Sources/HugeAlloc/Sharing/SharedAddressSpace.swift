import SystemPackage

/// Choosing, claiming and explaining the address ranges shared objects
/// live at: the same virtual addresses in every process, so pointers into
/// the memory are valid everywhere.
///
/// A publisher takes the lowest free 1 GiB-aligned range at or above
/// ``SharingOptions/defaultBaseAddress`` that no other published object
/// (read from the runtime directory's `segment` files) uses and that is
/// free in its own address space (`mmap(2)` with `MAP_FIXED_NOREPLACE`).
/// Attachers map the memfd there with `MAP_FIXED_NOREPLACE`, so nothing of
/// theirs is ever replaced; when the range is taken, the error names what
/// holds it from `/proc/self/maps`.
enum SharedAddressSpace {
    static let granule: UInt = 1 << 30
    /// How many candidate ranges a publisher tries.
    static let attempts = 4096

    /// Reserves a range of `length` bytes for a new segment: `PROT_NONE`,
    /// replaced by the memory right after.
    static func reserve(length: Int, options: SharingOptions, taken: [ClosedRange<UInt>]) throws(SharingError) -> UInt {
        let span = (UInt(length) + granule - 1) / granule * granule
        if let fixed = options.baseAddress {
            guard fixed % granule == 0 else {
                throw .noAddressRange(length: length, reason: "SharingOptions.baseAddress 0x\(String(fixed, radix: 16)) is not a multiple of 1 GiB")
            }
            do {
                _ = try unsafe Sys.reserveAddressRange(length: length, at: fixed)
                return fixed
            } catch {
                throw .addressRangeOccupied(name: "", address: fixed, length: length, occupants: occupants(of: fixed, length: length),
                                            advice: "choose another SharingOptions.baseAddress")
            }
        }
        var candidate = SharingOptions.defaultBaseAddress / granule * granule
        var lastError: SystemCallError? = nil
        // A sanitizer's runtime refuses (or dies on) fixed addresses outside
        // the ranges it tracks: let the kernel choose instead.
        for _ in 0..<(Sys.runsUnderThreadSanitizer ? 0 : attempts) {
            let end = candidate + span - 1
            if let clash = taken.first(where: { $0.overlaps(candidate...end) }) {
                candidate = (clash.upperBound / granule + 1) * granule
                continue
            }
            do {
                _ = try unsafe Sys.reserveAddressRange(length: length, at: candidate)
                return candidate
            } catch {
                lastError = error
                if error.errno == .invalidArgument { break }
                candidate += span
            }
        }
        do {
            let raw = try unsafe Sys.reserveAddressRange(length: length + Int(granule), at: nil)
            let start = UInt(bitPattern: raw)
            let aligned = (start + granule - 1) / granule * granule
            if aligned > start { unsafe Sys.unmapShared(raw, length: Int(aligned - start)) }
            let tail = (start + UInt(length) + granule) - (aligned + UInt(length))
            if tail > 0 { unsafe Sys.unmapShared(UnsafeMutableRawPointer(bitPattern: aligned + UInt(length))!, length: Int(tail)) }
            return aligned
        } catch {
            throw .noAddressRange(length: length, reason: "\(lastError ?? error)")
        }
    }

    /// Lines of `/proc/self/maps` that overlap `[address, address + length)`:
    /// what occupies the range, with the file mapped there if any.
    static func occupants(of address: UInt, length: Int) -> [String] {
        guard let text = KernelFiles.live.textIfReadable("/proc/self/maps") else { return [] }
        let end = address + UInt(length)
        var found: [String] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard let range = fields.first, let dash = range.firstIndex(of: "-"),
                  let start = UInt(range[..<dash], radix: 16), let stop = UInt(range[range.index(after: dash)...], radix: 16),
                  start < end, address < stop else { continue }
            let what = fields.count >= 6 ? fields[5...].joined(separator: " ") : "an anonymous mapping"
            let permissions = fields.count > 1 ? String(fields[1]) : ""
            found.append("\(range) \(permissions) \(what)")
        }
        return found
    }
}
