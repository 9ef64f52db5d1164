import CHugeAllocShims

/// A received frame seen where the kernel wrote it: its buffer, the offset
/// of its first byte from the buffer's data room, and its length, read off
/// the RX descriptor (`struct xdp_desc`) without touching the buffer.
///
/// The buffer's metadata is as it was when the buffer went onto the fill
/// ring: free-state (one segment, one owner, this pool), with a stale data
/// offset and length. Hand the frame back to the kernel with
/// ``AFXDPSocket/recycle(_:)``, free ``buffer`` to the pool as it is, or
/// call ``adopt()`` to get a packet buffer whose data offset and length
/// describe the frame.
@frozen
public struct AFXDPFrame: Sendable {
    /// The buffer holding the frame.
    public let buffer: PacketBuffer
    /// Offset of the frame's first byte from the start of the buffer's data
    /// room (what ``PacketBuffer/dataOffset`` becomes with ``adopt()``).
    public let dataOffset: Int
    /// Bytes of the frame.
    public let length: Int

    @inlinable
    public init(buffer: PacketBuffer, dataOffset: Int, length: Int) {
        self.buffer = buffer
        self.dataOffset = dataOffset
        self.length = length
    }

    /// The frame's first byte.
    @inlinable
    public var data: UnsafeMutableRawPointer {
        unsafe buffer.metadata + PacketBuffer.metadataSize + dataOffset
    }

    /// Writes the frame's data offset and length into the buffer's metadata
    /// (what ``AFXDPSocket/receive(into:)`` does for every frame) and
    /// returns the buffer.
    @inlinable @discardableResult
    public func adopt() -> PacketBuffer {
        buffer.store(UInt64(dataOffset) | UInt64(length & 0xFFFF) &<< 16 | 1 &<< 32, PacketBuffer.Field.dataOffset)
        buffer.store(UInt32(truncatingIfNeeded: length), PacketBuffer.Field.packetLength)
        return buffer
    }
}

extension AFXDPSocket {
    /// Takes up to `frames.count` received frames off the RX ring into
    /// `frames`, as ``receive(into:)`` does, but without writing the
    /// buffers' metadata: each frame's offset and length come from its RX
    /// descriptor, and no buffer memory is touched. The buffers are the
    /// caller's (see ``AFXDPFrame``). For a loop that looks at frames in
    /// place and gives them straight back to the kernel with
    /// ``recycle(_:)``, as a libxdp program does with its fill ring, this
    /// skips a cache line per frame that is cold by the time the kernel
    /// hands the buffer back (it went onto a fill ring up to its depth of
    /// frames earlier). No allocation.
    public func receiveFrames(into frames: UnsafeMutableBufferPointer<AFXDPFrame>) -> Int {
        guard let out = frames.baseAddress else { return 0 }
        return takeReceived(maximum: frames.count) { i, frame in unsafe (out + i).initialize(to: frame) }
    }

    /// Puts the buffers of received frames straight back on the fill ring,
    /// from the front, without touching them; returns how many went (as
    /// many as the ring has room for). The rest stay the caller's: recycle
    /// them later or free their buffers to the pool. A frame whose buffer
    /// the kernel holds already, or that is not this UMEM's, ends the batch
    /// there (it stays the caller's). No allocation.
    @discardableResult
    public func recycle(_ frames: UnsafeBufferPointer<AFXDPFrame>) -> Int {
        var done = 0
        while done < frames.count {
            var first: UInt32 = 0
            let n = Int(unsafe ha_xsk_reserve(fillRing, UInt32(min(frames.count - done, AFXDPKernelBuffers.batchLimit)), &first))
            guard n > 0 else { break }
            let ring = unsafe fillRing.pointee
            let descs = unsafe ring.descs!.assumingMemoryBound(to: UInt64.self), mask = unsafe ring.mask
            var taken = 0
            while taken < n {
                guard let chunk = try? self.chunk(of: unsafe frames[done &+ taken].buffer), kernel.take(chunk) else { break }
                unsafe descs[Int((first &+ UInt32(truncatingIfNeeded: taken)) & mask)] = UInt64(chunk &<< chunkShift)
                taken &+= 1
            }
            // Only what was written: the reservation beyond it is given up.
            unsafe ha_xsk_submit(fillRing, UInt32(truncatingIfNeeded: taken))
            done &+= taken
            if taken < n { break }
        }
        return done
    }

    /// Sends frames described by their buffer, data offset and length, as
    /// ``transmit(_:kick:)-(UnsafeBufferPointer<PacketBuffer>,_)`` sends
    /// packet buffers, but without reading the buffers' metadata: the TX
    /// descriptor is the frame's (a loop that resends buffers it wrote once,
    /// or forwards frames from ``receiveFrames(into:)`` after editing them in
    /// place). The buffers come back on the completion ring
    /// (``takeCompleted(into:)``, which touches no buffer memory either, or
    /// ``freeCompleted(maximum:)``, which reads the metadata to free them).
    /// Returns how many were taken, from the front; throws, taking none,
    /// when the first frame is not in one of this UMEM's buffers, is empty
    /// or runs past its buffer, or the kernel holds its buffer already.
    @discardableResult
    public func transmitFrames(_ frames: UnsafeBufferPointer<AFXDPFrame>, kick: Bool = true) throws(AFXDPError) -> Int {
        let room = layout.chunkSize &- PacketBuffer.metadataSize
        return try putOnTransmitRing(count: frames.count, kick: kick) { (i) throws(AFXDPError) in
            let frame = unsafe frames[i]
            let chunk = try self.chunk(of: frame.buffer)
            guard frame.length > 0, frame.dataOffset >= 0, frame.dataOffset <= room &- frame.length else {
                throw .frameNotSendable(index: chunk, dataOffset: frame.dataOffset, length: frame.length, room: room, segments: 1)
            }
            guard kernel.take(chunk) else { throw .bufferAlreadyWithKernel(index: chunk) }
            return (UInt64(chunk &<< chunkShift &+ PacketBuffer.metadataSize &+ frame.dataOffset),
                    UInt32(truncatingIfNeeded: frame.length))
        }
    }
}
