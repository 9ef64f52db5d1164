import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// A refusal for want of privilege names the capability and the fix (hostile-inputs #16).
@Suite(.usesHugepagePool) struct AFXDPCapabilityTests {
    /// CAP_NET_RAW in linux/capability.h.
    static let capNetRaw: Int32 = 13

    @Test(.enabled(if: canMakePools && canOpenAFXDP, "needs root, free 2 MiB hugepages and AF_XDP sockets"))
    func socketWithoutCapNetRawNamesTheCapability() throws {
        let pool = try PacketPool(configuration: .afXDP(count: 512, chunkSize: 2048))
        // Capabilities are per thread: drop CAP_NET_RAW from this thread's
        // effective set for the one call, and take it back at once.
        let was = try Sys.setThreadCapability(Self.capNetRaw, effective: false)
        let error: AFXDPError?
        do {
            _ = try AFXDPSocket(umemOf: pool)
            error = nil
        } catch let e {
            error = e
        }
        _ = try Sys.setThreadCapability(Self.capNetRaw, effective: was)
        guard case .missingCapability(let call, let capabilities, let underlying)? = error else {
            Issue.record("expected missingCapability, got \(String(describing: error))")
            return
        }
        #expect(call == "socket" && capabilities == ["CAP_NET_RAW"] && underlying.errno == .notPermitted)
        let message = try #require(error).description
        #expect(message.contains("CAP_NET_RAW") && message.contains("setcap cap_net_raw+ep"))
        // With the capability back, the same call works: the refusal was the capability's.
        _ = try AFXDPSocket(umemOf: pool)
        #expect(pool.availableCount == pool.count)
    }

    @Test func onlyPrivilegeRefusalsNameACapability() {
        let eperm = SystemCallError(call: "socket", errno: .notPermitted, detail: "AF_XDP, SOCK_RAW")
        guard case .missingCapability(_, ["CAP_NET_RAW"], _) = AFXDPError(eperm) else { Issue.record("socket EPERM"); return }
        let bpf = SystemCallError(call: "bpf", errno: .permissionDenied, detail: "BPF_PROG_LOAD XDP")
        guard case .missingCapability(_, ["CAP_BPF", "CAP_NET_ADMIN"], _) = AFXDPError(bpf) else { Issue.record("bpf EACCES"); return }
        let other = SystemCallError(call: "socket", errno: .addressFamilyNotSupported)
        #expect(AFXDPError(other) == .systemCall(other))
        let bind = SystemCallError(call: "bind", errno: .notPermitted)
        #expect(AFXDPError(bind) == .systemCall(bind))
    }
}
