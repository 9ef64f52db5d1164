import Glibc
import HugeAlloc
import Synchronization

/// What can stop the driver from starting.
public enum E1000Error: Error, CustomStringConvertible {
    case pci(PCIError)
    case vfio(VFIOError)
    /// The device is not an 82540EM-compatible e1000 (`8086:100e`).
    case unsupportedDevice(PCIDeviceID)
    case ringMemory(MappingError)
    /// The kernel hid physical addresses (not root): descriptors cannot be filled in.
    case physicalAddressesHidden
    /// The pool's buffers are smaller than the 2048 bytes the receive rings are set up for.
    case dataRoomTooSmall(have: Int, need: Int)
    /// The pool ran out while filling the receive ring.
    case poolExhausted(needed: Int, available: Int)
    /// STATUS.LU stayed clear after setting CTRL.SLU.
    case linkDown(afterMilliseconds: Int)

    public var description: String {
        switch self {
        case .pci(let e): return e.description
        case .vfio(let e): return e.description
        case .unsupportedDevice(let id): return "PCI device \(id) is not an 82540EM (8086:100e)"
        case .ringMemory(let e): return "descriptor ring memory: \(e)"
        case .physicalAddressesHidden: return "physical addresses are hidden (run as root): descriptors need them"
        case .dataRoomTooSmall(let have, let need): return "packet buffers hold \(have) data bytes; the receive ring needs \(need)"
        case .poolExhausted(let needed, let available): return "the packet pool has \(available) free buffers; the receive ring needs \(needed)"
        case .linkDown(let ms): return "the link did not come up within \(ms) ms"
        }
    }
}

/// Packet and byte counts, accumulated from the device's clear-on-read counters (13.7).
public struct E1000Statistics: Sendable, Equatable {
    public var rxPackets = 0, txPackets = 0, rxBytes = 0, txBytes = 0
    /// Frames dropped because no receive descriptor was free.
    public var rxMissed = 0
    public var crcErrors = 0
}

/// A user-space driver for the Intel 82540EM (QEMU's e1000): one receive
/// and one transmit ring of legacy descriptors in hugepage memory, receive
/// buffers from a `PacketPool` whose addresses go into the
/// descriptors, polled bulk receive and transmit, no interrupts.
///
/// The device must be bound to no kernel driver; the process must be root
/// (sysfs BAR and config access, physical addresses from pagemap). One
/// instance per device; it owns the BAR mapping and the ring memory (both
/// noncopyable) and releases them, and its buffers, when it goes away.
public final class E1000 {
    public let address: PCIAddress
    public let pool: PacketPool
    let bar: PCIBARMapping
    /// Both descriptor rings, in one 2 MiB hugepage: RX at 0, TX after it.
    let rings: MemoryMapping
    let rxCount: Int, txCount: Int
    let txRingOffset: Int
    /// The buffer posted at each receive slot.
    var rxBuffers: [PacketBuffer?]
    /// The buffer queued at each transmit slot until the device is done with it.
    var txBuffers: [PacketBuffer?]
    /// Next receive slot the device will fill.
    var rxNext = 0
    /// Next free transmit slot (the tail) and oldest one not yet reclaimed.
    var txTail = 0, txClean = 0
    /// Added to every receive buffer address given to the device (negative control only).
    let rxAddressSkew: Int
    var totals = E1000Statistics()

    /// The receive buffer size programmed in RCTL.
    public static let receiveBufferSize = 2048

    /// How the device sees memory: by physical address (no IOMMU, BAR
    /// through sysfs) or by IOVA = virtual address in a VFIO container.
    public enum Addressing: Sendable { case physical, virtualAddressAsIOVA }
    public let addressing: Addressing

    /// Without an IOMMU: registers through sysfs `resource0`, descriptors
    /// carry physical addresses. Resets the device, brings the link up and
    /// starts both rings. `rxAddressSkew` moves every receive buffer address
    /// handed to the device (a test's negative control: frames land elsewhere).
    public convenience init(
        device: PCIDevice, pool: PacketPool, rxRingSize: Int = 256, txRingSize: Int = 256,
        rxAddressSkew: Int = 0, linkTimeoutMilliseconds: Int = 10_000
    ) throws(E1000Error) {
        guard device.id == PCIDeviceID(vendor: 0x8086, device: 0x100e) else { throw .unsupportedDevice(device.id) }
        let registers = try Self.openRegisters(device)
        let ringMemory = try Self.makeRingMemory()
        guard ringMemory.physicalAddress(atOffset: 0) != nil else { throw .physicalAddressesHidden }
        try self.init(registers: registers, rings: ringMemory, address: device.address, pool: pool, addressing: .physical,
                      rxRingSize: rxRingSize, txRingSize: txRingSize, rxAddressSkew: rxAddressSkew,
                      linkTimeoutMilliseconds: linkTimeoutMilliseconds)
    }

    /// Through VFIO: registers through the device descriptor, the ring
    /// memory and the pool's memory mapped in `container` at IOVA = virtual
    /// address (they stay mapped as long as the container), descriptors
    /// carry virtual addresses. The same driver otherwise.
    public convenience init(
        vfio device: borrowing VFIODevice, container: borrowing VFIOContainer, pool: PacketPool,
        rxRingSize: Int = 256, txRingSize: Int = 256, rxAddressSkew: Int = 0, linkTimeoutMilliseconds: Int = 10_000
    ) throws(E1000Error) {
        let registers: PCIBARMapping
        do {
            try device.enableMemoryAndBusMastering()
            registers = try device.mapBAR(0)
        } catch { throw .vfio(error) }
        let ringMemory = try Self.makeRingMemory()
        do {
            try container.map(MemoryRegion(address: UInt(bitPattern: ringMemory.base), length: ringMemory.length,
                                           pageSize: ringMemory.pageSize, pieces: []))
            try container.attach(pool)
        } catch { throw .vfio(error) }
        try self.init(registers: registers, rings: ringMemory, address: device.address, pool: pool,
                      addressing: .virtualAddressAsIOVA, rxRingSize: rxRingSize, txRingSize: txRingSize,
                      rxAddressSkew: rxAddressSkew, linkTimeoutMilliseconds: linkTimeoutMilliseconds)
    }

    init(
        registers: consuming PCIBARMapping, rings ringMemory: consuming MemoryMapping, address: PCIAddress,
        pool: PacketPool, addressing: Addressing, rxRingSize: Int, txRingSize: Int, rxAddressSkew: Int,
        linkTimeoutMilliseconds: Int
    ) throws(E1000Error) {
        precondition(rxRingSize % 8 == 0 && txRingSize % 8 == 0, "ring sizes are multiples of 8 (RDLEN/TDLEN: 128 bytes)")
        guard pool.dataRoom >= Self.receiveBufferSize else {
            throw .dataRoomTooSmall(have: pool.dataRoom, need: Self.receiveBufferSize)
        }
        self.bar = registers
        self.rings = ringMemory
        self.address = address
        self.addressing = addressing
        self.pool = pool
        rxCount = rxRingSize
        txCount = txRingSize
        txRingOffset = (rxRingSize * RXDescriptor.size + 4095) / 4096 * 4096
        rxBuffers = Array(repeating: nil, count: rxRingSize)
        txBuffers = Array(repeating: nil, count: txRingSize)
        self.rxAddressSkew = rxAddressSkew

        resetAndLinkUp()
        try waitForLink(milliseconds: linkTimeoutMilliseconds)
        for i in 0..<128 { bar.write32(Register.mta + 4 * i, 0) }
        _ = readStatistics()  // start the counters at zero
        try startReceive()
        startTransmit()
    }

    /// Enables memory decoding and bus mastering, then maps BAR0.
    static func openRegisters(_ device: PCIDevice) throws(E1000Error) -> PCIBARMapping {
        do {
            try device.enableMemoryAndBusMastering()
            return try device.mapBAR(0)
        } catch { throw .pci(error) }
    }

    /// One locked 2 MiB hugepage for both rings.
    static func makeRingMemory() throws(E1000Error) -> MemoryMapping {
        do { return try MemoryMapping(length: PageSize.huge2M.bytes) } catch { throw .ringMemory(error) }
    }

    // MARK: reset and link (manual, chapter 14: initialization)

    func resetAndLinkUp() {
        bar.write32(Register.imc, 0xFFFF_FFFF)  // polled driver: no interrupts
        bar.write32(Register.ctrl, bar.read32(Register.ctrl) | Control.reset)
        var spins = 0
        while bar.read32(Register.ctrl) & Control.reset != 0 && spins < 1_000_000 { spins += 1 }
        bar.write32(Register.imc, 0xFFFF_FFFF)
        _ = bar.read32(Register.icr)
        var ctrl = bar.read32(Register.ctrl)
        ctrl |= Control.setLinkUp | Control.autoSpeedDetection | Control.fullDuplex
        ctrl &= ~(Control.linkReset | Control.phyReset | Control.invertLossOfSignal)
        bar.write32(Register.ctrl, ctrl)
    }

    func waitForLink(milliseconds: Int) throws(E1000Error) {
        var waited = 0
        while !linkUp {
            guard waited < milliseconds else { throw .linkDown(afterMilliseconds: waited) }
            sleepMilliseconds(10)
            waited += 10
        }
    }

    /// STATUS.LU.
    public var linkUp: Bool { bar.read32(Register.status) & Status.linkUp != 0 }

    // MARK: rings

    /// The address the device is given for a byte of the ring memory.
    func ringAddress(_ offset: Int) -> PhysicalAddress {
        switch addressing {
        case .physical: rings.physicalAddress(atOffset: offset)!
        case .virtualAddressAsIOVA: PhysicalAddress(UInt64(UInt(bitPattern: rings.base + offset)))
        }
    }

    /// The address the device is given for a buffer's first data byte: the
    /// library's device address of it — its physical address, or, once the
    /// pool is attached to the VFIO container, its IOVA. No arithmetic here.
    public func deviceAddress(of buffer: PacketBuffer) -> PhysicalAddress? {
        buffer.dataPhysicalAddress
    }

    func descriptor(_ offset: Int) -> UnsafeMutableRawPointer { rings.base + offset }

    /// The descriptor's status word, loaded after the device's write of it
    /// (acquiring: the buffer and length it covers are read after it).
    func statusWord(_ offset: Int) -> UInt32 {
        descriptor(offset).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.load(ordering: .acquiring)
    }

    func clearStatusWord(_ offset: Int) {
        descriptor(offset).assumingMemoryBound(to: Atomic<UInt32>.self).pointee.store(0, ordering: .releasing)
    }

    /// The address a receive buffer gets in its descriptor.
    func receiveAddress(of buffer: PacketBuffer) -> UInt64 {
        deviceAddress(of: buffer)!.rawValue &+ UInt64(bitPattern: Int64(rxAddressSkew))
    }

    func post(_ buffer: PacketBuffer, at slot: Int) {
        let d = descriptor(slot * RXDescriptor.size)
        d.storeBytes(of: receiveAddress(of: buffer).littleEndian, toByteOffset: RXDescriptor.address, as: UInt64.self)
        d.storeBytes(of: 0, toByteOffset: RXDescriptor.length, as: UInt32.self)
        clearStatusWord(slot * RXDescriptor.size + RXDescriptor.statusWord)
        rxBuffers[slot] = buffer
    }

    func startReceive() throws(E1000Error) {
        guard let buffers = pool.allocate(count: rxCount) else {
            throw .poolExhausted(needed: rxCount, available: pool.availableCount)
        }
        guard deviceAddress(of: buffers[0]) != nil else { pool.free(buffers); throw .physicalAddressesHidden }
        for (slot, buffer) in buffers.enumerated() { post(buffer, at: slot) }
        let base = ringAddress(0).rawValue
        bar.write32(Register.rdbal, UInt32(truncatingIfNeeded: base))
        bar.write32(Register.rdbah, UInt32(truncatingIfNeeded: base >> 32))
        bar.write32(Register.rdlen, UInt32(rxCount * RXDescriptor.size))
        bar.write32(Register.rdh, 0)
        bar.writeBarrier()
        // Head == tail means "ring empty": keep one slot back.
        bar.write32(Register.rdt, UInt32(rxCount - 1))
        bar.write32(Register.rctl, ReceiveControl.enable | ReceiveControl.unicastPromiscuous
                    | ReceiveControl.multicastPromiscuous | ReceiveControl.broadcastAccept
                    | ReceiveControl.bufferSize2048 | ReceiveControl.stripCRC)
    }

    func startTransmit() {
        let base = ringAddress(txRingOffset).rawValue
        for slot in 0..<txCount {
            let d = descriptor(txRingOffset + slot * TXDescriptor.size)
            d.initializeMemory(as: UInt8.self, repeating: 0, count: TXDescriptor.size)
        }
        bar.write32(Register.tdbal, UInt32(truncatingIfNeeded: base))
        bar.write32(Register.tdbah, UInt32(truncatingIfNeeded: base >> 32))
        bar.write32(Register.tdlen, UInt32(txCount * TXDescriptor.size))
        bar.write32(Register.tdh, 0)
        bar.write32(Register.tdt, 0)
        bar.write32(Register.tipg, transmitInterPacketGap)
        bar.write32(Register.tctl, TransmitControl.enable | TransmitControl.padShortPackets
                    | TransmitControl.collisionThreshold | TransmitControl.collisionDistance)
    }

    // MARK: receive

    /// Moves up to `maximum` received frames into `packets` (appended; the
    /// caller frees them to the pool) and refills their slots with new
    /// buffers allocated in one bulk call. Returns the count received.
    public func receive(into packets: inout [PacketBuffer], maximum: Int = 32) -> Int {
        var ready = 0
        while ready < maximum,
              statusWord(((rxNext + ready) % rxCount) * RXDescriptor.size + RXDescriptor.statusWord)
                  & RXDescriptor.descriptorDone != 0 {
            ready += 1
        }
        // Replacements first, in one bulk call; with the pool short, take fewer frames now.
        var fresh: [PacketBuffer] = []
        while ready > 0 {
            if let buffers = pool.allocate(count: ready) { fresh = buffers; break }
            ready /= 2
        }
        guard ready > 0 else { return 0 }
        var last = rxNext
        for i in 0..<ready {
            let slot = rxNext
            let d = descriptor(slot * RXDescriptor.size)
            let length = Int(UInt16(littleEndian: d.load(fromByteOffset: RXDescriptor.length, as: UInt16.self)))
            let buffer = rxBuffers[slot]!
            buffer.length = length
            packets.append(buffer)
            post(fresh[i], at: slot)
            last = slot
            rxNext = (slot + 1) % rxCount
        }
        bar.writeBarrier()
        bar.write32(Register.rdt, UInt32(last))
        return ready
    }

    /// The address in each receive descriptor now posted and the buffer
    /// the driver posted there, for checks that the device was given the
    /// library's physical address of each buffer.
    public func postedReceiveDescriptors() -> [(descriptorAddress: PhysicalAddress, buffer: PacketBuffer)] {
        (0..<rxCount).map { slot in
            let raw = descriptor(slot * RXDescriptor.size).load(fromByteOffset: RXDescriptor.address, as: UInt64.self)
            return (PhysicalAddress(UInt64(littleEndian: raw)), rxBuffers[slot]!)
        }
    }

    /// Points the next receive descriptor at `address` instead of its
    /// buffer's (the buffer stays posted there). For fault-injection tests:
    /// an IOVA the container does not map must make the IOMMU refuse the
    /// device's write. Returns the slot changed.
    @discardableResult
    public func overrideNextReceiveAddress(_ address: PhysicalAddress) -> Int {
        descriptor(rxNext * RXDescriptor.size)
            .storeBytes(of: address.rawValue.littleEndian, toByteOffset: RXDescriptor.address, as: UInt64.self)
        bar.writeBarrier()
        return rxNext
    }

    // MARK: transmit

    /// Frees the buffers of transmit descriptors the device has finished, in one bulk free.
    public func reclaimTransmitted() {
        var done: [PacketBuffer] = []
        while txClean != txTail,
              statusWord(txRingOffset + txClean * TXDescriptor.size + TXDescriptor.statusWord)
                  & TXDescriptor.descriptorDone != 0 {
            done.append(txBuffers[txClean]!)
            txBuffers[txClean] = nil
            txClean = (txClean + 1) % txCount
        }
        if !done.isEmpty { pool.free(done) }
    }

    /// Queues one-segment frames for sending, as many as the ring has room
    /// for, and returns how many it took; the driver frees those to their
    /// pool once sent. The rest stay the caller's.
    public func transmit(_ packets: ArraySlice<PacketBuffer>) -> Int {
        reclaimTransmitted()
        var sent = 0
        for buffer in packets {
            let next = (txTail + 1) % txCount
            guard next != txClean, let physical = deviceAddress(of: buffer) else { break }
            let d = descriptor(txRingOffset + txTail * TXDescriptor.size)
            d.storeBytes(of: physical.rawValue.littleEndian, toByteOffset: TXDescriptor.address, as: UInt64.self)
            d.storeBytes(of: UInt16(buffer.length).littleEndian, toByteOffset: TXDescriptor.length, as: UInt16.self)
            d.storeBytes(of: UInt8(0), toByteOffset: TXDescriptor.length + 2, as: UInt8.self)
            d.storeBytes(of: TXDescriptor.endOfPacket | TXDescriptor.insertFCS | TXDescriptor.reportStatus,
                         toByteOffset: TXDescriptor.command, as: UInt8.self)
            clearStatusWord(txRingOffset + txTail * TXDescriptor.size + TXDescriptor.statusWord)
            txBuffers[txTail] = buffer
            txTail = next
            sent += 1
        }
        if sent > 0 {
            bar.writeBarrier()
            bar.write32(Register.tdt, UInt32(txTail))
        }
        return sent
    }

    /// Frames queued and not yet reclaimed.
    public var transmitInFlight: Int { (txTail - txClean + txCount) % txCount }

    // MARK: statistics (13.7)

    /// Totals since start: the device's counters clear on read, so each
    /// call adds what they gathered since the last.
    public func readStatistics() -> E1000Statistics {
        totals.rxPackets += Int(bar.read32(Register.gprc))
        totals.txPackets += Int(bar.read32(Register.gptc))
        totals.rxBytes += Int(bar.read32(Register.gorcl)) | Int(bar.read32(Register.gorch)) << 32
        totals.txBytes += Int(bar.read32(Register.gotcl)) | Int(bar.read32(Register.gotch)) << 32
        totals.rxMissed += Int(bar.read32(Register.mpc))
        totals.crcErrors += Int(bar.read32(Register.crcerrs))
        return totals
    }

    deinit {
        bar.write32(Register.rctl, 0)
        bar.write32(Register.tctl, 0)
        let held = rxBuffers.compactMap { $0 } + txBuffers.compactMap { $0 }
        if !held.isEmpty { pool.free(held) }
    }
}

/// Sleeps the calling thread. The corresponding C function is `usleep(3)`.
func sleepMilliseconds(_ ms: Int) {
    _ = usleep(UInt32(ms * 1000))
}
