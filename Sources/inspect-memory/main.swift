import InspectMemoryKit

InspectMemory.main()
