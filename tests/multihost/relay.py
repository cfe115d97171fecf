"""A packet relay that delays every IP packet routed through a TUN device.

Run inside the router namespace of the multi-host harness (see docs/multihost.md). The
kernel routes every packet between two nodes into the TUN device; this process reads it,
holds it, and writes it back into the same device, from where the kernel routes it on to
its destination. The hold depends on the regions of the two ends: a node's region is the
third octet of its IPv4 address (10.213.1.x is one region, 10.213.2.x another), so a
packet within one region waits ``--local-delay-ms``, one between regions ``--delay-ms``.
It works on packets, not sockets, so UDP and TCP (and ICMP) are delayed alike; packets of
one pair of ends keep their order.

The device is created by this process (not persistent): it disappears when the process
exits, so a dead relay cuts the regions apart instead of leaving an undelayed path.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import heapq
import itertools
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
"""One-way delay between regions (ms): 20 ms each way is a 40 ms round trip."""
DEFAULT_LOCAL_DELAY_MS = 0.5
"""One-way delay inside a region (ms): a 1 ms round trip."""
IPV4_HEADER_BYTES = 20
"""Shortest IPv4 header; a shorter packet (or not IPv4) gets the inter-region delay."""


def region_delay(packet: bytes, local_s: float, remote_s: float) -> float:
    """The hold for ``packet``: ``local_s`` when source and destination share the third
    octet of their IPv4 address, else ``remote_s``."""
    if len(packet) < IPV4_HEADER_BYTES or packet[0] >> 4 != 4:
        return remote_s
    return local_s if packet[14] == packet[18] else remote_s


def open_tun(name: str) -> int:
    """Create the TUN device ``name`` (IP packets, no header) and return its descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def relay(fd: int, local_s: float, remote_s: float) -> None:
    """Forward packets from ``fd`` back into it, each after its :func:`region_delay`."""
    queue: list[tuple[float, int, bytes]] = []
    order = itertools.count()  # equal release times keep arrival order
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, packet = heapq.heappop(queue)
            with contextlib.suppress(OSError):  # one bad packet never stops the relay
                os.write(fd, packet)
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
                due = now + region_delay(packet, local_s, remote_s)
                heapq.heappush(queue, (due, next(order), packet))
            if not select.select([fd], [], [], 0)[0]:
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", required=True, help="TUN device to create")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=DEFAULT_DELAY_MS,
        help="one-way delay between regions (default 20)",
    )
    parser.add_argument(
        "--local-delay-ms",
        type=float,
        default=DEFAULT_LOCAL_DELAY_MS,
        help="one-way delay inside a region (default 0.5)",
    )
    args = parser.parse_args(argv)
    for flag, value in (("--delay-ms", args.delay_ms), ("--local-delay-ms", args.local_delay_ms)):
        if not 0 <= value <= 10_000:
            parser.error(f"{flag} must be within 0..10000")
    fd = open_tun(args.dev)
    os.set_blocking(fd, False)
    print("ready", flush=True)
    relay(fd, args.local_delay_ms / 1000, args.delay_ms / 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
