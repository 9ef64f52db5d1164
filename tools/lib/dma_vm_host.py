#!/usr/bin/env python3
"""Host side of tools/dma-vm-test: boots the guest with an e1000 whose link
is one end of a socketpair, sends frames to it, checks the frames it sends;
with --nvme-image, also an NVMe drive backed by that raw file, whose blocks
it checks after the guest is done.

QEMU's `-netdev socket,fd=N` on a stream socket carries each frame after its
length as a 4-byte big-endian integer. The guest prints
"dma-vm-check: ready to receive" when its receive ring is up; the host then
sends the frames, and reads what the guest transmits until QEMU exits.

The guest's nvme-vm-check prints the seed and every extent it wrote
("nvme-vm-check: extents seed=S block=B count=C blocks=N", then lines of
"LBA+BLOCKS"); each block's pattern follows from (seed, LBA), as in
Sources/nvme-vm-check/main.swift. The host checks that the file holds those
patterns and that every other block is still zero.

Prints the guest's console from its first line, one PASS/FAIL line per host
check, and `N passed, M failed` for guest and host together; exits non-zero
on any failure, a timeout or a missing guest tally.
"""
import argparse
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time

READY = "dma-vm-check: ready to receive"
# Later requests: "dma-vm-check: send K frames from I".
SEND = re.compile(r"dma-vm-check: send (\d+) frames? from (\d+)")
EXTENTS = re.compile(r"nvme-vm-check: extents seed=(\d+) block=(\d+) count=(\d+) blocks=(\d+)")
EXTENT = "nvme-vm-check: extent "
NAMESPACE = re.compile(r"nvme-vm-check: namespace blocks=(\d+) block=(\d+)")
MASK = (1 << 64) - 1


def frame_length(index):
    """Must match frameLength in Sources/dma-vm-check/main.swift."""
    if index == 0:
        return 60
    if index == 1:
        return 1514
    return 60 + (index * 331) % 1455


def frame_bytes(index, sender):
    """Must match frameBytes in Sources/dma-vm-check/main.swift."""
    frame = bytearray(frame_length(index))
    frame[0:6] = b"\xff" * 6
    frame[6] = 0x02
    frame[11] = sender
    frame[12:14] = b"\x88\xb5"
    frame[14:16] = struct.pack(">H", index)
    for j in range(16, len(frame)):
        frame[j] = (j * 7 + index * 13 + sender * 0x5A) & 0xFF
    return bytes(frame)


def pattern_block(seed, lba, block_size):
    """Must match patternWord in Sources/nvme-vm-check/main.swift."""
    base = seed ^ ((lba * 0x9E3779B97F4A7C15) & MASK)
    words = [base ^ ((k * 0xD1B54A32D192ED03) & MASK) for k in range(block_size // 8)]
    return struct.pack(f"<{len(words)}Q", *words)


def check_nvme_image(path, console, check):
    """The blocks the guest wrote hold their patterns; all others are zero."""
    header = [EXTENTS.search(l) for l in console]
    header = [m for m in header if m]
    if not header:
        check("NVMe drive file", False, "the guest printed no extent list")
        return
    seed, block, count, total = map(int, header[-1].groups())
    extents = []
    for line in console:
        if EXTENT in line:
            for item in line[line.index(EXTENT) + len(EXTENT):].split():
                lba, blocks = item.split("+")
                extents.append((int(lba), int(blocks)))
    with open(path, "rb") as f:
        data = f.read()
    namespace = [m for m in map(NAMESPACE.search, console) if m]
    if namespace:
        blocks, size = map(int, namespace[-1].groups())
        check("NVMe namespace size = the drive file", blocks * size == len(data),
              f"Identify Namespace: {blocks} blocks of {size} bytes; file {len(data)} bytes")
    bad = []
    written = bytearray(len(data) // block)
    for lba, blocks in extents:
        for b in range(lba, lba + blocks):
            written[b] = 1
            if data[b * block:(b + 1) * block] != pattern_block(seed, b, block):
                bad.append(b)
    listed = len(extents) == count and sum(n for _, n in extents) == total
    check(f"NVMe drive file holds the {total} blocks the guest wrote", listed and not bad,
          f"{len(extents)} extents of {count} listed, seed {seed}, {block}-byte blocks"
          + (f"; {len(bad)} blocks differ, first LBAs {bad[:5]}" if bad else ", all equal"))
    zero = bytes(block)
    stray = [b for b in range(len(written)) if not written[b] and data[b * block:(b + 1) * block] != zero]
    check("NVMe blocks not written are still zero", not stray,
          f"{len(written) - sum(written)} blocks" + (f"; {len(stray)} not zero, first LBAs {stray[:5]}" if stray else ""))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--initrd", required=True)
    parser.add_argument("--append", required=True)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--timeout", type=int, default=180)
    parser.add_argument("--log", required=True)
    parser.add_argument("--nvme-image", help="a raw file for -device nvme,serial=ha0 (nvme-vm-check runs too)")
    parser.add_argument("--iommu", action="store_true",
                        help="add QEMU's intel-iommu (interrupt remapping, 48-bit addresses)")
    args = parser.parse_args()

    host, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # aw-bits=48: the default 39-bit width rejects user-space addresses as
    # IOVAs; intremap=on: without it VFIO_SET_IOMMU fails with EPERM.
    iommu = ["-device", "intel-iommu,intremap=on,aw-bits=48"] if args.iommu else []
    nvme = ["-drive", f"file={args.nvme_image},if=none,id=d0,format=raw",
            "-device", "nvme,serial=ha0,drive=d0"] if args.nvme_image else []
    command = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-machine", "q35",
        "-m", "1G", "-smp", "1",
        "-kernel", args.kernel, "-initrd", args.initrd, "-append", args.append,
        *iommu,
        *nvme,
        "-netdev", f"socket,id=n0,fd={guest.fileno()}",
        "-device", "e1000,netdev=n0,addr=03.0",
        "-nographic", "-monitor", "none", "-serial", "stdio", "-no-reboot",
    ]
    qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, pass_fds=(guest.fileno(),))
    guest.close()

    received = []  # frames the guest transmitted, in order
    ready = threading.Event()

    def read_frames():
        buffer = b""
        while True:
            try:
                chunk = host.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while len(buffer) >= 4:
                (length,) = struct.unpack(">I", buffer[:4])
                if len(buffer) < 4 + length:
                    break
                received.append(buffer[4:4 + length])
                buffer = buffer[4 + length:]

    def send(first, count):
        for index in range(first, first + count):
            frame = frame_bytes(index, 1)
            host.sendall(struct.pack(">I", len(frame)) + frame)

    def send_frames():
        ready.wait()
        send(0, args.frames)

    console = []

    def read_console():
        started = False
        with open(args.log, "w") as log:
            for raw in qemu.stdout:
                line = raw.decode("utf-8", "replace").replace("\r", "").rstrip("\n")
                log.write(line + "\n")
                log.flush()
                console.append(line)
                if "dma-vm-test: guest up" in line:
                    started = True
                    line = line[line.index("dma-vm-test: guest up"):]
                if started and EXTENT not in line:  # the extent list is in the log only
                    print(line, flush=True)
                if READY in line:
                    ready.set()
                request = SEND.search(line)
                if request:
                    send(int(request.group(2)), int(request.group(1)))

    threads = [threading.Thread(target=f, daemon=True) for f in (read_frames, send_frames, read_console)]
    for t in threads:
        t.start()
    begun = time.monotonic()
    try:
        qemu.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        qemu.kill()
        qemu.wait()
        print(f"dma-vm-test: FAILED: the guest did not finish within {args.timeout}s; last console lines:",
              file=sys.stderr)
        print("\n".join(console[-30:]), file=sys.stderr)
        return 1
    threads[2].join(timeout=5)
    time.sleep(0.2)  # the last frames the guest sent
    host.close()
    print(f"==> guest ran {time.monotonic() - begun:.0f}s")

    # One tally and one exit line per guest program.
    programs = ["dma-vm-check"] + (["nvme-vm-check"] if args.nvme_image else [])
    tally = [l for l in console if re.fullmatch(r"\d+ passed, \d+ failed", l)]
    exit_lines = [l for l in console if re.fullmatch(r"(dma|nvme)-vm-check exit=\d+", l)]
    if len(tally) != len(programs) or [l.split(" ")[0] for l in exit_lines] != programs:
        print(f"dma-vm-test: FAILED: {len(tally)} tallies and exit lines {exit_lines} from the guest, "
              f"want one each from {', '.join(programs)} (qemu exit {qemu.returncode}); last console lines:",
              file=sys.stderr)
        print("\n".join(console[-30:]), file=sys.stderr)
        return 1
    counts = [list(map(int, re.findall(r"\d+", l))) for l in tally]
    guest_passed, guest_failed = sum(c[0] for c in counts), sum(c[1] for c in counts)

    # Host checks: every frame the guest sent from packet-pool buffers, byte for byte.
    passed = failed = 0

    def check(name, ok, detail):
        nonlocal passed, failed
        if ok:
            passed += 1
        else:
            failed += 1
        print(f"{'PASS' if ok else 'FAIL'} host: {name}: {detail}")

    from_guest = [f for f in received if len(f) >= 16 and f[6] == 0x02 and f[11] == 2 and f[12:14] == b"\x88\xb5"]
    check(f"{args.frames} frames from the guest", len(from_guest) == args.frames,
          f"{len(from_guest)} test frames, {len(received) - len(from_guest)} others")
    bad = []
    seen = set()
    for frame in from_guest:
        (index,) = struct.unpack(">H", frame[14:16])
        seen.add(index)
        if index >= args.frames or frame != frame_bytes(index, 2):
            bad.append(f"frame {index}: length {len(frame)}")
    lengths = [len(f) for f in from_guest] or [0]
    check("transmitted frames byte for byte", not bad and len(seen) == args.frames,
          f"{len(seen)} distinct, {min(lengths)}…{max(lengths)} bytes"
          + (f"; bad: {', '.join(bad[:3])}" if bad else ", all equal" if from_guest else ""))

    if args.nvme_image:
        check_nvme_image(args.nvme_image, console, check)

    total_passed, total_failed = guest_passed + passed, guest_failed + failed
    print(f"{total_passed} passed, {total_failed} failed")
    if total_failed or any(not l.endswith(" exit=0") for l in exit_lines):
        print(f"dma-vm-test: FAILED ({total_passed} passed, {total_failed} failed, {'; '.join(exit_lines)})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
