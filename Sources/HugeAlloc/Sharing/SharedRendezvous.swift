import SystemPackage

/// The rendezvous of one published name: a directory
/// `<runtime directory>/<name>/` holding a `segment` file (kind, address,
/// length: what a new publisher must keep clear of, what `inspect-memory
/// pools` lists) and one `SOCK_SEQPACKET` socket per attached process,
/// `<pid>.sock`. Any of them hands the memfd on (`SCM_RIGHTS`), so the
/// creator's exit does not end sharing.
///
/// The directory's and sockets' modes keep other users out unless
/// ``SharingOptions`` lets them in; each connection's credentials
/// (`SO_PEERCRED`) are checked as well. Nothing about a connection is logged.
struct SharedRendezvous: Sendable {
    let name: String
    let directory: String

    static let socketSuffix = ".sock"
    static let segmentFile = "segment"

    init(name: String, options: SharingOptions) throws(SharingError) {
        try Self.validate(name)
        self.name = name
        directory = options.runtimeDirectory + "/" + name
    }

    static func validate(_ name: String) throws(SharingError) {
        guard !name.isEmpty, name.utf8.count <= 64 else { throw .invalidName(name, reason: "it has \(name.utf8.count) bytes") }
        guard name != ".", name != "..", !name.hasPrefix(".") else { throw .invalidName(name, reason: "it starts with '.'") }
        guard name.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "-_.".unicodeScalars.contains($0)) })
        else { throw .invalidName(name, reason: "it holds other characters") }
    }

    func socketPath(_ pid: Int32) -> String { directory + "/\(pid)" + Self.socketSuffix }
    var segmentPath: String { directory + "/" + Self.segmentFile }

    /// The processes with a socket here, by the socket files' names.
    var socketPIDs: [Int32] {
        guard let names = try? Sys.directoryEntries(atPath: directory) else { return [] }
        return names.compactMap { $0.hasSuffix(Self.socketSuffix) ? Int32($0.dropLast(Self.socketSuffix.count)) : nil }.sorted()
    }

    // MARK: the segment file

    struct SegmentRecord: Equatable, Sendable {
        var kind: SharedObjectKind
        var address: UInt
        var length: Int
        var creator: Int32

        var text: String { "kind=\(kind.rawValue) address=0x\(String(address, radix: 16)) length=\(length) creator=\(creator)\n" }

        init(kind: SharedObjectKind, address: UInt, length: Int, creator: Int32) {
            self.kind = kind
            self.address = address
            self.length = length
            self.creator = creator
        }

        init?(text: String) {
            var fields: [String: String] = [:]
            for part in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
                let pair = part.split(separator: "=", maxSplits: 1)
                if pair.count == 2 { fields[String(pair[0])] = String(pair[1]) }
            }
            guard let k = fields["kind"].flatMap({ UInt32($0) }).flatMap(SharedObjectKind.init(rawValue:)),
                  let a = fields["address"].flatMap({ UInt($0.dropFirst(2), radix: 16) }),
                  let l = fields["length"].flatMap({ Int($0) }), let c = fields["creator"].flatMap({ Int32($0) })
            else { return nil }
            self.init(kind: k, address: a, length: l, creator: c)
        }
    }

    var segmentRecord: SegmentRecord? {
        KernelFiles.live.textIfReadable(segmentPath).flatMap(SegmentRecord.init(text:))
    }

    /// The address ranges of every object published under `runtimeDirectory`.
    static func rangesInUse(runtimeDirectory: String) -> [ClosedRange<UInt>] {
        guard let names = try? Sys.directoryEntries(atPath: runtimeDirectory) else { return [] }
        return names.compactMap { name in
            KernelFiles.live.textIfReadable(runtimeDirectory + "/" + name + "/" + segmentFile)
                .flatMap(SegmentRecord.init(text:))
                .map { $0.address...($0.address + UInt($0.length) - 1) }
        }
    }

    // MARK: publishing

    /// Makes the directory for a new publication. A directory whose
    /// processes are all gone is stale and taken over; a live one is
    /// ``SharingError/nameInUse(name:path:pids:)``.
    func create(options: SharingOptions) throws(SharingError) {
        do {
            try Sys.makeDirectory(options.runtimeDirectory, mode: 0o755)
        } catch {
            if error.errno == .permissionDenied || error.errno == .readOnlyFileSystem {
                throw .permissionDenied(name: name, path: options.runtimeDirectory, uid: Sys.effectiveUserID,
                                        reason: "cannot create the runtime directory; set HUGEALLOC_RUNTIME_DIR to a directory this user may write")
            }
            throw .systemCall(error)
        }
        if Sys.fileExists(atPath: directory) {
            let live = socketPIDs.filter { Sys.processExists($0) && answers($0) }
            if !live.isEmpty { throw .nameInUse(name: name, path: directory, pids: live) }
            removeStale()
        }
        do {
            try Sys.makeDirectory(directory, mode: options.directoryMode)
            if let group = options.allowedGroup { try Sys.changeOwner(directory, uid: nil, gid: group) }
        } catch {
            if error.errno == .permissionDenied {
                throw .permissionDenied(name: name, path: directory, uid: Sys.effectiveUserID, reason: "cannot create the rendezvous directory")
            }
            throw .systemCall(error)
        }
    }

    func writeSegmentRecord(_ record: SegmentRecord, options: SharingOptions) throws(SharingError) {
        let mode: UInt32 = options.directoryMode == 0o700 ? 0o600 : 0o644
        do { try Sys.writeFileAtomically(segmentPath, record.text, mode: mode) } catch { throw .systemCall(error) }
    }

    /// Whether the process `pid`'s socket accepts a connection.
    func answers(_ pid: Int32) -> Bool {
        guard let fd = try? Sys.seqpacketSocket() else { return false }
        defer { Sys.close(fd) }
        return (try? Sys.connect(fd, to: socketPath(pid))) != nil
    }

    /// Removes every file of a rendezvous no process answers at, and the directory.
    func removeStale() {
        for entry in (try? Sys.directoryEntries(atPath: directory)) ?? [] { try? Sys.unlink(directory + "/" + entry) }
        try? Sys.removeDirectory(directory)
    }

    /// Removes this process's socket, and the whole directory when it was the last.
    func leave(pid: Int32, last: Bool) {
        try? Sys.unlink(socketPath(pid))
        if last {
            try? Sys.unlink(segmentPath)
            try? Sys.removeDirectory(directory)
        }
    }

    // MARK: listening

    /// Listens at this process's socket.
    func listen(pid: Int32, access: (users: Set<UInt32>, group: UInt32?)) throws(SharingError) -> FileDescriptor {
        let mode: UInt32 = !access.users.isEmpty ? 0o666 : (access.group == nil ? 0o600 : 0o660)
        let path = socketPath(pid)
        try? Sys.unlink(path)
        do throws(SystemCallError) {
            let fd = try Sys.seqpacketSocket()
            do throws(SystemCallError) {
                try Sys.listen(fd, at: path)
                try Sys.changeMode(path, mode: mode)
                if let group = access.group { try Sys.changeOwner(path, uid: nil, gid: group) }
            } catch {
                Sys.close(fd)
                throw error
            }
            return fd
        } catch {
            throw .systemCall(error)
        }
    }
}

/// The messages at a rendezvous socket: 64-bit little-endian words.
enum SharedProtocol {
    static let requestMagic: UInt64 = 0x3130_7165_7241_4148  // "HAreq01" + '1'
    static let replyMagic: UInt64 = 0x3130_7073_7241_4148

    enum Operation: UInt64 { case attach = 1 }
    enum Status: UInt64 { case ok = 0, denied = 1, closing = 2 }

    static func encode(_ words: [UInt64]) -> [UInt8] {
        words.flatMap { w in (0..<8).map { UInt8(truncatingIfNeeded: w >> (8 * $0)) } }
    }

    static func decode(_ bytes: [UInt8]) -> [UInt64] {
        stride(from: 0, to: bytes.count - bytes.count % 8, by: 8).map { i in
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[i + $1]) << (8 * $1) }
        }
    }

    /// What an attacher receives: the segment's place and its memfd.
    struct Grant {
        var kind: UInt32
        var address: UInt
        var length: Int
        var pageBytes: Int
        var fd: FileDescriptor
    }

    /// Asks the process behind `pid`'s socket for the segment.
    static func requestAttach(_ rendezvous: SharedRendezvous, pid: Int32, timeout: Int32) throws(SharingError) -> Grant? {
        let path = rendezvous.socketPath(pid)
        let fd: FileDescriptor
        do { fd = try Sys.seqpacketSocket() } catch { throw .systemCall(error) }
        defer { Sys.close(fd) }
        do {
            try Sys.connect(fd, to: path)
        } catch {
            if error.errno == .permissionDenied || error.errno == .notPermitted {
                throw .permissionDenied(name: rendezvous.name, path: path, uid: Sys.effectiveUserID,
                                        reason: "the socket's permissions do not let this user connect")
            }
            return nil  // refused or gone: a stale socket
        }
        let reply: (bytes: [UInt8], descriptors: [Int32])
        do {
            try Sys.setTimeouts(fd, milliseconds: timeout)
            try Sys.send(fd, encode([requestMagic, Operation.attach.rawValue]))
            reply = try Sys.receive(fd, capacity: 256)
        } catch {
            throw .protocolFailure(name: rendezvous.name, reason: "\(error)")
        }
        let words = decode(reply.bytes)
        guard words.count >= 2, words[0] == replyMagic else {
            for d in reply.descriptors { Sys.close(FileDescriptor(rawValue: d)) }
            if reply.bytes.isEmpty { return nil }  // closed while leaving
            throw .protocolFailure(name: rendezvous.name, reason: "an unexpected reply of \(reply.bytes.count) bytes")
        }
        switch Status(rawValue: words[1]) {
        case .ok:
            guard words.count >= 6, reply.descriptors.count == 1 else {
                for d in reply.descriptors { Sys.close(FileDescriptor(rawValue: d)) }
                throw .protocolFailure(name: rendezvous.name, reason: "a grant without its memory")
            }
            return Grant(kind: UInt32(truncatingIfNeeded: words[2]), address: UInt(words[3]), length: Int(words[4]),
                         pageBytes: Int(words[5]), fd: FileDescriptor(rawValue: reply.descriptors[0]))
        case .denied:
            throw .permissionDenied(name: rendezvous.name, path: path, uid: Sys.effectiveUserID,
                                    reason: "the publisher refused this user by its credentials (SO_PEERCRED)")
        case .closing, nil:
            for d in reply.descriptors { Sys.close(FileDescriptor(rawValue: d)) }
            return nil
        }
    }
}
