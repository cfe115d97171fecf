"""A packet relay that delays every IP packet routed through a TUN device.

Run inside the router namespace of the multi-host harness (see docs/multihost.md). The
kernel routes each packet that crosses from one region to the other into the TUN device;
this process reads it, holds it for ``--delay-ms`` milliseconds, and writes it back into
the same device, from where the kernel routes it on to its destination. It works on
packets, not sockets, so UDP and TCP (and ICMP) are delayed alike, in order.

The device is created by this process (not persistent): it disappears when the process
exits, so a dead relay cuts the regions apart instead of leaving an undelayed path.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
"""ioctl number that attaches a file descriptor to a TUN/TAP interface (linux/if_tun.h)."""
IFF_TUN = 0x0001
"""TUN (layer 3: IP packets) rather than TAP (layer 2: frames)."""
IFF_NO_PI = 0x1000
"""No 4-byte packet-information header before each packet."""
MAX_PACKET_BYTES = 65_535
"""Largest packet read from the device (the IPv4 maximum)."""
MAX_QUEUED_PACKETS = 20_000
"""Packets held at once; beyond this a new packet is dropped, as a full router queue
would. 20,000 × 1,500 bytes is 30 MB at most; the mesh's own traffic stays far below."""
DEFAULT_DELAY_MS = 20.0
"""One-way delay added to each packet (ms): 20 ms each way is a 40 ms round trip."""


def open_tun(name: str) -> int:
    """Create the TUN device ``name`` (IP packets, no header) and return its descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def relay(fd: int, delay_s: float) -> None:
    """Forward packets from ``fd`` back into it ``delay_s`` seconds after they arrived."""
    queue: collections.deque[tuple[float, bytes]] = collections.deque()
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, packet = queue.popleft()
            try:
                os.write(fd, packet)
            except OSError:
                pass  # one bad packet (e.g. no route) never stops the relay
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if not readable:
            continue
        now = time.monotonic()
        while True:  # drain what is there now
            try:
                packet = os.read(fd, MAX_PACKET_BYTES)
            except BlockingIOError:
                break
            if len(queue) < MAX_QUEUED_PACKETS:
                queue.append((now + delay_s, packet))
            if not select.select([fd], [], [], 0)[0]:
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", required=True, help="TUN device to create")
    parser.add_argument(
        "--delay-ms", type=float, default=DEFAULT_DELAY_MS, help="one-way delay (default 20)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.delay_ms <= 10_000:
        parser.error("--delay-ms must be within 0..10000")
    fd = open_tun(args.dev)
    os.set_blocking(fd, False)
    print("ready", flush=True)
    relay(fd, args.delay_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
