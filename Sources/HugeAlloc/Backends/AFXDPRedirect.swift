import SystemPackage

/// An XDP program attached to an interface that redirects every frame to
/// the AF_XDP socket registered for its receive queue: an XSKMAP
/// (`bpf(BPF_MAP_CREATE)`), a five-instruction program calling
/// `bpf_redirect_map` (`bpf(BPF_PROG_LOAD)`, frames pass on to the stack
/// when the queue has no socket), attached with a BPF link
/// (`bpf(BPF_LINK_CREATE)`, `BPF_XDP`). No libbpf.
///
/// Noncopyable: destroying it closes the link (detaching the program), the
/// program and the map.
public struct XDPRedirect: ~Copyable {
    let map: FileDescriptor
    let program: FileDescriptor
    let link: FileDescriptor
    public let interfaceIndex: UInt32

    /// Loads the program for up to `queues` receive queues and attaches it
    /// to interface `interfaceIndex`; `genericMode` selects generic (SKB)
    /// XDP, which every driver supports.
    public init(interfaceIndex: UInt32, queues: Int = 1, genericMode: Bool = true) throws(AFXDPError) {
        let map: FileDescriptor
        do { map = try Sys.xskMapCreate(entries: UInt32(max(1, queues))) } catch { throw AFXDPError(error) }
        let program: FileDescriptor
        do { program = try Sys.xdpRedirectProgram(map: map) } catch {
            Sys.close(map)
            throw AFXDPError(error)
        }
        do {
            link = try Sys.xdpAttach(program: program, interfaceIndex: interfaceIndex, genericMode: genericMode)
        } catch {
            Sys.close(program)
            Sys.close(map)
            throw AFXDPError(error)
        }
        self.map = map
        self.program = program
        self.interfaceIndex = interfaceIndex
    }

    deinit {
        Sys.close(link)
        Sys.close(program)
        Sys.close(map)
    }

    /// Sends frames of receive queue `queue` to `socket` (bound to that queue).
    public func redirect(queue: UInt32, to socket: borrowing AFXDPSocket) throws(AFXDPError) {
        do { try Sys.xskMapSet(map, key: queue, socket: socket.fileDescriptor) } catch { throw AFXDPError(error) }
    }
}
