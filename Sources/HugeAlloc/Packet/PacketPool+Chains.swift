/// Multi-segment packets and clones.
extension PacketPool {
    /// Allocates a packet of `length` bytes as a chain of as many buffers as
    /// it takes (each filled to its data room but the last), with
    /// ``PacketBuffer/packetLength`` and ``PacketBuffer/segmentCount`` set on
    /// the first. Throws when the pool has too few free buffers.
    public func allocateFrame(length: Int) throws(PacketPoolError) -> PacketBuffer {
        // Bounds first: the segment count of a length near Int.max overflows.
        let maximum = min(Int(UInt16.max) * dataRoom, Int(UInt32.max))
        guard length >= 0, length <= maximum else { throw .frameTooLong(length: length, maximum: maximum) }
        let segments = max(1, (length + dataRoom - 1) / dataRoom)
        guard let buffers = allocate(count: segments) else {
            throw .exhausted(needed: segments, available: availableCount)
        }
        var left = length
        for (i, b) in buffers.enumerated() {
            let n = min(left, dataRoom)
            b.store(UInt16(n), PacketBuffer.Field.dataLength)
            left -= n
            if i + 1 < buffers.count {
                b.store(UInt64(UInt(bitPattern: unsafe buffers[i + 1].metadata)), PacketBuffer.Field.next)
            }
        }
        buffers[0].store(UInt16(segments), PacketBuffer.Field.segmentCount)
        buffers[0].store(UInt32(length), PacketBuffer.Field.packetLength)
        return buffers[0]
    }

    /// Appends packet `tail`'s segments to packet `head` (DPDK's
    /// `rte_pktmbuf_chain`): `head` then owns them. False, changing nothing,
    /// when the chain would pass 65535 segments or 4 GiB.
    @discardableResult
    public func chain(_ head: PacketBuffer, _ tail: PacketBuffer) -> Bool {
        let segments = head.segmentCount + tail.segmentCount
        let length = head.packetLength + tail.packetLength
        guard segments <= Int(UInt16.max), length <= Int(UInt32.max) else { return false }
        var last = head
        while let n = last.next { last = n }
        last.store(UInt64(UInt(bitPattern: unsafe tail.metadata)), PacketBuffer.Field.next)
        head.store(UInt16(segments), PacketBuffer.Field.segmentCount)
        head.store(UInt32(length), PacketBuffer.Field.packetLength)
        return true
    }

    /// A copy of `packet` that shares its data (DPDK's `rte_pktmbuf_clone`):
    /// one indirect buffer from this pool per segment, each pointing at the
    /// segment's data and holding a reference on the buffer that owns that
    /// memory. The data goes back to its pool when the original and every
    /// clone are freed. Nil when this pool has too few free buffers.
    public func clone(_ packet: PacketBuffer) -> PacketBuffer? {
        guard let clones = allocate(count: packet.segmentCount) else { return nil }
        var source: PacketBuffer? = packet
        for (i, c) in clones.enumerated() {
            let s = source!
            let direct = s.isIndirect ? s.directBuffer : s
            unsafe direct.referenceCounter.pointee.add(1, ordering: .relaxed)
            c.store(s.load(PacketBuffer.Field.bufferAddress, as: UInt64.self), PacketBuffer.Field.bufferAddress)
            c.store(s.load(PacketBuffer.Field.bufferPhysical, as: UInt64.self), PacketBuffer.Field.bufferPhysical)
            c.store(s.load(PacketBuffer.Field.bufferLength, as: UInt32.self), PacketBuffer.Field.bufferLength)
            c.store(s.load(PacketBuffer.Field.dataOffset, as: UInt16.self), PacketBuffer.Field.dataOffset)
            c.store(s.load(PacketBuffer.Field.dataLength, as: UInt16.self), PacketBuffer.Field.dataLength)
            c.store(PacketBuffer.indirectFlag, PacketBuffer.Field.flags)
            c.userData = s.userData
            if i + 1 < clones.count {
                c.store(UInt64(UInt(bitPattern: unsafe clones[i + 1].metadata)), PacketBuffer.Field.next)
            }
            source = s.next
        }
        clones[0].store(UInt16(clones.count), PacketBuffer.Field.segmentCount)
        clones[0].store(UInt32(packet.packetLength), PacketBuffer.Field.packetLength)
        return clones[0]
    }

    /// Copies `bytes` into `packet` from its first data byte on, across
    /// segments, and returns how many fit (segment lengths are unchanged).
    @discardableResult
    public func write(_ bytes: some Collection<UInt8>, into packet: PacketBuffer) -> Int {
        var written = 0
        var iterator = bytes.makeIterator()
        for segment in packet.segments {
            let data = unsafe segment.bytes
            for i in 0..<data.count {
                guard let byte = iterator.next() else { return written }
                unsafe data[i] = byte
                written += 1
            }
        }
        return written
    }
}

extension PacketBuffer {
    /// The segments of the packet starting here, in order.
    public var segments: Segments { Segments(first: self) }

    /// The segments of a packet.
    public struct Segments: Sequence {
        let first: PacketBuffer
        public struct Iterator: IteratorProtocol {
            var current: PacketBuffer?
            public mutating func next() -> PacketBuffer? {
                defer { current = current?.next }
                return current
            }
        }
        public func makeIterator() -> Iterator { Iterator(current: first) }
    }

    /// The packet's data, all segments concatenated (a copy).
    public var contents: [UInt8] {
        var result = [UInt8]()
        result.reserveCapacity(packetLength)
        for segment in segments { unsafe result.append(contentsOf: segment.bytes) }
        return result
    }
}
