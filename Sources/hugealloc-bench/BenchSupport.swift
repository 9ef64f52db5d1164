import HugeAlloc
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Helpers shared by the benchmark subcommands: a monotonic clock, CPU
/// pinning and a start barrier for worker threads.
enum Bench {
    /// Seconds on `CLOCK_MONOTONIC` (a vDSO call, no system call).
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// What one worker thread measured.
    struct Sample: Sendable {
        var objects: Int
        var seconds: Double
    }

    /// Runs `body(i)` on `threads` threads (thread 0 is the calling thread),
    /// each pinned to CPU i as DPDK's EAL pins its lcores, released together
    /// by a barrier; returns their samples in thread order.
    static func onThreads(_ threads: Int, _ body: @escaping @Sendable (Int) -> Sample) -> [Sample] {
        let job = Job(threads: threads, body: body)
        var ids = [pthread_t]()
        for i in 1..<max(1, threads) {
            let context = Unmanaged.passRetained(Worker(job: job, index: i)).toOpaque()
            var id = pthread_t()
            let rc = unsafe pthread_create(&id, nil, { raw in
                let worker = unsafe Unmanaged<Worker>.fromOpaque(raw!).takeRetainedValue()
                worker.job.run(worker.index)
                return nil
            }, context)
            precondition(rc == 0, "pthread_create failed: \(rc)")
            ids.append(id)
        }
        job.run(0)
        for id in ids { pthread_join(id, nil) }
        return job.results.withLock { $0.map { $0! } }
    }

    final class Job: Sendable {
        let results: Mutex<[Sample?]>
        let ready = Atomic<Int>(0)
        let body: @Sendable (Int) -> Sample
        let threads: Int
        init(threads: Int, body: @escaping @Sendable (Int) -> Sample) {
            results = Mutex(Array(repeating: nil, count: threads))
            self.body = body
            self.threads = threads
        }
        func run(_ i: Int) {
            // Best effort: an unpinned thread still measures, only noisier.
            try? NUMAPlacement.pinCurrentThread(toCPUs: [i])
            ready.add(1, ordering: .acquiringAndReleasing)
            while ready.load(ordering: .acquiring) < threads {}
            let sample = body(i)
            results.withLock { $0[i] = sample }
        }
    }

    final class Worker: Sendable {
        let job: Job
        let index: Int
        init(job: Job, index: Int) { self.job = job; self.index = index }
    }
}
