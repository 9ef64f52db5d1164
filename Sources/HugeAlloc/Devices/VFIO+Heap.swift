/// A DMA heap attached to a VFIO container: while it lives, every page the
/// heap holds (and every page it maps later) is mapped in the container's
/// IOMMU at IOVA = its virtual address, and ``DMAHeap/iova(of:)`` answers
/// that IOVA. Noncopyable: detached exactly once, by ``detach()`` or when
/// the value is destroyed (pages are unmapped from the IOMMU, and the heap
/// answers physical addresses again).
public struct DMAHeapAttachment: ~Copyable, Sendable {
    let heap: DMAHeap
    let registration: MemoryEventRegistration

    deinit { heap.deviceIOVAIsVirtual.store(false, ordering: .releasing) }

    /// Detaches now (consuming the attachment runs its `deinit`, which
    /// cancels the event registration: `VFIO_IOMMU_UNMAP_DMA` per page).
    public consuming func detach() {}
}

extension VFIOContainer {
    /// Maps the heap's memory for the container's devices at IOVA = virtual
    /// address — what it holds now and every page it maps later (through
    /// ``DMAHeap/events``) — and makes ``DMAHeap/iova(of:)`` answer those
    /// IOVAs. Attach before putting heap addresses in descriptors: IOVAs
    /// read before attaching are physical addresses. A page the IOMMU
    /// refuses makes the heap's growth fail
    /// (``DMAHeapError/eventRefused(_:)``). Calls `VFIO_IOMMU_MAP_DMA`.
    public func attach(_ heap: DMAHeap) throws(VFIOError) -> DMAHeapAttachment {
        let registration: MemoryEventRegistration
        do { registration = try follow(heap.events) } catch {
            throw .unsupported("the container refused the heap's memory: \(error)")
        }
        heap.deviceIOVAIsVirtual.store(true, ordering: .releasing)
        return DMAHeapAttachment(heap: heap, registration: registration)
    }
}
