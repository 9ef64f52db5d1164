/// Counts of a pool's operations, summed over threads (including threads
/// that have exited). Collected only when the pool was created with
/// `statistics: true`; pools in single-thread mode keep none.
public struct MempoolStatistics: Equatable, Sendable, CustomStringConvertible {
    /// Objects handed out.
    public var gets = 0
    /// Objects put back.
    public var puts = 0
    /// Get calls that found too few objects.
    public var getFailures = 0
    /// Times a per-thread cache refilled from the shared backend.
    public var refills = 0
    /// Times a per-thread cache flushed to the shared backend.
    public var flushes = 0

    public init(gets: Int = 0, puts: Int = 0, getFailures: Int = 0, refills: Int = 0, flushes: Int = 0) {
        self.gets = gets
        self.puts = puts
        self.getFailures = getFailures
        self.refills = refills
        self.flushes = flushes
    }

    public static func += (a: inout Self, b: Self) {
        a.gets += b.gets
        a.puts += b.puts
        a.getFailures += b.getFailures
        a.refills += b.refills
        a.flushes += b.flushes
    }

    public var description: String {
        "gets=\(gets) puts=\(puts) get_failures=\(getFailures) refills=\(refills) flushes=\(flushes)"
    }
}

extension Mempool {
    /// Objects free right now: in the shared backend plus in every thread's
    /// cache (of every process, for a pool in shared control memory). Exact
    /// whenever no get or put is in flight.
    public var availableCount: Int {
        if let region = sharedControl { return backendCount() + region.cachedCount }
        let slot = self.slot
        let id = self.id
        let cached = MempoolRegistry.state.withLock { s -> Int in
            guard let entry = s.entries[slot], entry.id == id else { return 0 }
            var total = 0
            for record in entry.records { total += record.count }
            return total
        }
        return backendCount() + cached
    }

    /// Objects handed out and not yet put back: `count - availableCount`.
    public var inUseCount: Int { count - availableCount }

    /// Objects in the shared backend only, not counting per-thread caches.
    public var backendAvailableCount: Int { backendCount() }

    /// Operation counts summed over every thread that used the pool (of
    /// every process, for a pool in shared control memory); all zero unless
    /// the pool was created with `statistics: true`.
    public var statistics: MempoolStatistics {
        if let region = sharedControl { return region.statistics }
        let slot = self.slot
        let id = self.id
        return MempoolRegistry.state.withLock { s -> MempoolStatistics in
            guard let entry = s.entries[slot], entry.id == id else { return MempoolStatistics() }
            var total = entry.retired
            for record in entry.records { total += record.statistics }
            return total
        }
    }
}
