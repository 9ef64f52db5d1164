import CHugeAllocShims
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Device access: PCI config space and BAR files in sysfs, memory-mapped
/// registers. The devices layer calls nothing else.
extension Sys {
    /// Whether the process runs as root (effective user id 0).
    /// The corresponding C function is `geteuid(2)`.
    package static var isRoot: Bool { Glibc.geteuid() == 0 }

    /// Opens an existing file for reading and writing (sysfs `config`,
    /// `resourceN`). The corresponding C function is `open(2)` with `O_RDWR`.
    package static func openReadWrite(_ path: String) throws(SystemCallError) -> FileDescriptor {
        FileDescriptor(rawValue: try retryingInterrupts("open", detail: path) {
            unsafe Glibc.open(path, O_RDWR | O_CLOEXEC)
        })
    }

    /// Writes all of `bytes` at `offset`. The corresponding C function is `pwrite(2)`.
    package static func pwrite(_ fd: FileDescriptor, _ bytes: [UInt8], offset: Int) throws(SystemCallError) {
        var done = 0
        while done < bytes.count {
            let n = try retryingInterrupts("pwrite", detail: "offset \(offset + done)") {
                unsafe bytes.withUnsafeBytes { b in
                    unsafe Glibc.pwrite(fd.rawValue, b.baseAddress! + done, b.count - done, off_t(offset + done))
                }
            }
            done += n
        }
    }

    /// Maps `length` bytes of a device file shared and read-write (a PCI
    /// BAR through sysfs `resourceN`). The corresponding C function is
    /// `mmap(2)` with `MAP_SHARED`.
    package static func mapDevice(_ fd: FileDescriptor, length: Int, offset: Int = 0) throws(SystemCallError) -> UnsafeMutableRawPointer {
        try unsafe mmap(length: length, protection: .readWrite, flags: .shared, fd: fd, offset: offset)
    }

    /// Unmaps what ``mapDevice(_:length:offset:)`` mapped. The corresponding C function is `munmap(2)`.
    package static func unmapDevice(_ address: UnsafeMutableRawPointer, length: Int) throws(SystemCallError) {
        try unsafe munmap(address, length: length)
    }

    /// Reads a 32-bit device register exactly once (a volatile load).
    package static func mmioRead32(_ base: UnsafeMutableRawPointer, _ offset: Int) -> UInt32 {
        unsafe ha_mmio_read32(base, UInt32(offset))
    }

    /// Writes a 32-bit device register exactly once (a volatile store).
    package static func mmioWrite32(_ base: UnsafeMutableRawPointer, _ offset: Int, _ value: UInt32) {
        unsafe ha_mmio_write32(base, UInt32(offset), value)
    }

    /// Orders earlier stores to DMA memory before a later register write.
    package static func dmaWriteBarrier() { ha_dma_write_barrier() }
}
