/// Why publishing, attaching or handing on a shared object failed, with
/// what to do about it.
public enum SharingError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The name is empty, too long, or holds a character other than
    /// letters, digits, `-`, `_` and `.` (it names a directory).
    case invalidName(String, reason: String)
    /// Another live process already publishes this name.
    case nameInUse(name: String, path: String, pids: [Int32])
    /// Nothing is published under this name (no rendezvous directory, or
    /// none of its processes answers).
    case notPublished(name: String, path: String, staleEntries: Int)
    /// The runtime directory or the rendezvous socket refused this user
    /// (its permissions), or the publisher refused this user by its
    /// credentials (`SO_PEERCRED`).
    case permissionDenied(name: String, path: String, uid: UInt32, reason: String)
    /// The address range the object lives at is taken in this process.
    case addressRangeOccupied(name: String, address: UInt, length: Int, occupants: [String], advice: String)
    /// No free address range was found for a new object.
    case noAddressRange(length: Int, reason: String)
    /// What was published is of another kind than the one asked for.
    case kindMismatch(name: String, published: String, requested: String)
    /// The publisher runs another version of the layout.
    case incompatible(name: String, reason: String)
    /// Every participant slot of the object is taken.
    case tooManyProcesses(name: String, maximum: Int)
    /// What was asked for cannot be shared between processes.
    case notShareable(reason: String)
    /// The memory could not be made (hugepages, memlock, placement).
    case mapping(MappingError)
    /// The pool could not be made or opened.
    case mempool(MempoolError)
    /// The packet pool could not be made or opened.
    case packetPool(PacketPoolError)
    /// A system call failed.
    case systemCall(SystemCallError)
    /// The publisher did not answer in time or closed the connection.
    case protocolFailure(name: String, reason: String)

    public var description: String {
        switch self {
        case let .invalidName(name, reason):
            return "invalid shared object name \"\(name)\": \(reason); use 1 to 64 letters, digits, '-', '_' or '.'"
        case let .nameInUse(name, path, pids):
            return "\"\(name)\" is already published at \(path) by process\(pids.count == 1 ? "" : "es") \(pids.map(String.init).joined(separator: ", ")); attach to it, or publish under another name"
        case let .notPublished(name, path, stale):
            let staleNote = stale > 0
                ? " (\(stale) stale entr\(stale == 1 ? "y" : "ies") of processes that are gone: `inspect-memory pools --clean` removes them)" : ""
            return "nothing is published as \"\(name)\" at \(path)\(staleNote); start the publisher first, or check the runtime directory (HUGEALLOC_RUNTIME_DIR) is the same in both processes"
        case let .permissionDenied(name, path, uid, reason):
            return "user \(uid) may not attach to \"\(name)\" (\(path)): \(reason); the publisher lets users in with SharingOptions.allowedUsers or allowedGroup, or run as the publisher's user"
        case let .addressRangeOccupied(name, address, length, occupants, advice):
            let end = address + UInt(length)
            let what = name.isEmpty ? "reserve" : "map \"\(name)\" at"
            return "cannot \(what) 0x\(String(address, radix: 16))-0x\(String(end, radix: 16)): this process already has \(occupants.isEmpty ? "a mapping" : occupants.joined(separator: "; ")) there; \(advice)"
        case let .noAddressRange(length, reason):
            return "no free address range of \(length) bytes for a shared object: \(reason); set SharingOptions.baseAddress (or HUGEALLOC_BASE_ADDRESS) to a free range"
        case let .kindMismatch(name, published, requested):
            return "\"\(name)\" is a \(published), not a \(requested); attach with the matching type"
        case let .incompatible(name, reason):
            return "\"\(name)\" was published by an incompatible HugeAlloc: \(reason); use the same HugeAlloc version in every process"
        case let .tooManyProcesses(name, maximum):
            return "\"\(name)\" already has \(maximum) attached processes, the most it tracks; detach one first"
        case .notShareable(let reason):
            return "cannot share this: \(reason)"
        case .mapping(let error): return "\(error)"
        case .mempool(let error): return "\(error)"
        case .packetPool(let error): return "\(error)"
        case .systemCall(let error): return "\(error)"
        case let .protocolFailure(name, reason):
            return "attaching to \"\(name)\" failed: \(reason); the publishing process may have exited or be stuck — try again, and `inspect-memory pools` shows its state"
        }
    }
}
