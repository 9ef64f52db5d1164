/// Errors from assembling or allocating physically contiguous memory.
public enum ContiguousError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The request cannot be served as stated (zero size, bad alignment…).
    case invalidRequest(String)
    /// No run of `neededBytes` was found within the budget. `largestRunBytes`
    /// is the best found; `bytesExamined` what was mapped to look, over
    /// `attempts` attempts. Every page mapped to look was given back.
    case notFound(neededBytes: Int, largestRunBytes: Int, bytesExamined: Int, budgetBytes: Int, attempts: Int)
    /// Assembly needs physical addresses, and the mapping has none.
    case noPhysicalAddresses
    /// Mapping the pages failed.
    case mapping(MappingError)

    public var description: String {
        switch self {
        case let .invalidRequest(reason):
            return "invalid contiguous request: \(reason)"
        case let .notFound(needed, largest, examined, budget, attempts):
            let why = largest >= needed ? " (long enough, but none started at the physical alignment or stayed inside the boundary asked for)" : ""
            return "no physically contiguous run of \(needed) bytes found: the largest run was \(largest) bytes\(why) "
                + "after examining \(examined) bytes in \(attempts) attempt(s) (budget \(budget) bytes); all of it was released. "
                + "Raise the budget, reserve hugepages soon after boot when memory is least fragmented "
                + "(echo N > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages), or use a larger page size"
        case .noPhysicalAddresses:
            return "assembling runs needs physical addresses: create the mapping with populate and TranslationMode.physical (root)"
        case let .mapping(error):
            return error.description
        }
    }
}
