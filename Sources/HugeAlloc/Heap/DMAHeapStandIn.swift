// STAND-IN for the DMA heap (issue 14, parts 1-3), so the NVMe driver can be
// written and tested before the real heap lands. It has the real heap's
// names and signatures for the part the driver uses, and nothing else:
// each request is carved from 2 MiB hugepages (larger ones from a
// physically contiguous run), the IOVA is the page's physical address, or
// the virtual address once a VFIO container is attached. Delete this file
// when the real Heap/DMAHeap.swift is merged.
import Synchronization

/// Why the heap could not serve a request.
public enum DMAHeapError: Error, Sendable, CustomStringConvertible {
    case invalidRequest(String)
    case memory(ContiguousError)
    case eventRefused(MemoryArenaError)

    public var description: String {
        switch self {
        case .invalidRequest(let reason): return "invalid DMA heap request: \(reason)"
        case .memory(let error): return "DMA heap memory: \(error)"
        case .eventRefused(let error): return "DMA heap growth refused: \(error)"
        }
    }
}

/// DMA memory of any size: IOVA-contiguous, aligned, not crossing a boundary.
public final class DMAHeap: Sendable {
    public struct Options: Sendable {
        public var retentionBytes: Int
        public var checked: Bool
        public var maximumBytes: Int
        public init(retentionBytes: Int = 0, checked: Bool = false, maximumBytes: Int = 64 << 30) {
            self.retentionBytes = retentionBytes
            self.checked = checked
            self.maximumBytes = maximumBytes
        }
    }

    /// One mapping the heap carves from; all of it physically contiguous.
    final class Chunk: @unchecked Sendable {
        let mapping: MemoryMapping
        var used = 0
        var live = 0
        init(_ mapping: consuming MemoryMapping) { self.mapping = mapping }
        var start: UInt { UInt(bitPattern: unsafe mapping.base) }
        var region: MemoryRegion {
            MemoryRegion(address: start, length: mapping.length, pageSize: mapping.pageSize,
                         pieces: [.init(offset: 0, length: mapping.length, physicalAddress: mapping.physicalAddress(atOffset: 0))])
        }
    }

    struct State {
        var chunks: [Chunk] = []
        var attachments = 0
    }

    let state = Mutex(State())
    public let events = MemoryArena()
    static let chunkBytes = PageSize.huge2M.bytes

    public init(_ options: Options = Options()) throws(DMAHeapError) {}

    public func allocate(_ size: Int, alignment: Int = 64, boundary: Int? = nil,
                         node: Int? = nil, zeroed: Bool = false) throws(DMAHeapError) -> UnsafeMutableRawPointer {
        guard size > 0 else { throw .invalidRequest("size must be greater than zero (got \(size))") }
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= Self.chunkBytes else {
            throw .invalidRequest("alignment must be a power of two up to 2 MiB (got \(alignment))")
        }
        if let boundary {
            guard boundary > 0, boundary & (boundary - 1) == 0, boundary >= size else {
                throw .invalidRequest("boundary must be a power of two not smaller than the size (got \(boundary) for \(size))")
            }
        }
        let result: Result<UInt, DMAHeapError> = state.withLock { state in
            func place(in chunk: Chunk) -> Int? {
                var offset = (chunk.used + alignment - 1) & ~(alignment - 1)
                if let boundary, offset / boundary != (offset + size - 1) / boundary {
                    offset = (offset + boundary - 1) & ~(boundary - 1)
                }
                return offset + size <= chunk.mapping.length ? offset : nil
            }
            var chunk = state.chunks.last
            var offset = chunk.flatMap(place)
            if offset == nil {
                let fresh: Chunk
                do throws(DMAHeapError) { fresh = try makeChunk(size) } catch { return .failure(error) }
                state.chunks.append(fresh)
                chunk = fresh
                offset = place(in: fresh)
            }
            chunk!.used = offset! + size
            chunk!.live += 1
            return .success(chunk!.start + UInt(offset!))
        }
        let pointer = unsafe UnsafeMutableRawPointer(bitPattern: try result.get())!
        if zeroed { unsafe pointer.initializeMemory(as: UInt8.self, repeating: 0, count: size) }
        return unsafe pointer
    }

    /// A new chunk, announced to the event handlers (a VFIO container maps it).
    func makeChunk(_ size: Int) throws(DMAHeapError) -> Chunk {
        let chunk: Chunk
        if size <= Self.chunkBytes {
            do { chunk = Chunk(try MemoryMapping(length: Self.chunkBytes)) } catch { throw .memory(.mapping(error)) }
        } else {
            do { chunk = Chunk(try ContiguousMemory.allocate(ContiguousRequest(bytes: size))) } catch { throw .memory(error) }
        }
        do { try events.add(chunk.region) } catch { throw .eventRefused(error) }
        return chunk
    }

    public func free(_ pointer: UnsafeMutableRawPointer) {
        let address = UInt(bitPattern: pointer)
        state.withLock { state in
            guard let i = state.chunks.firstIndex(where: { address >= $0.start && address < $0.start + UInt($0.mapping.length) })
            else { return }
            state.chunks[i].live -= 1
            if state.chunks[i].live == 0 {
                events.remove(state.chunks.remove(at: i).region)
            }
        }
    }

    /// Physical address, or the VFIO container's IOVA once attached; nil outside the heap.
    public func iova(of address: UnsafeRawPointer) -> UInt64? {
        let a = UInt(bitPattern: address)
        return state.withLock { state in
            guard let chunk = state.chunks.first(where: { a >= $0.start && a < $0.start + UInt($0.mapping.length) }) else {
                return nil
            }
            if state.attachments > 0 { return UInt64(a) }
            return chunk.mapping.physicalAddress(atOffset: Int(a - chunk.start))?.rawValue
        }
    }

    deinit {
        state.withLock { state in
            for chunk in state.chunks.reversed() { events.remove(chunk.region) }
            state.chunks.removeAll()
        }
    }
}

/// A heap's memory mapped in a VFIO container (IOVA = virtual address) while it lives.
public struct DMAHeapAttachment: ~Copyable, Sendable {
    let heap: DMAHeap
    let registration: MemoryEventRegistration

    /// Unmaps the heap's memory from the container (the deinit does the work).
    public consuming func detach() {}

    deinit { heap.state.withLock { $0.attachments -= 1 } }
}

extension VFIOContainer {
    /// Maps the heap's memory, now and as it grows, at IOVA = virtual address;
    /// from then on ``DMAHeap/iova(of:)`` answers the IOVA. Calls `VFIO_IOMMU_MAP_DMA`.
    public func attach(_ heap: DMAHeap) throws(VFIOError) -> DMAHeapAttachment {
        let fd = fd
        let mapper = VFIODMAMapper(iovaBase: nil, map: { address, length, iova in
            try VFIOContainerHandle(fd: fd).map(address: address, length: length, iova: iova)
        }, unmap: { iova, length in
            try VFIOContainerHandle(fd: fd).unmap(iova: iova, length: length)
        })
        let registration: MemoryEventRegistration
        do { registration = try heap.events.register(mapper.handle) } catch { throw .unsupported("\(error)") }
        heap.state.withLock { $0.attachments += 1 }
        return DMAHeapAttachment(heap: heap, registration: registration)
    }
}
