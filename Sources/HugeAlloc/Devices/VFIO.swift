import SystemPackage
import Synchronization

/// The VFIO ioctls (include/uapi/linux/vfio.h): `_IO(';', 100 + n)`.
enum VFIORequest {
    static func io(_ n: UInt) -> UInt { UInt(0x3B) << 8 | (100 + n) }
    static let getAPIVersion = io(0)
    static let checkExtension = io(1)
    static let setIOMMU = io(2)
    static let groupGetStatus = io(3)
    static let groupSetContainer = io(4)
    static let groupGetDeviceFD = io(6)
    static let deviceGetRegionInfo = io(8)
    static let deviceReset = io(11)
    static let iommuGetInfo = io(12)
    static let iommuMapDMA = io(13)
    static let iommuUnmapDMA = io(14)

    static let apiVersion: Int32 = 0
    static let type1v2IOMMU: UInt = 3
    static let groupFlagViable: UInt32 = 1 << 0
    static let dmaMapRead: UInt32 = 1 << 0
    static let dmaMapWrite: UInt32 = 1 << 1
    static let regionFlagMmap: UInt32 = 1 << 2
    /// `VFIO_PCI_CONFIG_REGION_INDEX`: BARs are regions 0...5, then the ROM, then config space.
    static let pciConfigRegion: UInt32 = 7
}

/// A VFIO container (`/dev/vfio/vfio`): one IOMMU address space that
/// groups join and HugeAlloc memory is mapped into. Closed exactly once.
///
/// Order of use: ``init(root:)``; ``VFIOGroup/init(device:container:root:)``
/// for each group (which calls `VFIO_GROUP_SET_CONTAINER` and, for the
/// first, `VFIO_SET_IOMMU` with type1v2); then ``map(address:length:iova:)``
/// or ``follow(_:iovaBase:)``, then devices from the group.
public struct VFIOContainer: ~Copyable, Sendable {
    let fd: FileDescriptor
    var iommuSet = false

    /// Opens `/dev/vfio/vfio`, checks the API version and the type1v2 IOMMU.
    public init(root: String = "/") throws(VFIOError) {
        let path = KernelFiles(root: root).path("/dev/vfio/vfio")
        let fd: FileDescriptor
        do { fd = try Sys.openReadWrite(path) } catch {
            if error.errno == .noSuchFileOrDirectory { throw .noVFIO(path: path) }
            throw .systemCall(error)
        }
        do {
            let version = try Sys.ioctl(fd, VFIORequest.getAPIVersion, "VFIO_GET_API_VERSION")
            guard version == VFIORequest.apiVersion else {
                Sys.close(fd)
                throw VFIOError.unsupported("API version \(version), expected \(VFIORequest.apiVersion)")
            }
            let type1v2 = try Sys.ioctl(fd, VFIORequest.checkExtension, "VFIO_CHECK_EXTENSION", value: VFIORequest.type1v2IOMMU)
            guard type1v2 > 0 else {
                Sys.close(fd)
                throw VFIOError.unsupported("no VFIO_TYPE1v2_IOMMU (load vfio_iommu_type1)")
            }
        } catch let error as VFIOError { throw error } catch let error as SystemCallError {
            Sys.close(fd); throw .systemCall(error)
        } catch { Sys.close(fd); throw .unsupported("\(error)") }
        self.fd = fd
    }

    /// `VFIO_SET_IOMMU` with type1v2, once a group has joined.
    mutating func setIOMMUIfNeeded() throws(VFIOError) {
        guard !iommuSet else { return }
        do { _ = try Sys.ioctl(fd, VFIORequest.setIOMMU, "VFIO_SET_IOMMU", value: VFIORequest.type1v2IOMMU) } catch {
            if error.errno == .notPermitted { throw .noInterruptRemapping }
            throw .systemCall(error)
        }
        iommuSet = true
    }

    /// Calls `VFIO_IOMMU_GET_INFO` (twice when the capabilities do not fit the first buffer).
    public func iommuInfo() throws(VFIOError) -> VFIOIOMMUInfo { try VFIOContainerHandle(fd: fd).iommuInfo() }

    /// Maps `length` bytes at `address` for the device at `iova` (read and
    /// write), after checking the IOVA range against the IOMMU's ranges and
    /// RLIMIT_MEMLOCK (VFIO pins the pages). Calls `VFIO_IOMMU_MAP_DMA`.
    public func map(address: UInt, length: Int, iova: UInt64) throws(VFIOError) {
        try VFIOContainerHandle(fd: fd).map(address: address, length: length, iova: iova)
    }

    /// Maps a region (a packet pool's, a mempool's: ``MemoryRegion``) at IOVA = its virtual address.
    public func map(_ region: MemoryRegion) throws(VFIOError) {
        try map(address: region.address, length: region.length, iova: UInt64(region.address))
    }

    /// Removes the mapping at `iova`. Calls `VFIO_IOMMU_UNMAP_DMA`.
    public func unmap(iova: UInt64, length: Int) throws(VFIOError) {
        try VFIOContainerHandle(fd: fd).unmap(iova: iova, length: length)
    }

    /// Maps every region of `arena` now and each one added later; unmaps
    /// each one removed. IOVA = virtual address, or `iovaBase` + the
    /// region's offset from the first region's address. A refused mapping
    /// makes the arena's addition fail and roll back (``MemoryArena``).
    /// Cancel the registration before the container goes away.
    public func follow(_ arena: MemoryArena, iovaBase: UInt64? = nil) throws(MemoryArenaError) -> MemoryEventRegistration {
        let fd = fd
        let mapper = VFIODMAMapper(iovaBase: iovaBase, map: { address, length, iova in
            try VFIOContainerHandle(fd: fd).map(address: address, length: length, iova: iova)
        }, unmap: { iova, length in
            try VFIOContainerHandle(fd: fd).unmap(iova: iova, length: length)
        })
        return try arena.register(mapper.handle)
    }

    /// Maps a packet pool's memory for the container's devices — IOVA =
    /// virtual address, or `iovaBase` onward — and makes the pool hand out
    /// those IOVAs: from now on ``PacketBuffer/dataPhysicalAddress`` and
    /// ``Mempool/physicalAddress(of:)`` are this container's IOVAs, so a
    /// driver puts them in descriptors as they are, with no arithmetic. Needs
    /// every buffer in the pool (attach before handing buffers out).
    /// ``detach(_:iovaBase:)`` undoes it. Calls `VFIO_IOMMU_MAP_DMA`.
    public func attach(_ pool: PacketPool, iovaBase: UInt64? = nil) throws(VFIOError) {
        guard pool.inUseCount == 0 else { throw .poolInUse(inUse: pool.inUseCount, count: pool.count) }
        let mempool = pool.mempool
        let start = UInt64(UInt(bitPattern: unsafe mempool.base))
        let iova = iovaBase ?? start
        try map(address: UInt(start), length: mempool.length, iova: iova)
        let page = mempool.pageSize.bytes
        let pages = (0..<(mempool.length / page)).map { iova &+ UInt64($0 * page) }
        mempool.useDeviceAddresses(PhysicalTranslation(pagePhysical: pages, pageSize: mempool.pageSize))
        pool.refreshDeviceAddresses()
    }

    /// Unmaps a pool attached with ``attach(_:iovaBase:)`` (the same
    /// `iovaBase`) and gives it back its physical addresses. Needs every
    /// buffer in the pool. Calls `VFIO_IOMMU_UNMAP_DMA`.
    public func detach(_ pool: PacketPool, iovaBase: UInt64? = nil) throws(VFIOError) {
        guard pool.inUseCount == 0 else { throw .poolInUse(inUse: pool.inUseCount, count: pool.count) }
        let mempool = pool.mempool
        try unmap(iova: iovaBase ?? UInt64(UInt(bitPattern: unsafe mempool.base)), length: mempool.length)
        mempool.useDeviceAddresses(nil)
        pool.refreshDeviceAddresses()
    }

    /// Closes the container (unmapping everything mapped into it). The corresponding C function is `close(2)`.
    public consuming func close() {
        Sys.close(fd)
        discard self
    }

    deinit { Sys.close(fd) }
}

/// The container's descriptor, as an event handler holds it: the calls
/// behind ``VFIOContainer``'s methods.
struct VFIOContainerHandle {
    let fd: FileDescriptor

    func iommuInfo() throws(VFIOError) -> VFIOIOMMUInfo {
        var size = 4096
        while true {
            var bytes = [UInt8](repeating: 0, count: size)
            for i in 0..<4 { bytes[i] = UInt8(truncatingIfNeeded: size >> (8 * i)) }  // argsz
            do { _ = try Sys.ioctl(fd, VFIORequest.iommuGetInfo, "VFIO_IOMMU_GET_INFO", bytes: &bytes) } catch {
                throw .systemCall(error)
            }
            let wanted = Int(UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24)
            if wanted > size { size = wanted; continue }
            guard let info = VFIOIOMMUInfo.parse(bytes) else { throw .unsupported("VFIO_IOMMU_GET_INFO answered \(wanted) bytes") }
            return info
        }
    }

    func map(address: UInt, length: Int, iova: UInt64) throws(VFIOError) {
        try iommuInfo().check(iova: iova, length: length)
        if let shortage = MemlockCheck.shortage(needed: length) { throw .memlockLimitTooLow(shortage) }
        // struct vfio_iommu_type1_dma_map: argsz, flags, vaddr, iova, size.
        var request: (UInt32, UInt32, UInt64, UInt64, UInt64) =
            (32, VFIORequest.dmaMapRead | VFIORequest.dmaMapWrite, UInt64(address), iova, UInt64(length))
        do { _ = try Sys.ioctl(fd, VFIORequest.iommuMapDMA, "VFIO_IOMMU_MAP_DMA", struct: &request) } catch {
            throw .systemCall(error)
        }
    }

    func unmap(iova: UInt64, length: Int) throws(VFIOError) {
        // struct vfio_iommu_type1_dma_unmap: argsz, flags, iova, size.
        var request: (UInt32, UInt32, UInt64, UInt64) = (24, 0, iova, UInt64(length))
        do { _ = try Sys.ioctl(fd, VFIORequest.iommuUnmapDMA, "VFIO_IOMMU_UNMAP_DMA", struct: &request) } catch {
            throw .systemCall(error)
        }
    }
}

/// Turns memory events into DMA map and unmap calls: where a region goes
/// in IOVA space (its virtual address, or a base plus its offset), and the
/// calls themselves, injectable so the event logic is tested without VFIO.
package struct VFIODMAMapper: Sendable {
    package let iovaBase: UInt64?
    package let map: @Sendable (_ address: UInt, _ length: Int, _ iova: UInt64) throws -> Void
    package let unmap: @Sendable (_ iova: UInt64, _ length: Int) throws -> Void
    /// The first region's address, the origin of `iovaBase` offsets.
    let origin = OriginBox()

    package init(iovaBase: UInt64?, map: @escaping @Sendable (UInt, Int, UInt64) throws -> Void,
                 unmap: @escaping @Sendable (UInt64, Int) throws -> Void) {
        self.iovaBase = iovaBase
        self.map = map
        self.unmap = unmap
    }

    /// The IOVA of a region.
    package func iova(of region: MemoryRegion) -> UInt64 {
        guard let iovaBase else { return UInt64(region.address) }
        let first = origin.first(region.address)
        return iovaBase &+ UInt64(region.address) &- UInt64(first)
    }

    /// The arena handler.
    package var handle: @Sendable (MemoryEvent) throws -> Void {
        { event in
            switch event {
            case .added(let region): try map(region.address, region.length, iova(of: region))
            case .removed(let region): try unmap(iova(of: region), region.length)
            }
        }
    }
}

/// The address of the first region a mapper saw.
final class OriginBox: Sendable {
    private let value = Mutex<UInt?>(nil)
    func first(_ candidate: UInt) -> UInt { value.withLock { v in if v == nil { v = candidate }; return v! } }
}
