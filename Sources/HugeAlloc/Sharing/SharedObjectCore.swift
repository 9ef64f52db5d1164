import Synchronization
import SystemPackage

/// What a surviving process recovered from one that died.
public struct SharedReclaim: Sendable, Equatable {
    /// The process that died.
    public var pid: Int32
    /// Objects that were in its threads' caches.
    public var cachedObjects: Int
    /// Objects it held (checked mode only; 0 otherwise); for a
    /// ``SharedHeap``, its blocks.
    public var heldObjects: Int
    /// Bytes of the blocks it held (a ``SharedHeap`` in checked mode; 0 otherwise).
    public var heldBytes: Int = 0
}

/// One process attached to a shared object, as the object's table records it.
public struct SharedParticipant: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    /// Whether the process still runs (the same process: its start time matches).
    public var isAlive: Bool
}

/// The machinery every kind of shared object uses in one process: the
/// segment mapped at its address, this process's slot in the participant
/// table, its rendezvous socket, and one thread that hands the memfd on to
/// newcomers and watches every other participant with a pidfd
/// (`pidfd_open(2)`, `poll(2)`), reclaiming what a dead one held.
final class SharedObjectCore: @unchecked Sendable {
    let rendezvous: SharedRendezvous
    let options: SharingOptions
    let kind: SharedObjectKind
    let segment: SharedSegment
    let slot: Int
    let pid: Int32
    /// This process as a reclaimer, as it records itself in a dead
    /// participant's slot (pid and start time, read once).
    let reclaimerWord: UInt64
    /// nil for an observer (``attach(kind:name:options:observer:)``).
    private let listener: FileDescriptor?
    private let wake: (read: FileDescriptor, write: FileDescriptor)
    private let thread = Mutex<Sys.ThreadHandle?>(nil)
    /// Returns to the object what a dead process held.
    private let reclaimHook = Mutex<(@Sendable (Int32) -> (cached: Int, held: Int))?>(nil)
    private let reclaims = Mutex<[SharedReclaim]>([])
    private let closed = Atomic<Bool>(false)

    var header: SharedSegmentHeader { segment.header }
    var name: String { rendezvous.name }

    private init(rendezvous: SharedRendezvous, options: SharingOptions, kind: SharedObjectKind,
                 segment: consuming SharedSegment, slot: Int, startTime: UInt64, listener: FileDescriptor?,
                 wake: (read: FileDescriptor, write: FileDescriptor)) {
        self.rendezvous = rendezvous
        self.options = options
        self.kind = kind
        self.segment = segment
        self.slot = slot
        self.pid = Sys.processID
        self.reclaimerWord = SharedSegmentHeader.reclaimerWord(pid: pid, startTime: startTime)
        self.listener = listener
        self.wake = wake
        if listener != nil { Self.noteLive(self) }
    }

    // MARK: process exit

    /// The cores of this process, for the exit handler.
    private static let live = Mutex<[ObjectIdentifier: Weak]>([:])
    private static let exitHandlerInstalled = Atomic<Bool>(false)

    private struct Weak: @unchecked Sendable { weak var core: SharedObjectCore? }

    private static func noteLive(_ core: SharedObjectCore) {
        live.withLock { $0[ObjectIdentifier(core)] = Weak(core: core) }
        if !exitHandlerInstalled.exchange(true, ordering: .relaxed) {
            Sys.onExit { SharedObjectCore.leaveAllAtExit() }
        }
    }

    /// A process that exits with objects still shared (`exit(3)` without
    /// releasing them) removes its socket, and the rendezvous when it is the
    /// last; its slot stays for a survivor's watcher to reclaim what its
    /// caches held, as for a process that died.
    private static func leaveAllAtExit() {
        let cores = live.withLock { $0.values.compactMap(\.core) }
        for core in cores where !core.closed.exchange(true, ordering: .acquiringAndReleasing) {
            Sys.wake(core.wake.write)
            core.leaveRendezvous()
        }
    }

    deinit { close() }

    // MARK: publishing and attaching

    /// The layout of a new segment: header, control area, data pages.
    static func layout(controlLength: Int, dataLength: Int, pageBytes: Int) -> (controlOffset: Int, dataOffset: Int, length: Int) {
        let controlOffset = (SharedSegmentHeader.bytes + 4095) / 4096 * 4096
        let dataOffset = (controlOffset + controlLength + pageBytes - 1) / pageBytes * pageBytes
        let length = dataOffset + (dataLength + pageBytes - 1) / pageBytes * pageBytes
        return (controlOffset, dataOffset, length)
    }

    /// Creates the segment (a hugetlb memfd mapped at a free shared address,
    /// populated, placed by `mapping`'s NUMA policy, translated), its
    /// rendezvous and this process's slot.
    static func publish(
        kind: SharedObjectKind, name: String, options: SharingOptions, mapping: MappingOptions,
        controlLength: Int, dataLength: Int, facts: SharedSegmentFacts
    ) throws(SharingError) -> SharedObjectCore {
        let rendezvous = try SharedRendezvous(name: name, options: options)
        guard options.allowedUsers.count <= SharedSegmentHeader.maximumAllowedUsers else {
            throw .notShareable(reason: "\(options.allowedUsers.count) allowed users, at most \(SharedSegmentHeader.maximumAllowedUsers); let a group in with SharingOptions.allowedGroup instead")
        }
        let pageBytes = mapping.pageSize.bytes
        let (controlOffset, dataOffset, length) = layout(controlLength: controlLength, dataLength: dataLength, pageBytes: pageBytes)
        try rendezvous.create(options: options)
        var madeDirectory = true
        defer { if madeDirectory { rendezvous.removeStale() } }

        let address = try SharedAddressSpace.reserve(length: length, options: options,
                                                     taken: SharedRendezvous.rangesInUse(runtimeDirectory: options.runtimeDirectory))
        var mappingOptions = mapping
        mappingOptions.backing = .memfd
        mappingOptions.pageSizePolicy = .exact
        mappingOptions.dontFork = true
        mappingOptions.fixedAddress = address
        let made: MemoryMapping
        do {
            made = try MemoryMapping(length: length, options: mappingOptions)
        } catch {
            SharedAddressSpace.release(address: address, length: length)
            throw .mapping(error)
        }
        let translation = made.translation
        let pageSize = made.pageSize
        let parts = unsafe made.relinquish()
        let segment = unsafe SharedSegment(base: parts.base, length: length, fd: FileDescriptor(rawValue: parts.fd),
                                           pageSize: pageSize, translation: translation)
        let header = segment.header
        header.initialize(kind: kind, name: name, address: address, length: length, pageBytes: pageBytes,
                          controlOffset: controlOffset, controlLength: controlLength, dataOffset: dataOffset,
                          dataLength: dataLength, facts: facts, access: (options.allowedUsers, options.allowedGroup))
        let me = Sys.processID, start = processStartTime(me) ?? 0
        guard let slot = header.claimSlot(pid: me, startTime: start) else {
            throw .tooManyProcesses(name: name, maximum: SharedSegmentHeader.participantSlots)
        }
        try rendezvous.writeSegmentRecord(.init(kind: kind, address: address, length: length, creator: me), options: options)
        let listener = try rendezvous.listen(pid: me, access: header.access)
        let wake: (read: FileDescriptor, write: FileDescriptor)
        do { wake = try Sys.wakePipe() } catch {
            Sys.close(listener)
            throw .systemCall(error)
        }
        madeDirectory = false
        return SharedObjectCore(rendezvous: rendezvous, options: options, kind: kind, segment: segment, slot: slot,
                                startTime: start, listener: listener, wake: wake)
    }

    /// Attaches to the object published as `name`: asks any live
    /// participant for the memfd, maps it at the publisher's address
    /// (`MAP_FIXED_NOREPLACE`), checks the header, takes a slot and a socket.
    /// An observer (`inspect-memory pools`) only maps and reads: no slot,
    /// no socket, no thread, and nothing to reclaim when it goes.
    static func attach(kind: SharedObjectKind, name: String, options: SharingOptions, observer: Bool = false) throws(SharingError) -> SharedObjectCore {
        let rendezvous = try SharedRendezvous(name: name, options: options)
        guard Sys.fileExists(atPath: rendezvous.directory) else {
            if Sys.fileExists(atPath: options.runtimeDirectory), (try? Sys.directoryEntries(atPath: options.runtimeDirectory)) == nil {
                throw .permissionDenied(name: name, path: options.runtimeDirectory, uid: Sys.effectiveUserID,
                                        reason: "the runtime directory cannot be read")
            }
            throw .notPublished(name: name, path: rendezvous.directory, staleEntries: 0)
        }
        if (try? Sys.directoryEntries(atPath: rendezvous.directory)) == nil {
            throw .permissionDenied(name: name, path: rendezvous.directory, uid: Sys.effectiveUserID,
                                    reason: "the rendezvous directory's permissions do not let this user in")
        }
        var grant: SharedProtocol.Grant? = nil
        var stale = 0
        for candidate in rendezvous.socketPIDs where grant == nil {
            if let g = try SharedProtocol.requestAttach(rendezvous, pid: candidate, timeout: options.timeoutMilliseconds) {
                grant = g
            } else {
                stale += 1
            }
        }
        guard let grant else { throw .notPublished(name: name, path: rendezvous.directory, staleEntries: stale) }
        guard let published = SharedObjectKind(rawValue: grant.kind) else {
            Sys.close(grant.fd)
            throw .incompatible(name: name, reason: "unknown kind \(grant.kind)")
        }
        guard published == kind else {
            Sys.close(grant.fd)
            throw .kindMismatch(name: name, published: "\(published)", requested: "\(kind)")
        }
        let base: UnsafeMutableRawPointer
        // Inside this process's early claim the range is its own: map over it.
        let claimed = SharedAddressSpace.useClaimed(address: grant.address, length: grant.length)
        do {
            unsafe base = try unsafe Sys.mapShared(grant.fd, length: grant.length, at: grant.address, replacing: claimed)
        } catch {
            if claimed { SharedAddressSpace.release(address: grant.address, length: grant.length) }
            Sys.close(grant.fd)
            if error.errno == .fileExists {
                throw .addressRangeOccupied(
                    name: name, address: grant.address, length: grant.length,
                    occupants: SharedAddressSpace.occupants(of: grant.address, length: grant.length),
                    advice: "attach before this process maps that range (early at start-up), or have the publisher place it elsewhere with SharingOptions.baseAddress or HUGEALLOC_BASE_ADDRESS")
            }
            throw .systemCall(error)
        }
        guard let pageSize = PageSize(rawValue: grant.pageBytes) else {
            SharedAddressSpace.release(address: grant.address, length: grant.length)
            Sys.close(grant.fd)
            throw .incompatible(name: name, reason: "page size \(grant.pageBytes)")
        }
        var translation: PhysicalTranslation? = nil
        if let reader = try? PagemapReader() {
            translation = try? PhysicalTranslation.read(address: grant.address, length: grant.length, pageSize: grant.pageBytes, reader: reader)
        }
        let segment = unsafe SharedSegment(base: base, length: grant.length, fd: grant.fd, pageSize: pageSize, translation: translation)
        let header = segment.header
        guard header.isReady, header.version == SharedSegmentHeader.version, header.kindValue == kind.rawValue,
              header.length == grant.length, header.address == grant.address else {
            throw .incompatible(name: name, reason: "segment header version \(header.version), kind \(header.kindValue)")
        }
        let me = Sys.processID, start = processStartTime(me) ?? 0
        if observer {
            let wake: (read: FileDescriptor, write: FileDescriptor)
            do { wake = try Sys.wakePipe() } catch { throw .systemCall(error) }
            return SharedObjectCore(rendezvous: rendezvous, options: options, kind: kind, segment: segment, slot: -1,
                                    startTime: start, listener: nil, wake: wake)
        }
        guard let slot = header.claimSlot(pid: me, startTime: start) else {
            throw .tooManyProcesses(name: name, maximum: SharedSegmentHeader.participantSlots)
        }
        header.noteAttach()
        let listener: FileDescriptor
        do {
            listener = try rendezvous.listen(pid: me, access: header.access)
        } catch {
            header.releaseSlot(slot)
            throw error
        }
        let wake: (read: FileDescriptor, write: FileDescriptor)
        do { wake = try Sys.wakePipe() } catch {
            header.releaseSlot(slot)
            Sys.close(listener)
            throw .systemCall(error)
        }
        return SharedObjectCore(rendezvous: rendezvous, options: options, kind: kind, segment: segment, slot: slot,
                                startTime: start, listener: listener, wake: wake)
    }

    // MARK: the thread

    /// Starts handing the segment on and watching the other participants;
    /// `reclaim` returns what a dead process held.
    func start(reclaim: @escaping @Sendable (Int32) -> (cached: Int, held: Int)) throws(SharingError) {
        reclaimHook.withLock { $0 = reclaim }
        do {
            let handle = try Sys.startThread { [self] in run() }
            thread.withLock { $0 = handle }
        } catch { throw .systemCall(error) }
    }

    /// Stops the thread, removes this process's socket and slot, and the
    /// rendezvous when no other process is attached. The owner of the pool
    /// structures has flushed this process's caches before.
    func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Self.live.withLock { $0[ObjectIdentifier(self)] = nil }
        Sys.wake(wake.write)
        if let handle = thread.withLock({ $0 }) { Sys.joinThread(handle) }
        Sys.close(wake.read)
        Sys.close(wake.write)
        guard let listener else { return }
        Sys.close(listener)
        header.releaseSlot(slot)
        leaveRendezvous()
    }

    /// Removes this process's socket, and the rendezvous when no other
    /// attached process is alive.
    private func leaveRendezvous() {
        let others = header.participants.filter { $0.pid != pid && isAlive($0) }
        rendezvous.leave(pid: pid, last: others.isEmpty)
    }

    private func run() {
        guard let listener else { return }
        var watched: [Int32: FileDescriptor] = [:]
        defer { for fd in watched.values { Sys.close(fd) } }
        while !closed.load(ordering: .acquiring) {
            // One read of the table serves both steps: the second skips the
            // slots the first looks at (those being reclaimed).
            let table = header.participants
            // A reclaim whose reclaimer died part way is taken over.
            for p in table where p.reclaiming && p.reclaimer != 0 && Self.reclaimerGone(p.reclaimer) { reclaimIfDead(p) }
            // Watch every other participant; one that is already gone is reclaimed now.
            let current = table.filter { $0.pid != pid && !$0.reclaiming }
            for p in current where watched[p.pid] == nil {
                if let fd = try? Sys.pidfdOpen(p.pid), isAlive(p) {
                    watched[p.pid] = fd
                } else {
                    reclaimIfDead(p)
                }
            }
            for (watchedPID, fd) in watched where !current.contains(where: { $0.pid == watchedPID }) {
                Sys.close(fd)
                watched[watchedPID] = nil
            }
            let pids = Array(watched.keys)
            let fds = [listener, wake.read] + pids.map { watched[$0]! }
            guard let ready = try? Sys.pollReadable(fds, milliseconds: 500) else { continue }
            if ready[1] { break }
            if ready[0] { serveOne() }
            for (i, deadPID) in pids.enumerated() where ready[i + 2] {
                Sys.close(watched[deadPID]!)
                watched[deadPID] = nil
                for p in header.participants where p.pid == deadPID { reclaimIfDead(p) }
            }
        }
    }

    /// Answers one connection: the memfd to an admitted peer, a refusal to anyone else.
    private func serveOne() {
        guard let listener, let connection = try? Sys.accept(listener) else { return }
        defer { Sys.close(connection) }
        _ = try? Sys.setTimeouts(connection, milliseconds: 1000)
        guard let request = try? Sys.receive(connection, capacity: 64) else { return }
        for d in request.descriptors { Sys.close(FileDescriptor(rawValue: d)) }
        let words = SharedProtocol.decode(request.bytes)
        guard words.count >= 2, words[0] == SharedProtocol.requestMagic, words[1] == SharedProtocol.Operation.attach.rawValue,
              let peer = try? Sys.peerCredentials(connection) else { return }
        guard header.admits(peer) else {
            _ = try? Sys.send(connection, SharedProtocol.encode([SharedProtocol.replyMagic, SharedProtocol.Status.denied.rawValue]))
            return
        }
        let h = header
        _ = try? Sys.send(connection, SharedProtocol.encode([
            SharedProtocol.replyMagic, SharedProtocol.Status.ok.rawValue, UInt64(kind.rawValue),
            UInt64(h.address), UInt64(h.length), UInt64(h.pageBytes),
        ]), descriptors: [segment.fd.rawValue])
    }

    // MARK: death

    /// Whether the participant's process still runs: it exists and started
    /// when the slot was taken (so a reused pid is not mistaken for it).
    func isAlive(_ p: SharedSegmentHeader.Participant) -> Bool {
        guard Sys.processExists(p.pid) else { return false }
        guard p.startTime != 0, let now = Self.processStartTime(p.pid) else { return true }
        return now == p.startTime
    }

    /// Whether the reclaimer a slot names is gone (died, or its pid now
    /// belongs to a process that started later).
    static func reclaimerGone(_ word: UInt64) -> Bool {
        let rpid = Int32(bitPattern: UInt32(truncatingIfNeeded: word))
        guard Sys.processExists(rpid), let start = processStartTime(rpid) else { return true }
        return start & 0xFFFF_FFFF != word >> 32
    }

    /// Reclaims a participant that is gone; only one process does it, and
    /// when that one dies part way, the next to look takes it over and runs
    /// the reclaim again (each step of it can run twice).
    @discardableResult
    func reclaimIfDead(_ p: SharedSegmentHeader.Participant) -> SharedReclaim? {
        guard p.pid != pid, !isAlive(p), header.beginReclaim(p, by: reclaimerWord, reclaimerGone: Self.reclaimerGone) else { return nil }
        let recovered: (cached: Int, held: Int) = reclaimHook.withLock { $0 }?(p.pid) ?? (cached: 0, held: 0)
        header.noteReclaim(cached: recovered.cached, held: recovered.held)
        header.releaseSlot(p.slot)
        try? Sys.unlink(rendezvous.socketPath(p.pid))
        let record = SharedReclaim(pid: p.pid, cachedObjects: recovered.cached, heldObjects: recovered.held)
        reclaims.withLock { $0.append(record) }
        return record
    }

    /// Reclaims every dead participant now, and returns every reclaim this
    /// process made since the last call (the thread's too).
    func reclaimNow() -> [SharedReclaim] {
        for p in header.participants { reclaimIfDead(p) }
        return reclaims.withLock { r in
            defer { r.removeAll() }
            return r
        }
    }

    var participants: [SharedParticipant] {
        header.participants.map { SharedParticipant(pid: $0.pid, uid: $0.uid, isAlive: isAlive($0)) }
    }

    /// A process's start time in clock ticks since boot (`/proc/PID/stat`, field 22).
    static func processStartTime(_ pid: Int32) -> UInt64? {
        guard let text = KernelFiles.live.textIfReadable("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command: field 3 (state) is fields[0], so field 22 is fields[19].
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }
}
