import InspectMemoryKit

// Errors leave as one line on stderr: exit 64 for usage errors, 1 for failures.
InspectMemory.mainReportingOneLine()
