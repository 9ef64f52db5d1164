import Foundation
import Synchronization
import HugeAllocTestSupport
import Testing
@testable import HugeAlloc

/// A pool over a fresh 2 MiB-page mapping of `pages` pages whose physical
/// addresses the test dictates: the layout logic sees exactly these.
func poolOverMapping(
    pages: Int, configuration: MempoolConfiguration, physical: @escaping (Int) -> PhysicalAddress?
) throws -> (Mempool, UnsafeMutableRawPointer) {
    let mapping = try MemoryMapping(length: pages * PageSize.huge2M.bytes, options: MappingOptions(pageSize: .huge2M))
    let base = mapping.base
    let holder = MappingHolder(mapping)
    let memory = MempoolMemory(base: base, length: pages * PageSize.huge2M.bytes, pageSize: .huge2M) { offset in
        physical(offset / PageSize.huge2M.bytes)
    }
    let pool = try Mempool(memory: memory, configuration: configuration, releaseMemory: { holder.release() })
    return (pool, base)
}

final class MappingHolder: @unchecked Sendable {
    private let lock = Mutex<Void>(())
    private var mapping: MemoryMapping?
    init(_ mapping: consuming MemoryMapping) { self.mapping = consume mapping }
    func release() { lock.withLock { _ in _ = mapping.take() } }
}

/// Every object address of a pool, by index.
func allObjects(_ pool: Mempool) -> [UnsafeMutableRawPointer] {
    var result: [UnsafeMutableRawPointer] = []
    pool.forEachObject { _, p in result.append(p) }
    return result
}
