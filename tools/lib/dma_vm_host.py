#!/usr/bin/env python3
"""Host side of tools/dma-vm-test: boots the guest with an e1000 whose link
is one end of a socketpair, sends frames to it, checks the frames it sends.

QEMU's `-netdev socket,fd=N` on a stream socket carries each frame after its
length as a 4-byte big-endian integer. The guest prints
"dma-vm-check: ready to receive" when its receive ring is up; the host then
sends the frames, and reads what the guest transmits until QEMU exits.

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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--initrd", required=True)
    parser.add_argument("--append", required=True)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--timeout", type=int, default=180)
    parser.add_argument("--log", required=True)
    parser.add_argument("--iommu", action="store_true",
                        help="add QEMU's intel-iommu (interrupt remapping, 48-bit addresses)")
    args = parser.parse_args()

    host, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # aw-bits=48: the default 39-bit width rejects user-space addresses as
    # IOVAs; intremap=on: without it VFIO_SET_IOMMU fails with EPERM.
    iommu = ["-device", "intel-iommu,intremap=on,aw-bits=48"] if args.iommu else []
    command = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-machine", "q35",
        "-m", "1G", "-smp", "1",
        "-kernel", args.kernel, "-initrd", args.initrd, "-append", args.append,
        *iommu,
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
                if started:
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

    tally = [l for l in console if re.fullmatch(r"\d+ passed, \d+ failed", l)]
    exit_line = [l for l in console if re.fullmatch(r"dma-vm-check exit=\d+", l)]
    if not tally or not exit_line:
        print(f"dma-vm-test: FAILED: no tally from the guest (qemu exit {qemu.returncode}); last console lines:",
              file=sys.stderr)
        print("\n".join(console[-30:]), file=sys.stderr)
        return 1
    guest_passed, guest_failed = map(int, re.findall(r"\d+", tally[-1]))

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

    total_passed, total_failed = guest_passed + passed, guest_failed + failed
    print(f"{total_passed} passed, {total_failed} failed")
    if total_failed or exit_line[-1] != "dma-vm-check exit=0":
        print(f"dma-vm-test: FAILED ({total_passed} passed, {total_failed} failed, {exit_line[-1]})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
