@testable import HugeAlloc
import HugeAllocTestSupport
import Testing

/// The heap's metadata layouts and size classes, pinned: what the hot paths
/// and the guarantees in docs/heap.md rely on.
@Suite struct HeapLayoutTests {
    @Test func spanHeadersAreTwoCacheLinesWithHotFieldsInTheFirst() {
        #expect(MemoryLayout<HeapSpan>.stride == 128)
        #expect(HeapPageMeta.spansOffset % 64 == 0)
        #expect(HeapPageMeta.stride % 4096 == 0)
        #expect(HeapPageMeta.stride == 72 << 10)
    }

    @Test func threadCacheEntriesAreOneCacheLine() {
        #expect(MemoryLayout<HeapThreadCache.ClassCache>.stride == 64)
        #expect(HeapThreadCache.headerBytes % 64 == 0)
    }

    @Test func classesCoverEverySizeWithBoundedWaste() {
        let classes = HeapSizeClasses()
        let table = HeapClassTable.shared
        #expect(classes.sizes.last == HeapSizeClasses.maximumClassSize)
        #expect(classes.sizes == classes.sizes.sorted())
        for (c, size) in classes.sizes.enumerated() {
            #expect(size % 64 == 0, "class \(c) (\(size) bytes) is not a multiple of 64")
            // A span holds its objects: no object runs past the span's end.
            #expect(classes.objectsPerSpan[c] * size <= classes.spanGranules[c] * HeapSizeClasses.granule,
                    "class \(c) (\(size) bytes) overruns its span")
            if size > HeapSizeClasses.maximumMultiObjectSize {
                #expect(size % HeapSizeClasses.granule == 0, "one-object class \(size) is not whole granules")
                #expect(classes.objectsPerSpan[c] == 1)
            }
        }
        // Every power of two from 64 B to 256 KiB is a class (boundaries rely on it).
        var power = 64
        while power <= HeapSizeClasses.maximumClassSize {
            #expect(classes.sizes.contains(power), "\(power) is not a class")
            power *= 2
        }
        // Every size maps to the smallest class that holds it.
        for size in stride(from: 1, through: HeapSizeClasses.maximumClassSize, by: 61) {
            let c = table.classIndex(of: size)
            #expect(classes.sizes[c] >= size)
            if c > 0 { #expect(classes.sizes[c - 1] < size) }
            // Above 512 bytes the class wastes at most a quarter (an eighth above 8 KiB, after the first step).
            if size > 16 << 10 { #expect(Double(classes.sizes[c] - size) / Double(size) < 0.26) }
        }
    }

    @Test func alignedClassesStartEveryObjectAtTheAlignment() {
        let classes = HeapSizeClasses()
        let table = HeapClassTable.shared
        for shift in HeapSizeClasses.alignmentShifts {
            for c in 0..<classes.count {
                let aligned = table.alignedClass(c, shift: shift)
                guard aligned < classes.count else { continue }
                #expect(aligned >= c)
                #expect(classes.sizes[aligned] % (1 << shift) == 0)
            }
        }
    }
}
