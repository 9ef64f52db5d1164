/// A PCI memory BAR mapped into this process: 32-bit register reads and
/// writes at byte offsets. Unmapped exactly once, by ``unmap()`` or when
/// dropped. Each access is one volatile load or store (`ha_mmio_*`).
@safe
public struct PCIBARMapping: ~Copyable, @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    /// Bytes mapped (the BAR size rounded up to whole pages).
    public let length: Int
    /// The BAR size the device decodes.
    public let size: Int
    /// The bus address the BAR is assigned (from sysfs `resource`); nil through VFIO.
    public let physicalAddress: PhysicalAddress?
    public let device: PCIAddress
    public let index: Int

    init(base: UnsafeMutableRawPointer, length: Int, size: Int, physicalAddress: PhysicalAddress?, device: PCIAddress, index: Int) {
        unsafe self.base = base
        self.length = length
        self.size = size
        self.physicalAddress = physicalAddress
        self.device = device
        self.index = index
    }

    /// The 32-bit register at `offset` (4-byte aligned, inside the BAR).
    public func read32(_ offset: Int) -> UInt32 {
        precondition(offset >= 0 && offset + 4 <= size && offset & 3 == 0, "register offset \(offset) outside BAR\(index)")
        return unsafe Sys.mmioRead32(base, offset)
    }

    /// Writes the 32-bit register at `offset` (4-byte aligned, inside the BAR).
    public func write32(_ offset: Int, _ value: UInt32) {
        precondition(offset >= 0 && offset + 4 <= size && offset & 3 == 0, "register offset \(offset) outside BAR\(index)")
        unsafe Sys.mmioWrite32(base, offset, value)
    }

    /// Orders earlier stores to DMA memory (descriptors, buffers) before the
    /// next register write that hands them to the device.
    public func writeBarrier() { Sys.dmaWriteBarrier() }

    /// Unmaps the BAR, reporting a failure. The corresponding C function is `munmap(2)`.
    public consuming func unmap() throws(PCIError) {
        let base = unsafe base, length = length
        discard self
        do { try unsafe Sys.unmapDevice(base, length: length) } catch { throw .systemCall(error) }
    }

    deinit { try? unsafe Sys.unmapDevice(base, length: length) }
}
