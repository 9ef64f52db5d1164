import InspectMemoryKit

InspectMemory.run()
