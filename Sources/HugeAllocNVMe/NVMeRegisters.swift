// Registers, queue entries and command opcodes of an NVMe controller (QEMU's
// `-device nvme`, and any NVMe over PCIe), named as in the "NVM Express Base
// Specification, Revision 1.4", with the section that defines each.

/// The PCI class code of an NVMe controller: mass storage (01h), non-volatile
/// memory (08h), NVM Express programming interface (02h) (section 2.1.5, CC).
let nvmeClassCode: UInt32 = 0x01_08_02

/// Controller registers in BAR0 (3.1). CAP, ASQ and ACQ are 64 bits wide and
/// are accessed as two 32-bit halves, low first.
enum Register {
    static let cap = 0x00     // 3.1.1  Controller Capabilities
    static let vs = 0x08      // 3.1.2  Version
    static let intms = 0x0C   // 3.1.3  Interrupt Mask Set (pin-based and MSI)
    static let cc = 0x14      // 3.1.5  Controller Configuration
    static let csts = 0x1C    // 3.1.6  Controller Status
    static let aqa = 0x24     // 3.1.8  Admin Queue Attributes
    static let asq = 0x28     // 3.1.9  Admin Submission Queue Base Address
    static let acq = 0x30     // 3.1.10 Admin Completion Queue Base Address
    /// 3.1.24/3.1.25: queue y's Submission Queue Tail doorbell is at
    /// 1000h + (2y × stride), its Completion Queue Head doorbell at
    /// 1000h + ((2y + 1) × stride), stride = 4 << CAP.DSTRD bytes.
    static let doorbells = 0x1000
}

/// CAP fields (3.1.1), from the 64-bit value.
enum Capabilities {
    /// MQES, bits 15:0: the largest queue, in entries, minus one.
    static func maximumQueueEntries(_ cap: UInt64) -> Int { Int(cap & 0xFFFF) + 1 }
    /// CQR, bit 16: I/O queues must be physically contiguous.
    static func contiguousQueuesRequired(_ cap: UInt64) -> Bool { cap >> 16 & 1 != 0 }
    /// TO, bits 31:24: the longest wait for CSTS.RDY to follow CC.EN, in 500 ms units.
    static func timeoutMilliseconds(_ cap: UInt64) -> Int { Int(cap >> 24 & 0xFF) * 500 }
    /// DSTRD, bits 35:32: the doorbell stride in bytes, 4 << DSTRD.
    static func doorbellStride(_ cap: UInt64) -> Int { 4 << Int(cap >> 32 & 0xF) }
    /// CSS, bits 44:37; bit 37 (CSS bit 0): the NVM command set.
    static func supportsNVMCommandSet(_ cap: UInt64) -> Bool { cap >> 37 & 1 != 0 }
    /// MPSMIN, bits 51:48: the smallest memory page size, 4 KiB << MPSMIN.
    static func minimumPageSize(_ cap: UInt64) -> Int { 4096 << Int(cap >> 48 & 0xF) }
}

/// CC bits (3.1.5).
enum Configuration {
    static let enable: UInt32 = 1 << 0                 // EN
    static let nvmCommandSet: UInt32 = 0 << 4          // CSS = 000b
    static let pageSize4K: UInt32 = 0 << 7             // MPS: 2^(12 + 0) bytes
    static let roundRobin: UInt32 = 0 << 11            // AMS
    static let shutdownMask: UInt32 = 3 << 14          // SHN
    static let shutdownNormal: UInt32 = 1 << 14        // SHN = 01b
    static let submissionEntrySize: UInt32 = 6 << 16   // IOSQES: 2^6 = 64 bytes
    static let completionEntrySize: UInt32 = 4 << 20   // IOCQES: 2^4 = 16 bytes
}

/// CSTS bits (3.1.6).
enum Status {
    static let ready: UInt32 = 1 << 0                  // RDY
    static let fatal: UInt32 = 1 << 1                  // CFS: Controller Fatal Status
    static let shutdownMask: UInt32 = 3 << 2           // SHST
    static let shutdownComplete: UInt32 = 2 << 2       // SHST = 10b
}

/// The memory page size the driver programs (CC.MPS = 0) and PRPs describe.
let memoryPageSize = 4096

/// Submission queue entry, 64 bytes (4.2, "Common Command Format").
enum SubmissionEntry {
    static let size = 64
    static let opcode = 0         // CDW0 bits 7:0
    static let commandID = 2      // CDW0 bits 31:16
    static let namespaceID = 4    // NSID
    static let prp1 = 24          // DPTR: PRP Entry 1 (4.3)
    static let prp2 = 32          // DPTR: PRP Entry 2
    static let cdw10 = 40         // CDW10 ... CDW15 follow, 4 bytes each
}

/// Completion queue entry, 16 bytes (4.6).
enum CompletionEntry {
    static let size = 16
    static let commandSpecific = 0   // DW0
    static let submissionHead = 8    // DW2 bits 15:0: SQHD
    /// DW3: command identifier (15:0), phase tag (bit 16), status field (31:17).
    static let statusWord = 12
    static let phase: UInt32 = 1 << 16
}

/// Admin command opcodes (5, Admin Command Set).
enum AdminOpcode {
    static let createIOSubmissionQueue: UInt8 = 0x01  // 5.4
    static let createIOCompletionQueue: UInt8 = 0x05  // 5.3
    static let identify: UInt8 = 0x06                 // 5.15
}

/// I/O command opcodes (6, NVM Command Set).
enum IOOpcode {
    static let flush: UInt8 = 0x00   // Flush: commit the volatile write cache
    static let write: UInt8 = 0x01   // Write: CDW10-11 SLBA, CDW12 bits 15:0 NLB (blocks − 1)
    static let read: UInt8 = 0x02    // Read: the same dwords
}

/// Identify (5.15): CDW10.CNS and the fields read from the 4096-byte answers.
enum Identify {
    static let dataSize = 4096
    static let namespaceCNS: UInt32 = 0x00    // Identify Namespace data structure for NSID
    static let controllerCNS: UInt32 = 0x01   // Identify Controller data structure
    /// Identify Controller data structure (CNS 01h): byte ranges.
    static let serialNumber = 4..<24          // SN, ASCII, space padded
    static let modelNumber = 24..<64          // MN
    static let firmwareRevision = 64..<72     // FR
    static let maximumDataTransfer = 77       // MDTS: 2^n minimum pages; 0 = no limit
    static let namespaceCount = 516           // NN, 4 bytes
    /// Identify Namespace data structure (CNS 00h).
    static let namespaceSize = 0              // NSZE, 8 bytes, in logical blocks
    static let formattedLBASize = 26          // FLBAS: bits 3:0 index the LBA formats
    static let lbaFormats = 128               // LBAF0, 4 bytes each; LBADS (byte 2) = log2 of the block size
}

/// Create I/O Completion/Submission Queue command dwords (5.3, 5.4).
enum CreateQueue {
    /// CDW11 bit 0: PC, physically contiguous (required when CAP.CQR is set).
    static let physicallyContiguous: UInt32 = 1 << 0
    /// CDW11 of Create I/O Completion Queue: IEN (bit 1) clear — a polled queue.
    static let interruptsDisabled: UInt32 = 0
}
