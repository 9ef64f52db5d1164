import Foundation
import Synchronization
import Testing
@testable import HugeAlloc

/// Runs `body(i)` on `threads` new POSIX threads and joins them all, so each
/// thread has exited (and its mempool caches were flushed) on return.
func runOnThreads(_ threads: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Context: @unchecked Sendable {
        let body: @Sendable (Int) -> Void
        let index: Int
        init(body: @escaping @Sendable (Int) -> Void, index: Int) { self.body = body; self.index = index }
    }
    var ids: [pthread_t] = []
    for i in 0..<threads {
        let context = Unmanaged.passRetained(Context(body: body, index: i)).toOpaque()
        var id = pthread_t()
        let rc = pthread_create(&id, nil, { raw in
            let context = Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue()
            context.body(context.index)
            return nil
        }, context)
        precondition(rc == 0)
        ids.append(id)
    }
    for id in ids { pthread_join(id, nil) }
}

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
