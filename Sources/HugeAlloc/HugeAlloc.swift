/// HugeAlloc: DMA-ready memory for Linux.
///
/// The layers, bottom to top (see docs/architecture.md):
/// inventory → mappings → physical translation → contiguous runs →
/// NUMA placement → mempools → packet pools → I/O backend exports.
package enum HugeAllocVersion {
    package static let string = "0.1.0"
}
