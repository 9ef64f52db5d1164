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

// MARK: - VFIO

extension Sys {
    /// An `ioctl` on a VFIO container, group or device with a struct
    /// argument. The corresponding C function is `ioctl(2)`.
    package static func ioctl(
        _ fd: FileDescriptor, _ request: UInt, _ name: String, _ argument: UnsafeMutableRawPointer
    ) throws(SystemCallError) -> Int32 {
        try retryingInterrupts(name) { unsafe ha_ioctl_pointer(fd.rawValue, request, argument) }
    }

    /// An `ioctl` with an integer argument. The corresponding C function is `ioctl(2)`.
    package static func ioctl(
        _ fd: FileDescriptor, _ request: UInt, _ name: String, value: UInt = 0
    ) throws(SystemCallError) -> Int32 {
        try retryingInterrupts(name) { ha_ioctl_value(fd.rawValue, request, value) }
    }

    /// `VFIO_GROUP_GET_DEVICE_FD`: the argument is the device's name.
    package static func vfioDeviceDescriptor(_ group: FileDescriptor, request: UInt, device: String) throws(SystemCallError) -> FileDescriptor {
        var name = Array(device.utf8CString)
        let result: Result<Int32, SystemCallError> = unsafe name.withUnsafeMutableBytes { b in
            do throws(SystemCallError) {
                return .success(try unsafe ioctl(group, request, "VFIO_GROUP_GET_DEVICE_FD", b.baseAddress!))
            } catch { return .failure(error) }
        }
        return FileDescriptor(rawValue: try result.get())
    }

    /// An `ioctl` whose argument is `value`, passed by address (read and written).
    package static func ioctl<T>(
        _ fd: FileDescriptor, _ request: UInt, _ name: String, struct value: inout T
    ) throws(SystemCallError) -> Int32 {
        let result: Result<Int32, SystemCallError> = unsafe withUnsafeMutableBytes(of: &value) { b in
            do throws(SystemCallError) {
                return .success(try unsafe ioctl(fd, request, name, b.baseAddress!))
            } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// An `ioctl` whose argument is a byte buffer (a struct followed by capabilities).
    package static func ioctl(
        _ fd: FileDescriptor, _ request: UInt, _ name: String, bytes: inout [UInt8]
    ) throws(SystemCallError) -> Int32 {
        let result: Result<Int32, SystemCallError> = unsafe bytes.withUnsafeMutableBytes { b in
            do throws(SystemCallError) {
                return .success(try unsafe ioctl(fd, request, name, b.baseAddress!))
            } catch { return .failure(error) }
        }
        return try result.get()
    }
}
