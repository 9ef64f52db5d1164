/// Which of a UMEM's chunks the kernel holds: one bit per chunk, set when
/// an ``AFXDPSocket`` puts the chunk's buffer on its fill or TX ring and
/// cleared when the buffer comes back on the RX or completion ring. A chunk
/// the kernel took off the fill ring and has not yet put on the RX ring (a
/// driver's hardware ring), or took off the TX ring and has not yet
/// completed (a frame in flight), stays set, so when the socket closes the
/// set bits are exactly the buffers to give back to the pool.
///
/// Also the socket's small mutable state (frames transmitted and not yet
/// completed, how kicks are decided) and the scratch arrays a batch passes
/// through (``batchLimit`` addresses, buffers and pool objects, allocated
/// once), so the socket's methods need not be `mutating` and its hot paths
/// allocate nothing. All pointer arithmetic of the ownership record is here.
/// Noncopyable: the storage is freed once, in `deinit`.
@safe
struct AFXDPKernelBuffers: ~Copyable {
    /// One bit per chunk, then the state words (see the accessors below).
    private let words: UnsafeMutablePointer<UInt64>
    private let bitWords: Int
    /// Chunks in the UMEM.
    let chunkCount: Int

    /// Ring entries per batch: the size of the scratch arrays.
    static let batchLimit = 256
    /// UMEM addresses of one batch of ring entries.
    let addresses: UnsafeMutablePointer<UInt64>
    /// The buffers of one batch on their way back to the pool.
    let buffers: UnsafeMutablePointer<PacketBuffer>
    /// Pool objects of one batch on their way to the fill ring.
    let objects: UnsafeMutablePointer<UnsafeMutableRawPointer>

    private static let stateWords = 2

    init(chunkCount: Int) {
        self.chunkCount = chunkCount
        bitWords = (chunkCount + 63) / 64
        unsafe words = UnsafeMutablePointer<UInt64>.allocate(capacity: bitWords + Self.stateWords)
        unsafe words.initialize(repeating: 0, count: bitWords + Self.stateWords)
        unsafe addresses = UnsafeMutablePointer<UInt64>.allocate(capacity: Self.batchLimit)
        unsafe buffers = UnsafeMutablePointer<PacketBuffer>.allocate(capacity: Self.batchLimit)
        unsafe objects = UnsafeMutablePointer<UnsafeMutableRawPointer>.allocate(capacity: Self.batchLimit)
    }

    deinit {
        unsafe words.deallocate()
        unsafe addresses.deallocate()
        unsafe buffers.deallocate()
        unsafe objects.deallocate()
    }

    /// Marks `chunk` (0..<chunkCount, not checked) as the kernel's. False,
    /// changing nothing, when the kernel already holds it.
    @inline(__always)
    func take(_ chunk: Int) -> Bool {
        let word = unsafe words + (chunk &>> 6)
        let bit: UInt64 = 1 &<< UInt64(chunk & 63)
        let old = unsafe word.pointee
        guard old & bit == 0 else { return false }
        unsafe word.pointee = old | bit
        return true
    }

    /// Marks `chunk` as back from the kernel. False, changing nothing, when
    /// the kernel did not hold it (or `chunk` is outside the UMEM).
    @inline(__always)
    func giveBack(_ chunk: Int) -> Bool {
        guard chunk >= 0, chunk < chunkCount else { return false }
        let word = unsafe words + (chunk &>> 6)
        let bit: UInt64 = 1 &<< UInt64(chunk & 63)
        let old = unsafe word.pointee
        guard old & bit != 0 else { return false }
        unsafe word.pointee = old & ~bit
        return true
    }

    /// Whether the kernel holds `chunk`.
    func holds(_ chunk: Int) -> Bool {
        guard chunk >= 0, chunk < chunkCount else { return false }
        return unsafe words[chunk &>> 6] & (1 &<< UInt64(chunk & 63)) != 0
    }

    /// How many chunks the kernel holds.
    var count: Int {
        var n = 0
        for i in 0..<bitWords { n += unsafe words[i].nonzeroBitCount }
        return n
    }

    /// Calls `body` with every chunk the kernel holds, in ascending order,
    /// and clears the record.
    func removeAll(_ body: (Int) -> Void) {
        for i in 0..<bitWords {
            var bits = unsafe words[i]
            unsafe words[i] = 0
            while bits != 0 {
                body(i * 64 + bits.trailingZeroBitCount)
                bits &= bits &- 1
            }
        }
    }

    // MARK: socket state

    /// Frames put on the TX ring and not yet seen on the completion ring.
    var transmitsInFlight: Int {
        get { Int(unsafe words[bitWords]) }
        nonmutating set { unsafe words[bitWords] = UInt64(newValue) }
    }

    /// Whether every transmit needs a `sendto` kick: the socket was bound
    /// without `XDP_USE_NEED_WAKEUP`, so the kernel never says when.
    var alwaysKick: Bool {
        get { unsafe words[bitWords + 1] != 0 }
        nonmutating set { unsafe words[bitWords + 1] = newValue ? 1 : 0 }
    }
}
