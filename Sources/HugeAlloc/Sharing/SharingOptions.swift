#if canImport(Glibc)
import Glibc
#endif

/// Where shared objects meet and who may attach to them.
public struct SharingOptions: Sendable, Equatable {
    /// The directory under which each published name gets its rendezvous
    /// directory (`<runtimeDirectory>/<name>/`). Every process of one
    /// sharing group must use the same one. Default:
    /// ``defaultRuntimeDirectory``.
    public var runtimeDirectory: String
    /// Users besides the publisher's own (and root) that may attach. The
    /// sockets are then opened to everyone (mode 0666) and each
    /// connection's credentials (`SO_PEERCRED`) decide; with no extra
    /// users or group the directory is mode 0700 and only the owner and
    /// root can reach it at all.
    public var allowedUsers: Set<UInt32>
    /// A group whose members may attach (directory mode 0750, sockets 0660,
    /// owned by this group); checked by credentials too.
    public var allowedGroup: UInt32?
    /// Where the publisher places the object's memory (a multiple of
    /// 1 GiB); nil chooses a free range at or above
    /// ``defaultBaseAddress``. Attachers always map at the publisher's
    /// address.
    public var baseAddress: UInt?
    /// How many per-thread caches all processes together may hold on a
    /// shared pool (a thread beyond them works uncached).
    public var threadRecords: Int
    /// How long an attach waits for the publisher's answer, in milliseconds.
    public var timeoutMilliseconds: Int32

    public init(
        runtimeDirectory: String = SharingOptions.defaultRuntimeDirectory,
        allowedUsers: Set<UInt32> = [], allowedGroup: UInt32? = nil, baseAddress: UInt? = nil,
        threadRecords: Int = 128, timeoutMilliseconds: Int32 = 5000
    ) {
        self.runtimeDirectory = runtimeDirectory
        self.allowedUsers = allowedUsers
        self.allowedGroup = allowedGroup
        self.baseAddress = baseAddress
        self.threadRecords = threadRecords
        self.timeoutMilliseconds = timeoutMilliseconds
    }

    /// `$HUGEALLOC_RUNTIME_DIR` when set, else `/run/hugealloc` (root) or
    /// `$XDG_RUNTIME_DIR/hugealloc` (other users, when set).
    public static var defaultRuntimeDirectory: String {
        if let value = unsafe getenv("HUGEALLOC_RUNTIME_DIR"), unsafe value.pointee != 0 { return unsafe String(cString: value) }
        if Sys.effectiveUserID != 0, let value = unsafe getenv("XDG_RUNTIME_DIR"), unsafe value.pointee != 0 {
            return unsafe String(cString: value) + "/hugealloc"
        }
        return "/run/hugealloc"
    }

    /// The lowest address a publisher places memory at unless told
    /// otherwise: 32 TiB, far below where Linux places shared libraries,
    /// thread stacks and `mmap(2)` results (top-down from 128 TiB) and
    /// above executables and the brk heap; `$HUGEALLOC_BASE_ADDRESS`
    /// (hexadecimal) overrides it.
    public static var defaultBaseAddress: UInt {
        if let value = unsafe getenv("HUGEALLOC_BASE_ADDRESS") {
            var text = unsafe String(cString: value)
            if text.hasPrefix("0x") { text.removeFirst(2) }
            if let address = UInt(text, radix: 16), address > 0 { return address }
        }
        return 0x2000_0000_0000
    }

    /// The rendezvous directory's mode: only the owner, unless others are
    /// let in; then they may add their own sockets (to hand the object on)
    /// but not remove anyone else's (the sticky bit, as on /tmp).
    var directoryMode: UInt32 {
        if !allowedUsers.isEmpty { return 0o1777 }
        return allowedGroup == nil ? 0o700 : 0o1770
    }

}
