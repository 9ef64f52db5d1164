/// What went wrong creating or using a ``PacketPool``: what was asked, what
/// the limit is, and how to fix it.
public enum PacketPoolError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Headroom or data room was negative, or the data room zero.
    case invalidSize(headroom: Int, dataRoom: Int)
    /// Headroom plus data room exceed what the 16-bit offset and length fields hold.
    case bufferTooLarge(bytes: Int, maximum: Int)
    /// The pool's buffer count exceeds the 32-bit index field.
    case tooManyBuffers(requested: Int, maximum: Int)
    /// The underlying mempool could not be created.
    case mempool(MempoolError)
    /// The pool's mempool objects are smaller than a buffer needs.
    case objectTooSmall(objectSize: Int, needed: Int)
    /// A frame of this length needs more segments than allowed.
    case frameTooLong(length: Int, maximum: Int)
    /// Fewer buffers were free than an operation needed.
    case exhausted(needed: Int, available: Int)
    /// A buffer from another pool was given where this pool's was expected.
    case foreignBuffer(address: UInt)
    /// An address inside the pool that is not a buffer's start.
    case notABuffer(address: UInt)
    /// A buffer freed while it is already back in the pool (checked mode).
    case doubleFree(address: UInt, index: Int)
    /// A buffer whose reference count is already zero was freed (checked mode).
    case referenceCountUnderflow(address: UInt, index: Int)
    /// A checked operation on a pool created without checks.
    case checksDisabled

    public var description: String {
        switch self {
        case .invalidSize(let h, let d):
            return "packet buffer headroom \(h) and data room \(d) are invalid: use a headroom of at least 0 and a data room of at least 1 byte"
        case .bufferTooLarge(let bytes, let maximum):
            return "packet buffer headroom + data room of \(bytes) bytes exceeds \(maximum): use a smaller data room and chain segments for larger frames"
        case .tooManyBuffers(let n, let maximum):
            return "\(n) packet buffers exceed the maximum of \(maximum) per pool: create several pools"
        case .mempool(let error):
            return "the packet pool's mempool could not be created: \(error)"
        case .objectTooSmall(let size, let needed):
            return "mempool objects of \(size) bytes cannot hold a packet buffer of \(needed) bytes (64 bytes of metadata + headroom + data room): "
                + "create the mempool with objectSize \(needed) or more"
        case .frameTooLong(let length, let maximum):
            return "a frame of \(length) bytes needs more segments than a packet may have; at most \(maximum) bytes fit in one chain"
        case .exhausted(let needed, let available):
            return "the packet pool has \(available) free buffers but \(needed) were needed: free buffers or create a larger pool"
        case .foreignBuffer(let address):
            return "packet buffer 0x\(String(address, radix: 16)) does not belong to this pool: free it into the pool it came from"
        case .notABuffer(let address):
            return "0x\(String(address, radix: 16)) lies inside this packet pool but is not a buffer's start: free the PacketBuffer the pool handed out"
        case .doubleFree(let address, let index):
            return "double free: packet buffer \(index) at 0x\(String(address, radix: 16)) is already back in the pool"
        case .referenceCountUnderflow(let address, let index):
            return "packet buffer \(index) at 0x\(String(address, radix: 16)) was freed with a reference count of 0: "
                + "it was freed more often than it was retained"
        case .checksDisabled:
            return "this packet pool was created without checks: create it with PacketPoolConfiguration(checked: true) to use freeChecked"
        }
    }
}
