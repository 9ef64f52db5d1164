import CHugeAllocShims

extension AFXDPSocket {
    // MARK: transmitting

    /// Sends the data of `buffers`: puts one TX descriptor per buffer (its
    /// data's UMEM address and its length) on the TX ring and, when `kick`
    /// is true and the kernel needs it, wakes the kernel with `sendto(fd,
    /// NULL, 0, MSG_DONTWAIT, NULL, 0)`: always for a socket bound without
    /// ``BindFlags/useNeedWakeup``, else when the TX ring's flags carry
    /// `XDP_RING_NEED_WAKEUP` (in copy mode the kernel always sets it). In
    /// copy mode the kernel sends at most 32 frames per kick; this kicks
    /// again while the TX ring empties, and stops when the kernel makes no
    /// progress (the completion ring is full: take completions first).
    ///
    /// Returns how many buffers were taken, from the front: as many as the
    /// TX ring has room for. Taken buffers are the kernel's until they come
    /// back on the completion ring (``freeCompleted(maximum:)``,
    /// ``takeCompleted(into:)``). Throws, taking none, when the first buffer
    /// cannot be sent as it is (not this pool's, already the kernel's, more
    /// than one segment or an indirect clone, empty, or data beyond its
    /// chunk); a bad buffer further on ends the batch there. A kick that
    /// fails for another reason than a busy kernel throws after the frames
    /// are on the ring (they are then the kernel's).
    @discardableResult
    public func transmit(_ buffers: UnsafeBufferPointer<PacketBuffer>, kick: Bool = true) throws(AFXDPError) -> Int {
        try putOnTransmitRing(count: buffers.count, kick: kick) { (i) throws(AFXDPError) in try transmitDescriptor(unsafe buffers[i]) }
    }

    /// Puts up to `count` TX descriptors, the `i`th from `descriptor(i)`, on
    /// the TX ring in place, then kicks (see ``transmit(_:kick:)-(UnsafeBufferPointer<PacketBuffer>,_)``).
    @inline(__always)
    func putOnTransmitRing(
        count: Int, kick: Bool, _ describe: (Int) throws(AFXDPError) -> (UInt64, UInt32)
    ) throws(AFXDPError) -> Int {
        guard unsafe transmitRing.pointee.size != 0 else { throw .noTransmitRing }
        var first: UInt32 = 0
        let room = Int(unsafe ha_xsk_reserve(transmitRing, UInt32(truncatingIfNeeded: min(count, Int(UInt32.max))), &first))
        let ring = unsafe transmitRing.pointee
        let descs = unsafe ring.descs!, mask = unsafe ring.mask
        var done = 0
        while done < room {
            let descriptor: (UInt64, UInt32)
            do throws(AFXDPError) { descriptor = try describe(done) } catch {
                if done == 0 { throw error }
                break
            }
            // struct xdp_desc: u64 addr, u32 len, u32 options (0), written in place.
            let d = unsafe descs + Int((first &+ UInt32(truncatingIfNeeded: done)) & mask) &<< 4
            unsafe d.storeBytes(of: descriptor.0, as: UInt64.self)
            unsafe d.storeBytes(of: UInt64(descriptor.1), toByteOffset: 8, as: UInt64.self)
            done &+= 1
        }
        unsafe ha_xsk_submit(transmitRing, UInt32(truncatingIfNeeded: done))
        kernel.transmitsInFlight += done
        if kick && done > 0 { try kickTransmitIfNeeded() }
        return done
    }

    /// Sends the data of `buffers` (see ``transmit(_:kick:)-(UnsafeBufferPointer<PacketBuffer>,_)``).
    @discardableResult
    public func transmit(_ buffers: [PacketBuffer], kick: Bool = true) throws(AFXDPError) -> Int {
        try unsafe buffers.withUnsafeBufferPointer { (b) throws(AFXDPError) -> Int in try unsafe transmit(b, kick: kick) }
    }

    /// The TX descriptor of `buffer` (UMEM address of its data, length),
    /// after checking it can be sent; marks its chunk as the kernel's.
    @inline(__always)
    func transmitDescriptor(_ b: PacketBuffer) throws(AFXDPError) -> (UInt64, UInt32) {
        let chunk = try self.chunk(of: b)
        // Data offset, data length, segments and flags in one load.
        let word = b.load(PacketBuffer.Field.dataOffset, as: UInt64.self)
        let offset = Int(word & 0xFFFF), length = Int(word &>> 16 & 0xFFFF)
        let singleDirect = word &>> 32 == 1 && b.load(PacketBuffer.Field.next, as: UInt64.self) == 0
        guard singleDirect, length > 0, offset &+ length <= b.bufferLength else {
            throw .frameNotSendable(index: chunk, dataOffset: offset, length: length, room: b.bufferLength, segments: b.segmentCount)
        }
        guard kernel.take(chunk) else { throw .bufferAlreadyWithKernel(index: chunk) }
        return (UInt64(chunk &<< chunkShift &+ PacketBuffer.metadataSize &+ offset), UInt32(truncatingIfNeeded: length))
    }

    /// Kicks the kernel to send what is on the TX ring when it needs it
    /// (see ``transmit(_:kick:)-(UnsafeBufferPointer<PacketBuffer>,_)``),
    /// again while each kick empties the ring further.
    public func kickTransmitIfNeeded() throws(AFXDPError) {
        var pending = transmitRingPending
        while pending > 0, kernel.alwaysKick || (unsafe ha_xsk_ring_needs_wakeup(transmitRing)) != 0 {
            let sent: Bool
            do { sent = try Sys.xdpKickTransmit(fileDescriptor) } catch { throw AFXDPError(error) }
            let left = transmitRingPending
            // A kick that returned at once with frames left is the per-call
            // budget (EAGAIN); one that made no progress is a full completion ring.
            if sent && left == 0 || left >= pending { break }
            pending = left
        }
    }

    /// One `sendto(fd, NULL, 0, MSG_DONTWAIT, NULL, 0)`, whatever the ring's
    /// flags say. Returns false when the kernel was busy (`EAGAIN`, `EBUSY`,
    /// `ENOBUFS`, `ENETDOWN`).
    @discardableResult
    public func kickTransmit() throws(AFXDPError) -> Bool {
        do { return try Sys.xdpKickTransmit(fileDescriptor) } catch { throw AFXDPError(error) }
    }

    // MARK: completions

    /// Takes up to `buffers.count` transmitted buffers off the completion
    /// ring into `buffers` (now the caller's again); returns how many.
    /// No allocation.
    public func takeCompleted(into buffers: UnsafeMutableBufferPointer<PacketBuffer>) -> Int {
        guard let out = buffers.baseAddress else { return 0 }
        var first: UInt32 = 0
        let got = unsafe ha_xsk_peek(completionRing, UInt32(truncatingIfNeeded: min(buffers.count, Int(UInt32.max))), &first)
        let ring = unsafe completionRing.pointee
        let descs = unsafe ring.descs!.assumingMemoryBound(to: UInt64.self), mask = unsafe ring.mask
        let shift = UInt64(chunkShift)
        var done = 0
        for i in 0..<got {
            let chunk = Int(truncatingIfNeeded: unsafe descs[Int((first &+ i) & mask)] &>> shift)
            guard kernel.giveBack(chunk) else { continue }
            unsafe out[done] = buffer(ofChunk: chunk)
            done &+= 1
        }
        unsafe ha_xsk_release(completionRing, got)
        kernel.transmitsInFlight -= Int(got)
        return done
    }

    /// Buffers the kernel finished transmitting, at most `maximum` (see
    /// ``takeCompleted(into:)``, which allocates nothing).
    public func takeCompleted(maximum: Int = 64) -> [PacketBuffer] {
        guard maximum > 0 else { return [] }
        return unsafe [PacketBuffer](unsafeUninitializedCapacity: maximum) { storage, initialized in
            initialized = unsafe takeCompleted(into: storage)
        }
    }

    /// Frees transmitted buffers back to the pool, up to `maximum`, straight
    /// off the completion ring; returns how many. No allocation.
    @discardableResult
    public func freeCompleted(maximum: Int = 256) -> Int {
        let batch = unsafe kernel.buffers
        let pool = self.pool, me = pool.identity, shift = UInt64(chunkShift)
        var done = 0
        while done < maximum {
            let n = min(maximum - done, AFXDPKernelBuffers.batchLimit)
            var first: UInt32 = 0
            let got = unsafe ha_xsk_peek(completionRing, UInt32(truncatingIfNeeded: n), &first)
            let ring = unsafe completionRing.pointee
            let descs = unsafe ring.descs!.assumingMemoryBound(to: UInt64.self), mask = unsafe ring.mask
            // One pass: ownership bit, buffer, and whether all can go back
            // in one bulk put (one segment, one owner, this pool's), as
            // `PacketPool.free` decides.
            var back = 0
            var irregular: UInt64 = 0
            for i in 0..<got {
                let chunk = Int(truncatingIfNeeded: unsafe descs[Int((first &+ i) & mask)] &>> shift)
                guard kernel.giveBack(chunk) else { continue }
                let b = buffer(ofChunk: chunk)
                irregular |= pool.irregularity(b, pool: me)
                unsafe batch[back] = b
                back &+= 1
            }
            unsafe ha_xsk_release(completionRing, got)
            kernel.transmitsInFlight -= Int(got)
            if irregular == 0 {
                _ = unsafe batch.withMemoryRebound(to: UnsafeMutableRawPointer.self, capacity: back) { raw in
                    unsafe pool.mempool.put(from: raw, count: back)
                }
            } else {
                unsafe pool.free(batch, count: back)
            }
            done += back
            if Int(got) < n { break }
        }
        return done
    }
}
