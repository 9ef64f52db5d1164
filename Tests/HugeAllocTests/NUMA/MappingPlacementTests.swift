import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// NUMA policies applied through MemoryMapping (MappingOptions.numaPolicy).
@Suite("MemoryMapping NUMA placement", .usesHugepagePool)
struct MappingPlacementTests {
    @Test("numaPolicy bind(0): the kernel holds MPOL_BIND on node 0 and every page is there",
          .enabled(if: hasFree2M, "needs 32 free 2 MiB hugepages"),
          arguments: [MappingOptions.Backing.anonymous, .memfd])
    func bindThroughMapping(backing: MappingOptions.Backing) throws {
        let mapping = try MemoryMapping(length: 4 * PageSize.huge2M.bytes,
                                        options: MappingOptions(backing: backing, numaPolicy: .bind(0)))
        #expect(mapping.pageNodes == [0, 0, 0, 0])
        #expect(try NUMAPlacement.policy(of: mapping.base) == .bind(0))
        #expect(try NUMAPlacement.nodes(of: mapping.base, length: mapping.length, pageSize: mapping.pageSize)
            == [0, 0, 0, 0])
    }

    @Test("numaPolicy interleave([0]) and preferred(0) are set on the mapping",
          .enabled(if: hasFree2M, "needs 32 free 2 MiB hugepages"))
    func otherPolicies() throws {
        for policy: NUMAPolicy in [.interleave([0]), .preferred(0), .local] {
            let mapping = try MemoryMapping(length: 2 * PageSize.huge2M.bytes, options: MappingOptions(numaPolicy: policy))
            #expect(try NUMAPlacement.policy(of: mapping.base) == policy, "\(policy)")
            #expect(mapping.pageNodes == [0, 0], "\(policy)")
        }
        let plain = try MemoryMapping(length: PageSize.huge2M.bytes, options: MappingOptions(numaPolicy: .any))
        #expect(plain.pageNodes == nil)
        #expect(try NUMAPlacement.policy(of: plain.base) == .any)
    }

    @Test("numaPolicy bind to a missing node is a placement error naming it, and nothing leaks",
          .enabled(if: hasFree2M, "needs 32 free 2 MiB hugepages"))
    func bindMissingNodeThroughMapping() throws {
        expectNoLeak {
            #expect(throws: MappingError.placement(.noSuchNode(UnknownNode(node: 7, available: [0])))) {
                _ = try MemoryMapping(length: 2 * PageSize.huge2M.bytes, options: MappingOptions(numaPolicy: .bind(7)))
            }
        }
    }
}
