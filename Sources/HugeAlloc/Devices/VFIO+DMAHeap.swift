import Synchronization

extension VFIOContainer {
    /// Maps a DMA heap for the container's devices at IOVA = virtual
    /// address: the memory it holds now and, through its memory events,
    /// every page it grows by (each page it gives back is unmapped first).
    /// While the returned attachment lives, ``DMAHeap/iova(of:)`` answers
    /// these IOVAs, so a driver puts `heap.iova(of:)` in its commands as in
    /// physical mode. Attach before any device is given an address of the
    /// heap; growth that the container refuses makes the allocation fail
    /// (``DMAHeapError/eventRefused(_:)``). One container per heap at a time.
    /// Calls `VFIO_IOMMU_MAP_DMA` (and `VFIO_IOMMU_UNMAP_DMA` when memory leaves).
    public func attach(_ heap: DMAHeap) throws(VFIOError) -> DMAHeapAttachment {
        guard heap.deviceIOVAIsVirtual.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
        else { throw .unsupported("the heap is attached to a container already: detach it before attaching it to another") }
        let handle = VFIOContainerHandle(fd: fd)
        let refusal = VFIORefusal()
        let registration: MemoryEventRegistration
        do {
            registration = try heap.events.register { event in
                switch event {
                case .added(let region):
                    do throws(VFIOError) {
                        try handle.map(address: region.address, length: region.length, iova: UInt64(region.address))
                    } catch {
                        refusal.error.withLock { $0 = error }
                        throw error
                    }
                case .removed(let region):
                    try handle.unmap(iova: UInt64(region.address), length: region.length)
                }
            }
        } catch {
            heap.deviceIOVAIsVirtual.store(false, ordering: .releasing)
            throw refusal.error.withLock { $0 } ?? .unsupported("\(error)")
        }
        return DMAHeapAttachment(heap: heap, registration: registration)
    }
}

/// A ``DMAHeap`` mapped in a VFIO container (``VFIOContainer/attach(_:)-(DMAHeap)``).
/// Detached exactly once, by ``detach()`` or when dropped: the heap hands out
/// physical addresses again and its memory is unmapped from the container.
/// Keep the container open while the attachment lives.
public struct DMAHeapAttachment: ~Copyable, Sendable {
    let heap: DMAHeap
    let registration: MemoryEventRegistration

    /// Detaches now (the work is in `deinit`).
    public consuming func detach() {}

    deinit { heap.deviceIOVAIsVirtual.store(false, ordering: .releasing) }
}

/// The first error a container gave while the heap's memory was being mapped.
final class VFIORefusal: Sendable {
    let error = Mutex<VFIOError?>(nil)
}
