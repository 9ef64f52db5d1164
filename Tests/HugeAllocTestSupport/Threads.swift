import Foundation

/// Runs `body(i)` on `threads` new POSIX threads and joins them all, so each
/// thread has exited (and run its thread-exit hooks, such as a mempool's
/// cache flush) on return.
public func runOnThreads(_ threads: Int, _ body: @escaping @Sendable (Int) -> Void) {
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
