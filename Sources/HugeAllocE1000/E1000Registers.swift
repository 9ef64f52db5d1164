// Registers and descriptor bits of the Intel 82540EM (QEMU's `-device e1000`),
// named as in the "PCI/PCI-X Family of Gigabit Ethernet Controllers Software
// Developer's Manual" (8254x), with the section that defines each.

/// Register offsets in BAR0 (manual 13.4).
enum Register {
    static let ctrl = 0x0000      // 13.4.1  Device Control
    static let status = 0x0008    // 13.4.2  Device Status
    static let icr = 0x00C0       // 13.4 Interrupt Cause Read (clears on read)
    static let imc = 0x00D8       // 13.4 Interrupt Mask Clear
    static let rctl = 0x0100      // 13.4 Receive Control
    static let tctl = 0x0400      // 13.4 Transmit Control
    static let tipg = 0x0410      // 13.4 Transmit Inter-Packet Gap
    static let rdbal = 0x2800     // 13.4 RX Descriptor Base Low
    static let rdbah = 0x2804     // 13.4 RX Descriptor Base High
    static let rdlen = 0x2808     // 13.4 RX Descriptor Length (bytes, multiple of 128)
    static let rdh = 0x2810       // 13.4 RX Descriptor Head
    static let rdt = 0x2818       // 13.4 RX Descriptor Tail
    static let tdbal = 0x3800     // 13.4 TX Descriptor Base Low
    static let tdbah = 0x3804     // 13.4 TX Descriptor Base High
    static let tdlen = 0x3808     // 13.4 TX Descriptor Length
    static let tdh = 0x3810       // 13.4 TX Descriptor Head
    static let tdt = 0x3818       // 13.4 TX Descriptor Tail
    static let mta = 0x5200       // 13.4 Multicast Table Array, 128 registers
    // Statistics, 13.7: every counter clears when read.
    static let crcerrs = 0x4000   // 13.7  CRC Error Count
    static let mpc = 0x4010       // 13.7  Missed Packets Count (RX ring full)
    static let gprc = 0x4074      // 13.7 Good Packets Received Count
    static let gptc = 0x4080      // 13.7 Good Packets Transmitted Count
    static let gorcl = 0x4088     // 13.7 Good Octets Received Count, low/high
    static let gorch = 0x408C
    static let gotcl = 0x4090     // 13.7 Good Octets Transmitted Count, low/high
    static let gotch = 0x4094
}

/// CTRL bits (13.4.1).
enum Control {
    static let fullDuplex: UInt32 = 1 << 0
    static let linkReset: UInt32 = 1 << 3
    static let autoSpeedDetection: UInt32 = 1 << 5
    static let setLinkUp: UInt32 = 1 << 6
    static let invertLossOfSignal: UInt32 = 1 << 7
    static let reset: UInt32 = 1 << 26
    static let phyReset: UInt32 = 1 << 31
}

/// STATUS bits (13.4.2).
enum Status {
    static let linkUp: UInt32 = 1 << 1
}

/// RCTL bits (13.4).
enum ReceiveControl {
    static let enable: UInt32 = 1 << 1
    static let unicastPromiscuous: UInt32 = 1 << 3
    static let multicastPromiscuous: UInt32 = 1 << 4
    static let broadcastAccept: UInt32 = 1 << 15
    /// BSIZE = 00 with BSEX = 0: 2048-byte receive buffers.
    static let bufferSize2048: UInt32 = 0 << 16
    static let stripCRC: UInt32 = 1 << 26
}

/// TCTL bits (13.4).
enum TransmitControl {
    static let enable: UInt32 = 1 << 1
    static let padShortPackets: UInt32 = 1 << 3
    /// Collision threshold 15 (the manual's recommended value).
    static let collisionThreshold: UInt32 = 0x0F << 4
    /// Collision distance 64 byte times for full duplex.
    static let collisionDistance: UInt32 = 0x40 << 12
}

/// TIPG for copper (13.4): IPGT 10, IPGR1 8, IPGR2 6.
let transmitInterPacketGap: UInt32 = 10 | 8 << 10 | 6 << 20

/// Legacy receive descriptor (3.2), 16 bytes:
/// buffer address (8), length (2), checksum (2), status (1), errors (1), special (2).
enum RXDescriptor {
    static let size = 16
    static let address = 0
    static let length = 8
    /// The 32-bit word holding status (low byte) and errors (next byte).
    static let statusWord = 12
    static let descriptorDone: UInt32 = 1 << 0
    static let endOfPacket: UInt32 = 1 << 1
}

/// Legacy transmit descriptor (3.3), 16 bytes:
/// buffer address (8), length (2), CSO (1), command (1), status (1), CSS (1), special (2).
enum TXDescriptor {
    static let size = 16
    static let address = 0
    static let length = 8
    static let command = 11
    static let statusWord = 12
    static let endOfPacket: UInt8 = 1 << 0
    static let insertFCS: UInt8 = 1 << 1
    static let reportStatus: UInt8 = 1 << 3
    static let descriptorDone: UInt32 = 1 << 0
}
