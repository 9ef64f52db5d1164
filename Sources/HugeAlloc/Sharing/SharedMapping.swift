/// Hugepage memory published under a name, mapped at the same address in
/// every process that attaches: pointers into it are valid in all of them.
///
/// The memory is a hugetlb memfd (`memfd_create(2)` with `MFD_HUGETLB`):
/// no file on a hugetlbfs mount, so nothing is left behind; the pages go
/// back to the kernel when the last process unmaps them. See
/// docs/multi-process.md.
@safe
public final class SharedMapping: @unchecked Sendable {
    let core: SharedObjectCore

    /// The first byte of the shared memory (the same in every process).
    public let base: UnsafeMutableRawPointer
    /// Bytes of shared memory (as asked for, rounded up to whole pages).
    public let length: Int
    /// The page size beneath.
    public var pageSize: PageSize { core.segment.pageSize }
    /// The published name.
    public var name: String { core.name }

    private init(core: SharedObjectCore) {
        self.core = core
        let h = core.header
        unsafe base = core.segment.base + h.dataOffset
        length = h.dataLength
    }

    deinit { core.close() }

    /// Publishes `length` bytes of hugepage memory (zero-filled) as `name`.
    public static func publish(
        name: String, length: Int, mapping: MappingOptions = MappingOptions(), options: SharingOptions = SharingOptions()
    ) throws(SharingError) -> SharedMapping {
        guard length > 0, length <= 1 << 46 else {
            throw .mapping(.invalidLength(requested: length, pageSize: mapping.pageSize, reason: "a shared mapping needs 1 byte to 64 TiB"))
        }
        let rounded = (length + mapping.pageSize.bytes - 1) / mapping.pageSize.bytes * mapping.pageSize.bytes
        let core = try SharedObjectCore.publish(kind: .mapping, name: name, options: options, mapping: mapping,
                                                controlLength: 0, dataLength: rounded, facts: SharedSegmentFacts())
        try core.start { _ in (0, 0) }
        return SharedMapping(core: core)
    }

    /// Attaches to the mapping published as `name`.
    public static func attach(name: String, options: SharingOptions = SharingOptions()) throws(SharingError) -> SharedMapping {
        let core = try SharedObjectCore.attach(kind: .mapping, name: name, options: options)
        try core.start { _ in (0, 0) }
        return SharedMapping(core: core)
    }

    /// The physical address of a byte of the mapping, from this process's
    /// read of `/proc/self/pagemap`; nil outside it or when hidden.
    public func physicalAddress(of pointer: UnsafeRawPointer) -> PhysicalAddress? {
        let offset = unsafe pointer - UnsafeRawPointer(base)
        guard offset >= 0, offset < length else { return nil }
        return core.segment.translation?.physicalAddress(atOffset: core.header.dataOffset + offset)
    }

    /// The processes attached now.
    public var participants: [SharedParticipant] { core.participants }

    /// Stops sharing from this process: its socket goes, and the rendezvous
    /// with it when it was the last. The memory stays mapped here until this
    /// object is released.
    public func detach() { core.close() }
}
