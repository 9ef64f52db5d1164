import Synchronization

/// Checked mode's bookkeeping: per span, one word per object — 0 while the
/// object is free, `size << 1 | 1` while it is handed out — flipped with a
/// compare-exchange, so a second free of the same object fails; and 16 guard
/// bytes after every allocation, compared when it is freed.
enum HeapChecks {
    static let guardBytes = 16
    static let guardByte: UInt8 = 0xA5

    /// Gives a new span its state words (all free).
    static func attach(to span: UnsafeMutablePointer<HeapSpan>, objects: Int) {
        let words = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: objects)
        for i in 0..<objects { unsafe (words + i).initialize(to: Atomic<UInt64>(0)) }
        unsafe span.pointee.checks = UInt(bitPattern: words)
    }

    /// Frees a span's state words, if it has any.
    static func detach(from span: UnsafeMutablePointer<HeapSpan>) {
        guard let words = unsafe UnsafeMutablePointer<Atomic<UInt64>>(bitPattern: span.pointee.checks) else { return }
        unsafe words.deinitialize(count: Int(span.pointee.capacity))
        unsafe words.deallocate()
        unsafe span.pointee.checks = 0
    }

    static func word(_ span: UnsafeMutablePointer<HeapSpan>, _ index: Int) -> UnsafeMutablePointer<Atomic<UInt64>>? {
        guard let words = unsafe UnsafeMutablePointer<Atomic<UInt64>>(bitPattern: span.pointee.checks) else { return nil }
        return unsafe words + index
    }

    /// Marks a new allocation handed out and writes its guard bytes.
    /// (Large blocks keep the size in their record instead of a state word.)
    static func recordAllocation(_ pointer: UnsafeMutableRawPointer, size: Int, heap: DMAHeap) {
        if let (span, index) = unsafe heap.spanAndIndex(of: UInt(bitPattern: pointer)) {
            unsafe word(span, index)?.pointee.store(UInt64(size) << 1 | 1, ordering: .releasing)
        }
        unsafe (pointer + size).initializeMemory(as: UInt8.self, repeating: guardByte, count: guardBytes)
    }

    /// The first guard byte after `size` bytes at `pointer` that changed, nil if none.
    static func firstChangedGuardByte(_ pointer: UnsafeMutableRawPointer, size: Int) -> Int? {
        let guardStart = unsafe pointer + size
        for i in 0..<guardBytes where unsafe guardStart.load(fromByteOffset: i, as: UInt8.self) != guardByte {
            return size + i
        }
        return nil
    }
}

extension DMAHeap {
    /// The span holding `address` and the object's index in it, when
    /// `address` is an object start in a live span.
    func spanAndIndex(of address: UInt) -> (UnsafeMutablePointer<HeapSpan>, Int)? {
        let offset = address &- space.base
        guard offset < space.bytes else { return nil }
        let meta = space.meta(Int(offset >> UInt(HeapSizeClasses.pageShift)))
        guard unsafe meta.header.pointee.mapped else { return nil }
        let granule = Int((offset >> UInt(HeapSizeClasses.granuleShift)) & UInt(HeapSizeClasses.granulesPerPage - 1))
        let span = unsafe meta.span(meta.spanOf(granule))
        guard unsafe span.pointee.kind != .free else { return nil }
        let relative = unsafe Int(address - span.pointee.start)
        let size = unsafe span.pointee.kind == .direct ? Int.max : classes.sizes[Int(span.pointee.classIndex)]
        guard relative % size == 0 else { return nil }
        return unsafe (span, relative / size)
    }

    /// Frees after checking that `pointer` starts a live allocation of this
    /// heap and that nothing was written past its end; throws otherwise,
    /// freeing nothing.
    public func freeChecked(_ pointer: UnsafeMutableRawPointer) throws(DMAHeapError) {
        guard checked else { throw .checksDisabled }
        let address = UInt(bitPattern: pointer)
        let offset = address &- space.base
        guard offset < space.bytes else {
            guard let block = largeBlock(containing: address)?.block else {
                if freedLargeBlocks.withLock({ $0.contains(address) }) { throw .doubleFree(address: address) }
                throw .foreignPointer(address: address)
            }
            guard block.address == address else { throw .interiorPointer(address: address, allocationStart: block.address) }
            let size = block.requested - HeapChecks.guardBytes
            if let bad = unsafe HeapChecks.firstChangedGuardByte(pointer, size: size) {
                throw .overrun(address: address, size: size, firstBadOffset: bad)
            }
            // Another thread may have freed it meanwhile.
            guard freeLarge(address) else { throw .doubleFree(address: address) }
            freedLargeBlocks.withLock { freed in
                freed.append(address)
                if freed.count > 64 { freed.removeFirst() }
            }
            return
        }
        let meta = space.meta(Int(offset >> UInt(HeapSizeClasses.pageShift)))
        // Everything in the heap's range was heap memory: a page given back
        // held only freed allocations.
        guard unsafe meta.header.pointee.mapped else { throw .doubleFree(address: address) }
        let granule = Int((offset >> UInt(HeapSizeClasses.granuleShift)) & UInt(HeapSizeClasses.granulesPerPage - 1))
        let span = unsafe meta.span(meta.spanOf(granule))
        if unsafe span.pointee.kind == .free {
            // A released span: everything it held was freed already.
            throw .doubleFree(address: address)
        }
        let start = unsafe span.pointee.start
        let index: Int
        if unsafe span.pointee.kind == .multi {
            let size = unsafe classes.sizes[Int(span.pointee.classIndex)]
            let relative = Int(address - start)
            guard relative % size == 0 else {
                throw .interiorPointer(address: address, allocationStart: start + UInt(relative / size * size))
            }
            index = relative / size
            guard unsafe index < Int(span.pointee.capacity) else { throw .foreignPointer(address: address) }
        } else {
            guard address == start else { throw .interiorPointer(address: address, allocationStart: start) }
            index = 0
        }
        guard let word = unsafe HeapChecks.word(span, index) else { throw .foreignPointer(address: address) }
        let state = unsafe word.pointee.load(ordering: .acquiring)
        guard state & 1 != 0 else { throw .doubleFree(address: address) }
        let size = Int(state >> 1)
        if let bad = unsafe HeapChecks.firstChangedGuardByte(pointer, size: size) {
            throw .overrun(address: address, size: size, firstBadOffset: bad)
        }
        guard unsafe word.pointee.compareExchange(expected: state, desired: 0, ordering: .acquiringAndReleasing).exchanged else {
            throw .doubleFree(address: address)
        }
        unsafe freeObject(address, span: span)
    }

    /// Frees the state words of every span of a page being unmapped.
    func releaseChecks(_ meta: HeapPageMeta) {
        guard checked else { return }
        for g in 0..<HeapSizeClasses.granulesPerPage {
            let span = unsafe meta.span(g)
            if unsafe span.pointee.checks != 0 { unsafe HeapChecks.detach(from: span) }
        }
    }
}
