/// Where the pages of a mapping may come from.
///
/// A policy is set on a reserved range before its pages fault in
/// (``NUMAPlacement/apply(_:to:length:)``, `mbind(2)`), and checked after
/// (``NUMAPlacement/nodes(of:length:pageSize:)`` and
/// ``NUMAPlacement/verify(_:nodes:)``).
public enum NUMAPolicy: Sendable, Equatable, CustomStringConvertible {
    /// No policy: the thread's policy applies (usually the faulting CPU's
    /// node, falling back to any node). No system call is made.
    case any
    /// The node of the CPU that faults each page in (`MPOL_LOCAL`); falls
    /// back to other nodes when that node is out of memory.
    case local
    /// Only this node (`MPOL_BIND`). A hugepage fault with no free page
    /// there fails (SIGBUS) instead of spilling to another node.
    case bind(Int)
    /// This node first, others when it is full (`MPOL_PREFERRED`).
    case preferred(Int)
    /// Pages spread round-robin over these nodes (`MPOL_INTERLEAVE`).
    case interleave([Int])

    /// The nodes the policy names (empty for `.any` and `.local`).
    public var nodes: [Int] {
        switch self {
        case .any, .local: []
        case .bind(let node), .preferred(let node): [node]
        case .interleave(let nodes): nodes
        }
    }

    public var description: String {
        switch self {
        case .any: "any"
        case .local: "local"
        case .bind(let node): "bind(\(node))"
        case .preferred(let node): "preferred(\(node))"
        case .interleave(let nodes): "interleave(\(nodes.map(String.init).joined(separator: ",")))"
        }
    }
}
