import Testing
import InspectMemoryKit

@Test func parsesNoArguments() throws {
    _ = try InspectMemory.parse([])
}
