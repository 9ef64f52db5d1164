/// Why a NUMA placement request failed, with what to do about it.
public enum NUMAError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A policy named a node this process cannot allocate on (not online,
    /// or outside its cpuset).
    case noSuchNode(UnknownNode)
    /// `interleave` with an empty node list.
    case emptyNodeList
    /// An address not aligned to the base page, a length of zero or a page
    /// size that is not a power of two.
    case invalidRange(String)
    /// Pages landed outside the nodes the policy allows. `firstPage` is the
    /// index of the first misplaced page and `foundNode` its node.
    case misplaced(policy: NUMAPolicy, firstPage: Int, foundNode: Int, misplacedPages: Int, totalPages: Int)
    /// A page has not been faulted in, so it has no node yet.
    case pageNotPresent(page: Int)
    /// The node has fewer free hugepages of this size than needed.
    case notEnoughHugepages(HugepageShortage)
    /// The node has no pool of this hugepage size (the kernel does not
    /// support the size, or the node does not exist).
    case noHugepagePool(node: Int, pageSize: PageSize, path: String)
    /// The kernel holds a policy for the range that ``NUMAPolicy`` has no
    /// case for (for example `MPOL_BIND` over several nodes).
    case unexpressiblePolicy(mode: Int, nodes: [Int])
    /// A system call failed for a reason not explained above.
    case systemCall(SystemCallError)

    public var description: String {
        switch self {
        case .noSuchNode(let unknown):
            return unknown.description
        case .emptyNodeList:
            return "interleave needs at least one NUMA node"
        case .invalidRange(let what):
            return "invalid range for NUMA placement: \(what)"
        case .misplaced(let policy, let first, let found, let count, let total):
            return "NUMA policy \(policy) not honoured: \(count) of \(total) pages are elsewhere (page \(first) is on node \(found))"
        case .pageNotPresent(let page):
            return "page \(page) is not faulted in, so it has no NUMA node yet; touch the memory before asking where it is"
        case .notEnoughHugepages(let shortage):
            return shortage.description
        case .noHugepagePool(let node, let size, let path):
            return "NUMA node \(node) has no \(size) hugepage pool (\(path) is missing); check that the node exists and the kernel supports \(size) pages"
        case .unexpressiblePolicy(let mode, let nodes):
            return "the kernel reports memory policy mode \(mode) over nodes \(nodes), which NUMAPolicy cannot express"
        case .systemCall(let error):
            return error.description
        }
    }
}
