import SystemPackage
import Synchronization

/// What a shared segment holds.
public enum SharedObjectKind: UInt32, Sendable, CustomStringConvertible {
    case mapping = 1
    case mempool = 2
    case packetPool = 3
    case ring = 4
    case heap = 5

    public var description: String {
        switch self {
        case .mapping: return "mapping"
        case .mempool: return "mempool"
        case .packetPool: return "packet pool"
        case .ring: return "ring"
        case .heap: return "heap"
        }
    }
}

/// The facts a segment's creator records so that every attacher builds the
/// same object: one set of numbers for every kind (unused ones are 0).
struct SharedSegmentFacts: Equatable {
    var count = 0
    var objectSize = 0
    var alignment = 0
    var cacheSize = 0
    var backendIsStack = false
    var checked = false
    var statistics = false
    var memoryChannels = 0
    var headroom = 0
    var dataRoom = 0
    var threadRecords = 0

    static let fieldCount = 11

    var words: [UInt64] {
        [count, objectSize, alignment, cacheSize, backendIsStack ? 1 : 0, checked ? 1 : 0, statistics ? 1 : 0,
         memoryChannels, headroom, dataRoom, threadRecords].map { UInt64(bitPattern: Int64($0)) }
    }

    init() {}

    init(words w: [UInt64]) {
        let v = w.map { Int(Int64(bitPattern: $0)) }
        count = v[0]; objectSize = v[1]; alignment = v[2]; cacheSize = v[3]
        backendIsStack = v[4] != 0; checked = v[5] != 0; statistics = v[6] != 0
        memoryChannels = v[7]; headroom = v[8]; dataRoom = v[9]; threadRecords = v[10]
    }
}

/// The first bytes of every shared segment, read and written only here.
///
/// ```
/// 0     magic "HAshare1"        8   version, kind (UInt32 each)
/// 16    address                 24  length
/// 32    page bytes              40  control offset   48 control length
/// 56    data offset             64  data length
/// 72    creator pid, owner uid  80  reclaimed cached objects (atomic)
/// 88    reclaimed held objects  96  processes reclaimed
/// 104   attaches so far         128 facts (16 words)
/// 256   name (64 bytes, NUL-terminated)
/// 320   allowed group (all ones: none), allowed user count, 8 allowed uids
/// 1024  participant slots, 32 bytes each:
///       pid (atomic Int32), state (atomic UInt32), start time, uid,
///       at 24 the reclaimer (atomic: its pid, its start time's low 32 bits above)
/// ```
///
/// The magic is written last, with release ordering, so an attacher that
/// sees it sees the rest.
@safe
struct SharedSegmentHeader: @unchecked Sendable {
    let base: UnsafeMutableRawPointer

    static let magic: UInt64 = 0x3165_7261_6873_4148  // "HAshare1", little-endian
    /// 2: a shared backend works under pid lock words with a journal beside them.
    static let version: UInt32 = 2
    static let participantSlots = 128
    static let participantsOffset = 1024
    static let slotBytes = 32
    /// Bytes the header takes; the control area starts at the next 4 KiB.
    static let bytes = participantsOffset + participantSlots * slotBytes
    static let nameCapacity = 64
    /// Users besides the owner a publisher can let in.
    static let maximumAllowedUsers = 8

    /// Who the publisher lets in: every process that hands the segment on
    /// applies the publisher's rule, not its own options.
    var access: (users: Set<UInt32>, group: UInt32?) {
        let group = word(320)
        let count = min(Int(word(328)), Self.maximumAllowedUsers)
        let users = (0..<count).map { unsafe base.load(fromByteOffset: 336 + 4 * $0, as: UInt32.self) }
        return (Set(users), group == UInt64.max ? nil : UInt32(truncatingIfNeeded: group))
    }

    /// Whether a peer may attach: root, the owner, an allowed user or the allowed group.
    func admits(_ peer: Sys.PeerCredentials) -> Bool {
        let rule = access
        return peer.uid == 0 || peer.uid == ownerUID || rule.users.contains(peer.uid) || rule.group == peer.gid
    }

    enum SlotState: UInt32 {
        case free = 0
        case attached = 1
        case reclaiming = 2
    }

    private func word(_ offset: Int) -> UInt64 { unsafe base.load(fromByteOffset: offset, as: UInt64.self) }
    private func setWord(_ offset: Int, _ value: UInt64) { unsafe base.storeBytes(of: value, toByteOffset: offset, as: UInt64.self) }
    private func atomic64(_ offset: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        unsafe (base + offset).assumingMemoryBound(to: Atomic<UInt64>.self)
    }

    var isReady: Bool { unsafe atomic64(0).pointee.load(ordering: .acquiring) == Self.magic }
    var version: UInt32 { UInt32(truncatingIfNeeded: word(8)) }
    var kindValue: UInt32 { UInt32(truncatingIfNeeded: word(8) >> 32) }
    var address: UInt { UInt(word(16)) }
    var length: Int { Int(word(24)) }
    var pageBytes: Int { Int(word(32)) }
    var controlOffset: Int { Int(word(40)) }
    var controlLength: Int { Int(word(48)) }
    var dataOffset: Int { Int(word(56)) }
    var dataLength: Int { Int(word(64)) }
    var creatorPID: Int32 { Int32(truncatingIfNeeded: word(72)) }
    var ownerUID: UInt32 { UInt32(truncatingIfNeeded: word(72) >> 32) }
    var facts: SharedSegmentFacts {
        SharedSegmentFacts(words: (0..<SharedSegmentFacts.fieldCount).map { word(128 + 8 * $0) })
    }
    var name: String {
        let bytes = (0..<Self.nameCapacity).map { unsafe base.load(fromByteOffset: 256 + $0, as: UInt8.self) }
        return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
    }

    /// Fills in a new header; the magic goes last.
    func initialize(kind: SharedObjectKind, name: String, address: UInt, length: Int, pageBytes: Int,
                    controlOffset: Int, controlLength: Int, dataOffset: Int, dataLength: Int,
                    facts: SharedSegmentFacts, access: (users: Set<UInt32>, group: UInt32?)) {
        setWord(8, UInt64(Self.version) | UInt64(kind.rawValue) << 32)
        setWord(16, UInt64(address))
        setWord(24, UInt64(length))
        setWord(32, UInt64(pageBytes))
        setWord(40, UInt64(controlOffset))
        setWord(48, UInt64(controlLength))
        setWord(56, UInt64(dataOffset))
        setWord(64, UInt64(dataLength))
        setWord(72, UInt64(UInt32(bitPattern: Sys.processID)) | UInt64(Sys.effectiveUserID) << 32)
        for (i, w) in facts.words.enumerated() { setWord(128 + 8 * i, w) }
        setWord(320, access.group.map { UInt64($0) } ?? UInt64.max)
        let users = Array(access.users.sorted().prefix(Self.maximumAllowedUsers))
        setWord(328, UInt64(users.count))
        for (i, uid) in users.enumerated() { unsafe base.storeBytes(of: uid, toByteOffset: 336 + 4 * i, as: UInt32.self) }
        for (i, byte) in name.utf8.prefix(Self.nameCapacity - 1).enumerated() {
            unsafe base.storeBytes(of: byte, toByteOffset: 256 + i, as: UInt8.self)
        }
        unsafe atomic64(0).pointee.store(Self.magic, ordering: .releasing)
    }

    // MARK: counters

    func noteReclaim(cached: Int, held: Int) {
        unsafe atomic64(80).pointee.add(UInt64(cached), ordering: .relaxed)
        unsafe atomic64(88).pointee.add(UInt64(held), ordering: .relaxed)
        unsafe atomic64(96).pointee.add(1, ordering: .relaxed)
    }

    var reclaimed: (cached: Int, held: Int, processes: Int) {
        unsafe (Int(atomic64(80).pointee.load(ordering: .relaxed)), Int(atomic64(88).pointee.load(ordering: .relaxed)),
                Int(atomic64(96).pointee.load(ordering: .relaxed)))
    }

    func noteAttach() { unsafe atomic64(104).pointee.add(1, ordering: .relaxed) }
    var attaches: Int { unsafe Int(atomic64(104).pointee.load(ordering: .relaxed)) }

    // MARK: participants

    private func slotPID(_ i: Int) -> UnsafeMutablePointer<Atomic<Int32>> {
        unsafe (base + Self.participantsOffset + i * Self.slotBytes).assumingMemoryBound(to: Atomic<Int32>.self)
    }

    private func slotState(_ i: Int) -> UnsafeMutablePointer<Atomic<UInt32>> {
        unsafe (base + Self.participantsOffset + i * Self.slotBytes + 4).assumingMemoryBound(to: Atomic<UInt32>.self)
    }

    /// One attached process as the table records it.
    struct Participant: Equatable {
        var slot: Int
        var pid: Int32
        var startTime: UInt64
        var uid: UInt32
        var reclaiming: Bool
        /// Who reclaims it (``reclaimerWord(pid:startTime:)``), 0 for none yet.
        var reclaimer: UInt64
    }

    /// A reclaimer as its slot word records it: the pid, and the low 32
    /// bits of its start time above (so a reused pid is not taken for it).
    static func reclaimerWord(pid: Int32, startTime: UInt64) -> UInt64 {
        UInt64(UInt32(bitPattern: pid)) | (startTime & 0xFFFF_FFFF) << 32
    }

    private func slotReclaimer(_ i: Int) -> UnsafeMutablePointer<Atomic<UInt64>> {
        unsafe atomic64(Self.participantsOffset + i * Self.slotBytes + 24)
    }

    /// Takes a free slot for this process (`pid`, its start time, its user).
    func claimSlot(pid: Int32, startTime: UInt64) -> Int? {
        for i in 0..<Self.participantSlots {
            if unsafe slotState(i).pointee.compareExchange(expected: SlotState.free.rawValue, desired: SlotState.reclaiming.rawValue,
                                                            ordering: .acquiring).exchanged {
                let slotBase = Self.participantsOffset + i * Self.slotBytes
                setWord(slotBase + 8, startTime)
                unsafe slotReclaimer(i).pointee.store(0, ordering: .relaxed)
                unsafe base.storeBytes(of: Sys.effectiveUserID, toByteOffset: slotBase + 16, as: UInt32.self)
                unsafe slotPID(i).pointee.store(pid, ordering: .relaxed)
                unsafe slotState(i).pointee.store(SlotState.attached.rawValue, ordering: .releasing)
                return i
            }
        }
        return nil
    }

    /// Frees a slot (its process detached, or was reclaimed).
    func releaseSlot(_ i: Int) {
        unsafe slotPID(i).pointee.store(0, ordering: .relaxed)
        unsafe slotReclaimer(i).pointee.store(0, ordering: .relaxed)
        unsafe slotState(i).pointee.store(SlotState.free.rawValue, ordering: .releasing)
    }

    /// Claims a dead process's slot for reclaiming it, by the reclaimer
    /// `me` (``reclaimerWord(pid:startTime:)``): only one process wins. A
    /// slot another reclaimer claimed is taken over only when
    /// `reclaimerGone` says that one died (its reclaim is then run again:
    /// every step of it can be).
    func beginReclaim(_ p: Participant, by me: UInt64, reclaimerGone: (UInt64) -> Bool) -> Bool {
        guard unsafe slotPID(p.slot).pointee.load(ordering: .relaxed) == p.pid else { return false }
        let word = unsafe slotReclaimer(p.slot)
        let current = unsafe word.pointee.load(ordering: .acquiring)
        guard current != me else { return false }
        guard current == 0 || reclaimerGone(current) else { return false }
        guard unsafe word.pointee.compareExchange(expected: current, desired: me, ordering: .acquiringAndReleasing).exchanged,
              unsafe slotPID(p.slot).pointee.load(ordering: .relaxed) == p.pid
        else { return false }
        unsafe slotState(p.slot).pointee.store(SlotState.reclaiming.rawValue, ordering: .releasing)
        return true
    }

    /// Every attached (or being reclaimed) process.
    var participants: [Participant] {
        var result: [Participant] = []
        for i in 0..<Self.participantSlots {
            let state = unsafe slotState(i).pointee.load(ordering: .acquiring)
            guard state != SlotState.free.rawValue else { continue }
            let pid = unsafe slotPID(i).pointee.load(ordering: .relaxed)
            guard pid > 0 else { continue }
            let slotBase = Self.participantsOffset + i * Self.slotBytes
            result.append(Participant(slot: i, pid: pid, startTime: word(slotBase + 8),
                                      uid: unsafe base.load(fromByteOffset: slotBase + 16, as: UInt32.self),
                                      reclaiming: state == SlotState.reclaiming.rawValue,
                                      reclaimer: unsafe slotReclaimer(i).pointee.load(ordering: .acquiring)))
        }
        return result
    }
}

/// One process's view of a shared segment: the memfd and its mapping at the
/// segment's address. Noncopyable: unmapped and closed exactly once.
@safe
struct SharedSegment: ~Copyable, @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    let length: Int
    let fd: FileDescriptor
    let pageSize: PageSize
    /// Per page of the whole segment, its physical address (nil when the
    /// kernel hides physical addresses from this process).
    let translation: PhysicalTranslation?

    var header: SharedSegmentHeader { unsafe SharedSegmentHeader(base: base) }
    var address: UInt { UInt(bitPattern: unsafe base) }

    init(base: UnsafeMutableRawPointer, length: Int, fd: FileDescriptor, pageSize: PageSize, translation: PhysicalTranslation?) {
        unsafe self.base = base
        self.length = length
        self.fd = fd
        self.pageSize = pageSize
        self.translation = translation
    }

    deinit {
        SharedAddressSpace.release(address: address, length: length)
        Sys.close(fd)
    }

    /// The data area as pool memory, with its physical addresses.
    var dataMemory: MempoolMemory {
        let h = header
        let offset = h.dataOffset
        let translation = self.translation
        return unsafe MempoolMemory(base: base + offset, length: h.dataLength, pageSize: pageSize,
                                    physicalAddress: { translation?.physicalAddress(atOffset: offset + $0) })
    }

    var control: UnsafeMutableRawPointer { unsafe base + header.controlOffset }
}
