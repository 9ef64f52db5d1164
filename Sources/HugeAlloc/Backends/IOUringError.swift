/// What went wrong handing packet memory to io_uring: which kernel limit was
/// hit, the numbers, and how to fix it.
public enum IOUringError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A system call failed (`io_uring_setup`, `io_uring_register`, `io_uring_enter`).
    case systemCall(SystemCallError)
    /// More fixed-buffer regions than the kernel accepts (`IORING_MAX_REG_BUFFERS`).
    case tooManyRegions(needed: Int, maximum: Int)
    /// One region (a packet buffer, with larger regions split) exceeds the 1 GiB per-iovec limit.
    case regionTooLarge(bytes: Int, maximum: Int)
    /// Registering would pin more memory than RLIMIT_MEMLOCK allows.
    case memlockLimitTooLow(MemlockShortage)
    /// Buffers are already registered with this ring.
    case alreadyRegistered
    /// A packet buffer that lies in no registered region.
    case bufferNotRegistered(address: UInt)
    /// A read or write longer than the room the packet buffer has from its data start.
    case lengthExceedsBuffer(length: Int, room: Int)
    /// A fixed read or write on an `O_DIRECT` file breaks the file's direct-I/O
    /// alignment (`statx` `STATX_DIOALIGN`): `what` is "buffer address",
    /// "length" or "file offset", `value` its value and `alignment` what it
    /// must be a multiple of.
    case directIOMisaligned(what: String, value: Int, alignment: Int, bufferOffset: Int)
    /// The file was opened with `O_DIRECT` but its file system does not do
    /// direct I/O (`STATX_DIOALIGN` reports no alignment).
    case directIOUnsupported
    /// The submission queue is full: submit before queueing more.
    case submissionQueueFull(entries: Int)
    /// A provided-buffer ring size that is not a power of two in 1...32768.
    case invalidRingEntries(requested: Int)
    /// Provided buffers are named by 16-bit ids: the pool has too many buffers.
    case poolTooLargeForBufferIDs(count: Int, maximum: Int)

    public var description: String {
        switch self {
        case .systemCall(let error):
            return "io_uring: \(error)"
        case .tooManyRegions(let needed, let maximum):
            return "the pool needs \(needed) fixed-buffer regions but io_uring accepts at most \(maximum) (IORING_MAX_REG_BUFFERS): "
                + "register a smaller pool, or larger regions (up to 1 GiB each)"
        case .regionTooLarge(let bytes, let maximum):
            return "a fixed-buffer region of \(bytes) bytes exceeds io_uring's \(maximum)-byte limit per iovec: use a region length of at most \(maximum)"
        case .memlockLimitTooLow(let shortage):
            return "registering \(shortage.needed) bytes of fixed buffers pins them, but RLIMIT_MEMLOCK is \(shortage.limit) bytes "
                + "and \(shortage.alreadyLocked) are locked already. \(shortage.fix)"
        case .alreadyRegistered:
            return "this io_uring already has fixed buffers registered: unregister them first"
        case .bufferNotRegistered(let address):
            return "packet buffer 0x\(String(address, radix: 16)) lies in no fixed-buffer region registered with this io_uring: "
                + "register its pool first"
        case .lengthExceedsBuffer(let length, let room):
            return "\(length) bytes do not fit in the packet buffer, which has \(room) bytes from its data start: "
                + "transfer at most \(room) bytes, or chain segments"
        case .directIOMisaligned(let what, let value, let alignment, let bufferOffset):
            var fix = "align it to \(alignment) bytes"
            if what == "buffer address" {
                fix = "the packet buffer's data starts \(bufferOffset) bytes into its element; create the pool with a headroom "
                    + "that puts the data on a \(alignment)-byte boundary, e.g. "
                    + "PacketPoolConfiguration.afXDP(count:chunkSize:directIOAlignment: \(alignment)) for AF_XDP and O_DIRECT together"
            }
            return "O_DIRECT needs the \(what) aligned to \(alignment) bytes (statx STATX_DIOALIGN), but it is \(value): \(fix)"
        case .directIOUnsupported:
            return "the file was opened with O_DIRECT but its file system does no direct I/O (STATX_DIOALIGN reports none): open it without O_DIRECT"
        case .submissionQueueFull(let entries):
            return "the io_uring submission queue (\(entries) entries) is full: call submit() before queueing more"
        case .invalidRingEntries(let n):
            return "a provided-buffer ring of \(n) entries is invalid: use a power of two from 1 to 32768"
        case .poolTooLargeForBufferIDs(let count, let maximum):
            return "io_uring names provided buffers by 16-bit ids, so a pool of \(count) buffers is too large: use at most \(maximum)"
        }
    }
}
