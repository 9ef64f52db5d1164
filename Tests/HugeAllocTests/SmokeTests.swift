import Testing
@testable import HugeAlloc

@Test func basePageSizeIsAPowerOfTwo() {
    #expect(Sys.basePageSize > 0 && Sys.basePageSize & (Sys.basePageSize - 1) == 0)
}
