// TEMPORARY: replaced by the NUMA layer's real files when that branch merges.
public enum NUMAPolicy: Sendable, Equatable { case any; case local; case bind(Int); case preferred(Int); case interleave([Int]) }
public enum NUMAError: Error, Equatable, Sendable { case notMerged }
public enum NUMAPlacement {
    public static func apply(_ policy: NUMAPolicy, to address: UnsafeMutableRawPointer, length: Int) throws(NUMAError) {
        if policy != .any { throw .notMerged }
    }
    public static func nodes(of address: UnsafeMutableRawPointer, length: Int, pageSize: Int) throws(NUMAError) -> [Int] { throw .notMerged }
    public static func verify(_ policy: NUMAPolicy, nodes: [Int]) throws(NUMAError) {}
}
