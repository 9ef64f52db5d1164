import HugeAllocTestSupport
import Testing
import InspectMemoryKit

@Test func parsesNoArguments() throws {
    #expect(try InspectMemory.parseAsRoot([]) is SummaryCommand)
}
