import Glibc
import HugeAlloc

/// What Identify Controller said (5.15).
public struct NVMeControllerIdentity: Sendable, Equatable {
    public var serialNumber: String
    public var modelNumber: String
    public var firmwareRevision: String
    /// MDTS in bytes; nil when the controller states no limit.
    public var maximumDataTransferBytes: Int?
    /// NN: namespace IDs run from 1 to this.
    public var namespaceCount: UInt32
    /// VS (3.1.2): "1.4.0".
    public var version: String
}

/// What Identify Namespace said about the namespace the driver reads and writes (5.15).
public struct NVMeNamespace: Sendable, Equatable {
    public var id: UInt32
    /// Bytes per logical block of the formatted LBA size.
    public var blockSize: Int
    /// NSZE: the size in logical blocks.
    public var blockCount: UInt64
    public var capacityBytes: UInt64 { blockCount * UInt64(blockSize) }
}

/// A user-space driver for an NVMe controller over PCIe (QEMU's `-device
/// nvme`): reset and enable, the admin queues, Identify, one I/O queue pair,
/// and polled Read, Write and Flush of one namespace with PRP entries and
/// PRP lists. No interrupts; one command in flight at a time.
///
/// Every byte the controller reads or writes — queues, Identify data, PRP
/// lists and the caller's data buffers — is memory of one ``DMAHeap``, and
/// the address put in a command is ``DMAHeap/iova(of:)`` of it: the
/// physical address, or, once the heap is attached to a VFIO container
/// (`container.attach(heap)`, before the driver starts), the IOVA. The
/// driver does no address arithmetic of its own beyond the page offsets.
///
/// The device must be bound to no kernel driver (or to vfio-pci, through
/// ``init(vfio:heap:namespaceID:queueDepth:dataAddressSkew:)``); the process
/// must be root. One instance per controller; it owns the BAR mapping and
/// its heap memory, and disables the controller before freeing that memory.
public final class NVMe {
    public let address: PCIAddress
    public let heap: DMAHeap
    let bar: PCIBARMapping
    /// The queues, Identify buffer and PRP list: freed when the driver goes.
    let memory: DMAMemory
    /// CAP (3.1.1) and what the driver takes from it.
    public let capabilities: UInt64
    public let doorbellStride: Int
    /// CAP.TO: the longest wait for CSTS.RDY after a change of CC.EN.
    public let readyTimeoutMilliseconds: Int
    var admin: QueuePair
    var io: QueuePair
    /// Identify answers land here (4096 bytes).
    let identifyBuffer: UnsafeMutableRawPointer
    let identifyAddress: UInt64
    /// The PRP list of the command in flight: one page, 512 entries.
    let prpList: UnsafeMutableRawPointer
    let prpListAddress: UInt64
    /// Added to every data page address put in a command (negative control only).
    let dataAddressSkew: Int
    /// Set once the controller was enabled, cleared when it is disabled again.
    var enabled = false

    public private(set) var controller = NVMeControllerIdentity(
        serialNumber: "", modelNumber: "", firmwareRevision: "", maximumDataTransferBytes: nil, namespaceCount: 0, version: "")
    public private(set) var namespace = NVMeNamespace(id: 0, blockSize: 0, blockCount: 0)
    /// The largest read or write: MDTS, and at most one PRP list page (512 entries) past the first page.
    public private(set) var maximumTransferSize = 0
    /// The data page addresses the last Read or Write gave the controller
    /// (PRP1 with its offset, then each further page), for checks.
    public private(set) var lastDataPages: [UInt64] = []

    /// How long a command may take before ``NVMeError/timeout(waitingFor:milliseconds:)``.
    public static let commandTimeoutMilliseconds = 30_000

    /// Without an IOMMU: registers through sysfs `resource0`, commands carry
    /// physical addresses. Resets and enables the controller, identifies it
    /// and namespace `namespaceID`, and creates one I/O queue pair of
    /// `queueDepth` entries. `dataAddressSkew` moves every data page address
    /// given to the controller (a test's negative control: data goes elsewhere).
    public convenience init(
        device: PCIDevice, heap: DMAHeap, namespaceID: UInt32 = 1, queueDepth: Int = 64, dataAddressSkew: Int = 0
    ) throws(NVMeError) {
        guard device.classCode == nvmeClassCode else { throw .notNVMe(device: device.address, classCode: device.classCode) }
        let registers: PCIBARMapping
        do {
            try device.enableMemoryAndBusMastering()
            registers = try device.mapBAR(0)
        } catch { throw .pci(error) }
        try self.init(registers: registers, address: device.address, heap: heap, namespaceID: namespaceID,
                      queueDepth: queueDepth, dataAddressSkew: dataAddressSkew)
    }

    /// Through VFIO: registers through the device descriptor; `heap` must
    /// already be attached to the device's container, so its IOVAs are what
    /// the driver puts in commands. The same driver otherwise.
    public convenience init(
        vfio device: borrowing VFIODevice, heap: DMAHeap, namespaceID: UInt32 = 1, queueDepth: Int = 64,
        dataAddressSkew: Int = 0
    ) throws(NVMeError) {
        let registers: PCIBARMapping
        do {
            // Class code (PCI config 09h-0Bh): programming interface, subclass, class.
            let classCode = UInt32(try device.readConfig16(0x0A)) << 8 | UInt32(try device.readConfig16(0x08) >> 8)
            guard classCode == nvmeClassCode else { throw NVMeError.notNVMe(device: device.address, classCode: classCode) }
            try device.enableMemoryAndBusMastering()
            registers = try device.mapBAR(0)
        } catch let error as NVMeError { throw error } catch let error as VFIOError { throw .vfio(error) } catch {
            throw .unsupportedController("\(error)")
        }
        try self.init(registers: registers, address: device.address, heap: heap, namespaceID: namespaceID,
                      queueDepth: queueDepth, dataAddressSkew: dataAddressSkew)
    }

    init(
        registers: consuming PCIBARMapping, address: PCIAddress, heap: DMAHeap, namespaceID: UInt32,
        queueDepth: Int, dataAddressSkew: Int
    ) throws(NVMeError) {
        let cap = UInt64(registers.read32(Register.cap)) | UInt64(registers.read32(Register.cap + 4)) << 32
        guard Capabilities.minimumPageSize(cap) == memoryPageSize else {
            throw .unsupportedController("its smallest memory page is \(Capabilities.minimumPageSize(cap)) bytes (CAP.MPSMIN); the driver uses 4096")
        }
        guard Capabilities.supportsNVMCommandSet(cap) else { throw .unsupportedController("no NVM command set (CAP.CSS)") }
        let stride = Capabilities.doorbellStride(cap)
        let depth = min(queueDepth, Capabilities.maximumQueueEntries(cap), memoryPageSize / SubmissionEntry.size)
        guard depth >= 2 else { throw .invalidQueueDepth(queueDepth) }

        // All DMA memory first; if a piece fails, `memory` gives back what it has.
        let memory = DMAMemory(heap: heap)
        let admin = try QueuePair(id: 0, depth: 32, memory: memory, doorbellStride: stride)
        let io = try QueuePair(id: 1, depth: depth, memory: memory, doorbellStride: stride)
        let (identifyPage, identifyAddress) = try memory.allocate(Identify.dataSize, for: "Identify buffer")
        let (listPage, listAddress) = try memory.allocate(memoryPageSize, for: "PRP list page")
        self.bar = registers
        self.address = address
        self.heap = heap
        self.capabilities = cap
        self.doorbellStride = stride
        self.readyTimeoutMilliseconds = max(Capabilities.timeoutMilliseconds(cap), 500)
        self.admin = admin
        self.io = io
        self.memory = memory
        self.identifyBuffer = identifyPage
        self.identifyAddress = identifyAddress
        self.prpList = listPage
        self.prpListAddress = listAddress
        self.dataAddressSkew = dataAddressSkew

        // From here a failure runs deinit, which disables the controller and frees the memory.
        try enable()
        controller = try identifyController()
        namespace = try identifyNamespace(namespaceID)
        let mdts = controller.maximumDataTransferBytes ?? Int.max
        maximumTransferSize = min(mdts, 512 * memoryPageSize)
        try createIOQueues()
    }

    // MARK: reset and enable (7.6.1)

    func write64(_ offset: Int, _ value: UInt64) {
        bar.write32(offset, UInt32(truncatingIfNeeded: value))
        bar.write32(offset + 4, UInt32(truncatingIfNeeded: value >> 32))
    }

    /// Waits until CSTS.RDY equals `ready`, polling each millisecond for up to CAP.TO.
    func waitForReady(_ ready: Bool) throws(NVMeError) {
        var waited = 0
        while true {
            let csts = bar.read32(Register.csts)
            if ready && csts & Status.fatal != 0 { throw .controllerFatal }
            if (csts & Status.ready != 0) == ready { return }
            guard waited < readyTimeoutMilliseconds else {
                throw .timeout(waitingFor: "CSTS.RDY = \(ready ? 1 : 0)", milliseconds: waited)
            }
            usleep(1000)
            waited += 1
        }
    }

    /// Clears CC.EN (a controller reset: every queue is deleted) and waits for CSTS.RDY = 0.
    func disable() throws(NVMeError) {
        bar.write32(Register.cc, bar.read32(Register.cc) & ~Configuration.enable)
        try waitForReady(false)
        enabled = false
    }

    /// Resets the controller, gives it the admin queues (AQA, ASQ, ACQ), sets
    /// the page size, entry sizes and command set in CC, and enables it.
    func enable() throws(NVMeError) {
        try disable()
        bar.write32(Register.intms, 0xFFFF_FFFF)  // polled: no pin-based or MSI interrupts
        bar.write32(Register.aqa, UInt32(admin.depth - 1) << 16 | UInt32(admin.depth - 1))  // ACQS, ASQS (0-based)
        write64(Register.asq, admin.submissionAddress)
        write64(Register.acq, admin.completionAddress)
        bar.write32(Register.cc, Configuration.completionEntrySize | Configuration.submissionEntrySize
                    | Configuration.roundRobin | Configuration.pageSize4K | Configuration.nvmCommandSet)
        bar.write32(Register.cc, bar.read32(Register.cc) | Configuration.enable)
        enabled = true
        try waitForReady(true)
    }

    // MARK: commands

    /// Submits `command`, rings the tail doorbell, polls for its completion,
    /// rings the head doorbell, and turns an error status into ``NVMeError``.
    /// Returns completion dword 0.
    @discardableResult
    func execute(_ command: Command, on queue: inout QueuePair) throws(NVMeError) -> UInt32 {
        let id = queue.place(command)
        bar.writeBarrier()  // the entry (and any PRP list) before the doorbell
        bar.write32(queue.tailDoorbell, UInt32(queue.tail))
        let clock = ContinuousClock()
        let deadline = clock.now + .milliseconds(Self.commandTimeoutMilliseconds)
        var spins = 0
        while true {
            if let completion = queue.takeCompletion() {
                bar.write32(queue.headDoorbell, UInt32(queue.head))
                guard completion.commandID == id else {
                    throw .unsupportedController("completion for command \(completion.commandID) while \(id) was the one in flight")
                }
                guard completion.status.isSuccess else { throw .commandFailed(command: command.name, status: completion.status) }
                return completion.dword0
            }
            spins += 1
            if spins % 1024 == 0 {
                if bar.read32(Register.csts) & Status.fatal != 0 { throw .controllerFatal }
                if clock.now > deadline {
                    throw .timeout(waitingFor: "completion of \(command.name)", milliseconds: Self.commandTimeoutMilliseconds)
                }
            }
        }
    }

    /// Text of an Identify field: ASCII, padded with spaces.
    func identifyText(_ range: Range<Int>) -> String {
        let bytes = UnsafeRawBufferPointer(start: identifyBuffer + range.lowerBound, count: range.count)
        let text = bytes.prefix { $0 != 0 }
        return String(decoding: text.reversed().drop { $0 == 0x20 }.reversed(), as: UTF8.self)
    }

    func identify(cns: UInt32, namespaceID: UInt32 = 0, name: String) throws(NVMeError) {
        try execute(Command(name: name, opcode: AdminOpcode.identify, namespaceID: namespaceID, prp1: identifyAddress, cdw10: cns),
                    on: &admin)
    }

    /// Identify Controller (CNS 01h).
    func identifyController() throws(NVMeError) -> NVMeControllerIdentity {
        try identify(cns: Identify.controllerCNS, name: "Identify Controller")
        let mdts = Int(identifyBuffer.load(fromByteOffset: Identify.maximumDataTransfer, as: UInt8.self))
        let vs = bar.read32(Register.vs)
        return NVMeControllerIdentity(
            serialNumber: identifyText(Identify.serialNumber),
            modelNumber: identifyText(Identify.modelNumber),
            firmwareRevision: identifyText(Identify.firmwareRevision),
            maximumDataTransferBytes: mdts == 0 ? nil : (1 << mdts) * Capabilities.minimumPageSize(capabilities),
            namespaceCount: UInt32(littleEndian: identifyBuffer.loadUnaligned(fromByteOffset: Identify.namespaceCount, as: UInt32.self)),
            version: "\(vs >> 16).\(vs >> 8 & 0xFF).\(vs & 0xFF)")
    }

    /// Identify Namespace (CNS 00h): the size and the block size of the formatted LBA format.
    public func identifyNamespace(_ id: UInt32) throws(NVMeError) -> NVMeNamespace {
        try identify(cns: Identify.namespaceCNS, namespaceID: id, name: "Identify Namespace \(id)")
        let size = UInt64(littleEndian: identifyBuffer.loadUnaligned(fromByteOffset: Identify.namespaceSize, as: UInt64.self))
        guard size > 0 else { throw .noSuchNamespace(id, namespaceCount: controller.namespaceCount) }
        let format = Int(identifyBuffer.load(fromByteOffset: Identify.formattedLBASize, as: UInt8.self) & 0xF)
        let lbads = identifyBuffer.load(fromByteOffset: Identify.lbaFormats + 4 * format + 2, as: UInt8.self)
        return NVMeNamespace(id: id, blockSize: 1 << Int(lbads), blockCount: size)
    }

    /// Create I/O Completion Queue, then Create I/O Submission Queue posting to it (5.3, 5.4).
    func createIOQueues() throws(NVMeError) {
        let sizeAndID = UInt32(io.depth - 1) << 16 | UInt32(io.id)  // QSIZE (0-based), QID
        try execute(Command(name: "Create I/O Completion Queue", opcode: AdminOpcode.createIOCompletionQueue,
                            prp1: io.completionAddress, cdw10: sizeAndID,
                            cdw11: CreateQueue.physicallyContiguous | CreateQueue.interruptsDisabled), on: &admin)
        try execute(Command(name: "Create I/O Submission Queue", opcode: AdminOpcode.createIOSubmissionQueue,
                            prp1: io.submissionAddress, cdw10: sizeAndID,
                            cdw11: UInt32(io.id) << 16 | CreateQueue.physicallyContiguous), on: &admin)  // CQID
    }

    // MARK: data pointers (4.3)

    /// PRP1 and PRP2 for `length` bytes at `buffer`: PRP1 is the first
    /// byte's address (any 4-byte aligned offset in its page); PRP2 is
    /// unused for one page, the second page's address for two, and the
    /// address of the PRP list holding every page after the first for more.
    func dataPointer(_ buffer: UnsafeRawPointer, length: Int) throws(NVMeError) -> (prp1: UInt64, prp2: UInt64) {
        let offset = Int(UInt(bitPattern: buffer) % UInt(memoryPageSize))
        let pageCount = (offset + length + memoryPageSize - 1) / memoryPageSize
        var pages: [UInt64] = []
        pages.reserveCapacity(pageCount)
        for page in 0..<pageCount {
            let start = page == 0 ? buffer : buffer + (page * memoryPageSize - offset)
            guard let address = heap.iova(of: start) else {
                throw .noDeviceAddress(what: "byte \(page == 0 ? 0 : page * memoryPageSize - offset) of the data buffer")
            }
            pages.append(address &+ UInt64(bitPattern: Int64(dataAddressSkew)))
        }
        guard pages[0] & 3 == 0 else { throw .invalidTransfer("the data buffer must be 4-byte aligned (PRP1 bits 1:0)") }
        lastDataPages = pages
        switch pageCount {
        case 1: return (pages[0], 0)
        case 2: return (pages[0], pages[1])
        default:
            for (i, page) in pages.dropFirst().enumerated() {
                prpList.storeBytes(of: page.littleEndian, toByteOffset: 8 * i, as: UInt64.self)
            }
            return (pages[0], prpListAddress)
        }
    }

    // MARK: Read, Write, Flush

    func transfer(_ name: String, _ opcode: UInt8, _ buffer: UnsafeRawPointer, lba: UInt64, blocks: Int) throws(NVMeError) {
        let length = blocks * namespace.blockSize
        guard blocks >= 1, length <= maximumTransferSize else {
            throw .invalidTransfer("\(blocks) blocks of \(namespace.blockSize) bytes; one command moves 1...\(maximumTransferSize / namespace.blockSize) blocks")
        }
        guard lba < namespace.blockCount, UInt64(blocks) <= namespace.blockCount - lba else {
            throw .invalidTransfer("blocks \(lba)..<\(lba + UInt64(blocks)) are past the end of namespace \(namespace.id) (\(namespace.blockCount) blocks)")
        }
        let (prp1, prp2) = try dataPointer(buffer, length: length)
        try execute(Command(name: "\(name) of \(blocks) blocks at LBA \(lba)", opcode: opcode, namespaceID: namespace.id,
                            prp1: prp1, prp2: prp2,
                            cdw10: UInt32(truncatingIfNeeded: lba), cdw11: UInt32(truncatingIfNeeded: lba >> 32),  // SLBA
                            cdw12: UInt32(blocks - 1)), on: &io)  // NLB, 0-based
    }

    /// Reads `blocks` logical blocks from `lba` into `buffer` (DMA-heap
    /// memory of at least blocks × block size bytes, 4-byte aligned).
    public func read(into buffer: UnsafeMutableRawPointer, lba: UInt64, blocks: Int) throws(NVMeError) {
        try transfer("Read", IOOpcode.read, buffer, lba: lba, blocks: blocks)
    }

    /// Writes `blocks` logical blocks at `lba` from `buffer` (DMA-heap memory, 4-byte aligned).
    public func write(from buffer: UnsafeRawPointer, lba: UInt64, blocks: Int) throws(NVMeError) {
        try transfer("Write", IOOpcode.write, buffer, lba: lba, blocks: blocks)
    }

    /// Commits the controller's volatile write cache to the medium.
    public func flush() throws(NVMeError) {
        try execute(Command(name: "Flush", opcode: IOOpcode.flush, namespaceID: namespace.id), on: &io)
    }

    /// The DMA memory the driver gave the controller, with the address it
    /// used for each, for checks against another source of addresses.
    public var queueMemory: [(name: String, pointer: UnsafeRawPointer, deviceAddress: UInt64)] {
        [("admin submission queue", UnsafeRawPointer(admin.submissions), admin.submissionAddress),
         ("admin completion queue", UnsafeRawPointer(admin.completions), admin.completionAddress),
         ("I/O submission queue", UnsafeRawPointer(io.submissions), io.submissionAddress),
         ("I/O completion queue", UnsafeRawPointer(io.completions), io.completionAddress),
         ("PRP list", UnsafeRawPointer(prpList), prpListAddress)]
    }

    // MARK: shutdown (7.6.2)

    /// Normal shutdown (CC.SHN = 01b, then CSTS.SHST = 10b: the controller
    /// has flushed its caches), then disables the controller.
    public func shutdown() throws(NVMeError) {
        guard enabled else { return }
        bar.write32(Register.cc, bar.read32(Register.cc) & ~Configuration.shutdownMask | Configuration.shutdownNormal)
        var waited = 0
        while bar.read32(Register.csts) & Status.shutdownMask != Status.shutdownComplete {
            guard waited < readyTimeoutMilliseconds else {
                throw .timeout(waitingFor: "CSTS.SHST = shutdown complete", milliseconds: waited)
            }
            usleep(1000)
            waited += 1
        }
        try disable()
    }

    deinit {
        if enabled { try? shutdown() }
        if enabled { try? disable() }
        // Memory a controller that would not stop might still write is leaked rather than reused.
        memory.leak = enabled
    }
}
