/// Every object published under a runtime directory, as `inspect-memory
/// pools` shows it, and the removal of stale rendezvous entries.
public enum SharedRegistry {
    /// One attached process of a published object.
    public struct Process: Sendable, Equatable {
        public var pid: Int32
        public var isAlive: Bool
        /// Objects in its threads' caches (pools).
        public var cachedObjects: Int?
        /// Objects it holds (checked pools), or blocks it allocated (checked heaps).
        public var heldObjects: Int?
    }

    /// One published name.
    public struct Entry: Sendable, Equatable {
        public var name: String
        public var path: String
        public var kind: SharedObjectKind?
        public var address: UInt?
        /// Bytes of the shared segment.
        public var bytes: Int?
        /// Objects in all (pools), slots (rings) or bytes the heap manages (heaps).
        public var objectsTotal: Int?
        /// Objects available (pools), pointers queued (rings) or bytes in
        /// free blocks, headers included (heaps).
        public var objectsAvailable: Int?
        public var processes: [Process]
        /// No process of it runs any more: `clean` removes it.
        public var isStale: Bool
        /// Why the details could not be read (mapping the object here failed).
        public var detailError: String?
    }

    /// The entries under `runtimeDirectory`; live pools are mapped for a
    /// moment (read-only use, no slot taken) to read their counts.
    public static func list(runtimeDirectory: String = SharingOptions.defaultRuntimeDirectory, details: Bool = true) -> [Entry] {
        guard let names = try? Sys.directoryEntries(atPath: runtimeDirectory) else { return [] }
        var options = SharingOptions(runtimeDirectory: runtimeDirectory)
        options.timeoutMilliseconds = 1000
        return names.sorted().compactMap { name -> Entry? in
            guard let rendezvous = try? SharedRendezvous(name: name, options: options),
                  (try? Sys.fileStatus(rendezvous.directory))?.isDirectory == true else { return nil }
            let record = rendezvous.segmentRecord
            let pids = rendezvous.socketPIDs
            let live = pids.filter { Sys.processExists($0) && rendezvous.answers($0) }
            var entry = Entry(name: name, path: rendezvous.directory, kind: record?.kind, address: record?.address,
                              bytes: record?.length, objectsTotal: nil, objectsAvailable: nil,
                              processes: pids.map { Process(pid: $0, isAlive: live.contains($0)) }, isStale: live.isEmpty,
                              detailError: nil)
            if details, !live.isEmpty, let kind = record?.kind {
                do { try readDetails(into: &entry, kind: kind, options: options) } catch { entry.detailError = "\(error)" }
            }
            return entry
        }
    }

    private static func readDetails(into entry: inout Entry, kind: SharedObjectKind, options: SharingOptions) throws(SharingError) {
        let core = try SharedObjectCore.attach(kind: kind, name: entry.name, options: options, observer: true)
        defer { core.close() }
        let participants = core.header.participants
        entry.processes = participants.map { Process(pid: $0.pid, isAlive: core.isAlive($0)) }
        switch kind {
        case .mapping:
            break
        case .ring:
            let ring = unsafe MempoolRing._UnsafeHandle.placed(at: core.segment.control, capacity: core.header.facts.count, initializing: false)
            entry.objectsTotal = core.header.facts.count
            entry.objectsAvailable = ring.count
        case .heap:
            let heap = SharedHeap.observe(core)
            entry.objectsTotal = heap.capacity
            entry.objectsAvailable = heap.free
            let usage = Dictionary((heap.usage ?? []).map { ($0.pid, $0.blocks) }, uniquingKeysWith: { a, _ in a })
            for i in entry.processes.indices where core.header.facts.checked {
                entry.processes[i].heldObjects = usage[entry.processes[i].pid] ?? 0
            }
        case .mempool, .packetPool:
            let h = core.header
            let pool: Mempool
            do {
                pool = try unsafe Mempool(sharedMemory: core.segment.dataMemory, control: core.segment.control,
                                          controlLength: h.controlLength, configuration: SharedMempool.configuration(of: h.facts),
                                          creating: false, releaseMemory: nil)
            } catch { throw .mempool(error) }
            entry.objectsTotal = pool.count
            entry.objectsAvailable = pool.availableCount
            let usage = Dictionary(pool.processUsage().map { ($0.pid, $0) }, uniquingKeysWith: { a, _ in a })
            for i in entry.processes.indices {
                let u = usage[entry.processes[i].pid]
                entry.processes[i].cachedObjects = u?.cachedObjects ?? 0
                entry.processes[i].heldObjects = h.facts.checked ? (u?.heldObjects ?? 0) : nil
            }
        }
    }

    /// Removes the entries no process answers at any more (never a live
    /// one) and returns their paths.
    @discardableResult
    public static func clean(runtimeDirectory: String = SharingOptions.defaultRuntimeDirectory) -> [String] {
        var removed: [String] = []
        for entry in list(runtimeDirectory: runtimeDirectory, details: false) where entry.isStale {
            guard let rendezvous = try? SharedRendezvous(name: entry.name, options: SharingOptions(runtimeDirectory: runtimeDirectory)) else { continue }
            // Looked at again just before removing: a publisher may have started since.
            guard !rendezvous.socketPIDs.contains(where: { Sys.processExists($0) && rendezvous.answers($0) }) else { continue }
            rendezvous.removeStale()
            removed.append(entry.path)
        }
        return removed
    }
}
