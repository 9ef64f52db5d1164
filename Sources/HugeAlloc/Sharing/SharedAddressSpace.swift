import Synchronization
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
///
/// A process may claim the ranges early (``SharedAddressReservation``):
/// then segments placed inside its claim map over it (`MAP_FIXED`, the
/// claim is the process's own) and give their part back as a bare
/// reservation when they go, so nothing else the process maps can land
/// there in between.
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
            if useClaimed(address: fixed, length: length) { return fixed }
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
        // Inside this process's early claim first: no mmap, the claim holds it.
        if let claimed = takeClaimed(length: length, avoiding: taken) { return claimed }
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

    // MARK: early claims

    /// This process's early claims and the parts of them segments use.
    struct Claims {
        var ranges: [Range<UInt>] = []
        var inUse: [Range<UInt>] = []
    }

    static let claims = Mutex(Claims())

    /// Records `range`, already reserved `PROT_NONE` by the caller, as claimed.
    static func addClaim(_ range: Range<UInt>) {
        claims.withLock { $0.ranges.append(range) }
    }

    /// The claimed ranges of this process.
    static var claimedRanges: [Range<UInt>] { claims.withLock { $0.ranges } }

    /// A free 1 GiB-aligned part of this process's claims for a new segment
    /// of `length` bytes, clear of `taken` (other processes' objects), now
    /// marked in use; nil when the claims have none.
    static func takeClaimed(length: Int, avoiding taken: [ClosedRange<UInt>]) -> UInt? {
        let span = (UInt(length) + granule - 1) / granule * granule
        return claims.withLock { claims in
            for range in claims.ranges {
                var candidate = (range.lowerBound + granule - 1) / granule * granule
                while candidate + span <= range.upperBound {
                    let wanted = candidate..<(candidate + span)
                    if let clash = claims.inUse.first(where: { $0.overlaps(wanted) }) {
                        candidate = (clash.upperBound + granule - 1) / granule * granule
                    } else if let clash = taken.first(where: { $0.overlaps(wanted.lowerBound...(wanted.upperBound - 1)) }) {
                        candidate = (clash.upperBound / granule + 1) * granule
                    } else {
                        claims.inUse.append(candidate..<(candidate + UInt(length)))
                        return candidate
                    }
                }
            }
            return nil
        }
    }

    /// Marks `[address, address + length)` in use when it lies inside a
    /// claim of this process (an attach maps over it, replacing the claim);
    /// false when it does not, or overlaps a segment already there.
    static func useClaimed(address: UInt, length: Int) -> Bool {
        let wanted = address..<(address + UInt(length))
        return claims.withLock { claims in
            guard claims.ranges.contains(where: { $0.contains(wanted.lowerBound) && wanted.upperBound <= $0.upperBound }),
                  !claims.inUse.contains(where: { $0.overlaps(wanted) }) else { return false }
            claims.inUse.append(wanted)
            return true
        }
    }

    /// Gives back a segment's range: inside a claim it becomes a bare
    /// reservation again (in place, one `mmap`), anywhere else it is unmapped.
    static func release(address: UInt, length: Int) {
        let range = address..<(address + UInt(length))
        let claimed = claims.withLock { claims in
            guard let i = claims.inUse.firstIndex(of: range) else { return false }
            claims.inUse.remove(at: i)
            return true
        }
        if claimed, (try? Sys.restoreReservation(at: address, length: length)) != nil { return }
        unsafe Sys.unmapShared(UnsafeMutableRawPointer(bitPattern: address)!, length: length)
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

/// Claiming, early at start-up, the address range shared objects are
/// placed at, so that nothing this process maps later (a library's arena,
/// a JIT's code cache, a large `malloc`) can take it before an attach.
///
/// The claim is `PROT_NONE` address space without memory
/// (`mmap(2)` `MAP_NORESERVE`, `MAP_FIXED_NOREPLACE`): it costs page-table
/// entries only once objects are mapped inside it. Objects published by
/// this process are placed inside the claim first; objects attached by it
/// are mapped over it when they lie inside; either gives its part back as
/// a bare reservation when closed. An attach outside the claim behaves as
/// without one.
public enum SharedAddressReservation {
    /// Claims `bytes` (rounded up to 1 GiB) of this process's address space
    /// at `options.baseAddress`, else ``SharingOptions/defaultBaseAddress``:
    /// where publishers place objects (the lowest free 1 GiB ranges from
    /// there). Call it before anything else maps memory; claiming twice
    /// adds a second range. Returns the claimed range.
    ///
    /// - Throws: ``SharingError/addressRangeOccupied(name:address:length:occupants:advice:)``
    ///   naming what holds part of the range (`/proc/self/maps`);
    ///   ``SharingError/noAddressRange(length:reason:)`` for a base that is
    ///   not 1 GiB-aligned, a zero or overflowing size, or under
    ///   ThreadSanitizer (whose runtime cannot have memory at fixed
    ///   addresses outside the ranges it shadows).
    @discardableResult
    public static func claim(bytes: Int = 64 << 30, options: SharingOptions = SharingOptions()) throws(SharingError) -> Range<UInt> {
        let granule = SharedAddressSpace.granule
        let base = options.baseAddress ?? SharingOptions.defaultBaseAddress
        guard bytes > 0, bytes <= 1 << 46 else {
            throw .noAddressRange(length: bytes, reason: "a claim of \(bytes) bytes: claim 1 byte to 64 TiB")
        }
        guard base % granule == 0 else {
            throw .noAddressRange(length: bytes, reason: "the base address 0x\(String(base, radix: 16)) is not a multiple of 1 GiB")
        }
        guard isSupported else {
            throw .noAddressRange(length: bytes, reason: "under ThreadSanitizer fixed ranges cannot be claimed (the kernel places shared objects instead)")
        }
        let span = (UInt(bytes) + granule - 1) / granule * granule
        do {
            _ = try unsafe Sys.reserveAddressRange(length: Int(span), at: base)
        } catch {
            throw .addressRangeOccupied(name: "", address: base, length: Int(span),
                                        occupants: SharedAddressSpace.occupants(of: base, length: Int(span)),
                                        advice: "claim earlier at start-up, claim fewer bytes, or choose another SharingOptions.baseAddress or HUGEALLOC_BASE_ADDRESS")
        }
        let range = base..<(base + span)
        SharedAddressSpace.addClaim(range)
        return range
    }

    /// Whether claims can be made in this process: not under
    /// ThreadSanitizer, where shared objects go where the kernel puts them.
    public static var isSupported: Bool { !Sys.runsUnderThreadSanitizer }

    /// The ranges this process has claimed.
    public static var claimed: [Range<UInt>] { SharedAddressSpace.claimedRanges }
}
