// swift-tools-version: 6.2
import PackageDescription

let package = Package(
    name: "HugeAlloc",
    products: [
        .library(name: "HugeAlloc", targets: ["HugeAlloc"]),
        .library(name: "HugeAllocE1000", targets: ["HugeAllocE1000"]),
        .library(name: "HugeAllocNVMe", targets: ["HugeAllocNVMe"]),
        // The C API (hugealloc.h): a shared library for C, C++, Rust and any
        // FFI; tools/install puts it, the header and hugealloc.pc in a prefix.
        .library(name: "HugeAllocC", type: .dynamic, targets: ["HugeAllocC"]),
        .executable(name: "inspect-memory", targets: ["inspect-memory"]),
        .executable(name: "hugealloc-bench", targets: ["hugealloc-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // libnuma: numa.h (topology) and numaif.h (mbind, get_mempolicy, move_pages).
        .systemLibrary(
            name: "CNuma",
            pkgConfig: "numa",
            providers: [.apt(["libnuma-dev"])]
        ),
        // libhugetlbfs ships no .pc file; the module map links it by name.
        .systemLibrary(
            name: "CHugetlbfs",
            providers: [.apt(["libhugetlbfs-dev"])]
        ),
        // The Linux API that Glibc's overlay hides from Swift. Symbols prefixed ha_.
        .target(
            name: "CHugeAllocShims",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("pthread")]
        ),
        .target(
            name: "HugeAlloc",
            dependencies: [
                "CNuma", "CHugetlbfs", "CHugeAllocShims",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: [.strictMemorySafety()]
        ),
        // The C API's entry points (@_cdecl, and @c for the mempool hot paths), calling the library's own code;
        // include/hugealloc.h is the installed header (docs/c-api.md).
        .target(
            name: "HugeAllocC",
            dependencies: ["HugeAlloc", "CHugeAllocShims"],
            exclude: ["include"],
            swiftSettings: [.strictMemorySafety()]
        ),
        // What inspect-memory diagnoses (holders, stale files, setup, doctor,
        // kpageflags): a CLI concern, kept out of the library's public API.
        .target(
            name: "HugeAllocDiagnostics",
            dependencies: ["HugeAlloc", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The commands of inspect-memory, as a library so tests can drive them.
        .target(
            name: "InspectMemoryKit",
            dependencies: [
                "HugeAlloc", "HugeAllocDiagnostics",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(
            name: "inspect-memory",
            dependencies: ["InspectMemoryKit"]
        ),
        .executableTarget(
            name: "hugealloc-bench",
            dependencies: [
                "HugeAlloc",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The PASS/FAIL harness of the programs that run inside QEMU guests.
        .target(name: "VMCheckSupport"),
        // Runs inside a 2-node QEMU guest (tools/numa-vm-test); checks real placement.
        .executableTarget(name: "numa-vm-check", dependencies: ["HugeAlloc", "VMCheckSupport"]),
        // libFuzzer target for the kernel-text parsers (docs/testing.md); a plain
        // build replays the seed corpus in Tests/FuzzCorpus instead.
        .executableTarget(
            name: "hugealloc-fuzz",
            dependencies: [
                "HugeAlloc", "HugeAllocDiagnostics",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // A user-space driver for the 82540EM (QEMU's e1000): the library's
        // PCI access, DMA memory and packet pools as a real consumer (docs/devices.md).
        .target(name: "HugeAllocE1000", dependencies: ["HugeAlloc"]),
        // Runs inside the guest that tools/dma-vm-test boots: the e1000 DMAs into packet-pool buffers.
        .executableTarget(name: "dma-vm-check", dependencies: ["HugeAlloc", "HugeAllocE1000", "VMCheckSupport"]),
        // A user-space NVMe driver: all of its DMA memory from a DMAHeap (docs/devices.md).
        .target(name: "HugeAllocNVMe", dependencies: ["HugeAlloc"]),
        // Runs in the same guest: writes and reads an emulated NVMe drive through HugeAllocNVMe.
        .executableTarget(name: "nvme-vm-check", dependencies: ["HugeAlloc", "HugeAllocNVMe", "VMCheckSupport"]),
        // What both test targets share: the fixture trees (one per machine),
        // independent readers of the kernel's files, this process's own
        // memory counters and leak check, and the turn-taking trait for
        // tests that use the hugepage pool. Under Tests/ as nothing ships it.
        .target(
            name: "HugeAllocTestSupport",
            dependencies: ["HugeAlloc"],
            path: "Tests/HugeAllocTestSupport",
            resources: [.copy("Fixtures")]
        ),
        // A process the multi-process tests spawn (publish, attach, follow commands).
        .executableTarget(name: "hugealloc-share-worker", dependencies: ["HugeAlloc"], path: "Tests/ShareWorker"),
        .testTarget(
            name: "HugeAllocTests",
            dependencies: [
                "HugeAlloc", "HugeAllocNVMe", "HugeAllocTestSupport", "CHugeAllocShims",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .testTarget(
            name: "InspectMemoryTests",
            dependencies: ["InspectMemoryKit", "HugeAllocDiagnostics", "HugeAlloc", "HugeAllocTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
