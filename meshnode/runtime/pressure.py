"""This machine's CPU and memory pressure, read from the kernel for the load advertisement.

``cpu`` is the one-minute load average per online CPU (``os.getloadavg()[0] /
os.cpu_count()``) and ``memory`` the share of memory in use (``1 − MemAvailable /
MemTotal`` from ``/proc/meminfo``), both as whole percent clamped to 0..100: the
``Pressure`` message's range. Where a source is missing (no ``/proc``, no load average)
that part reads 0, so a node never advertises pressure it did not measure.
"""

from __future__ import annotations

import os
from pathlib import Path

from protocol.messages import PRESSURE_MAX

__all__ = ["MEMINFO", "PRESSURE_SAMPLE_S", "cpu_pressure", "memory_pressure", "read_pressure"]

PRESSURE_SAMPLE_S = 5.0
"""Seconds between two readings (the load average itself moves over a minute; a reading
is two small file reads)."""

MEMINFO = Path("/proc/meminfo")
"""Where the kernel reports memory (Linux)."""

_MEMINFO_MAX_BYTES = 64 * 1024
"""Most of ``/proc/meminfo`` read (it is about 1.5 KiB)."""


def _percent(fraction: float) -> int:
    if fraction != fraction:  # NaN
        return 0
    return max(0, min(PRESSURE_MAX, round(fraction * 100)))


def cpu_pressure() -> int:
    """One-minute load average per CPU, percent (0..100; 0 when unavailable)."""
    try:
        one_minute = os.getloadavg()[0]
    except OSError:
        return 0
    return _percent(one_minute / max(1, os.cpu_count() or 1))


def memory_pressure(meminfo: Path = MEMINFO) -> int:
    """Memory in use, percent (0..100; 0 when ``meminfo`` is missing or unreadable)."""
    try:
        with meminfo.open("rb") as f:
            text = f.read(_MEMINFO_MAX_BYTES).decode("ascii", "replace")
    except OSError:
        return 0
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip()] = int(parts[0])
    total, available = fields.get("MemTotal", 0), fields.get("MemAvailable")
    if total <= 0 or available is None:
        return 0
    return _percent(1.0 - available / total)


def read_pressure() -> tuple[int, int]:
    """``(cpu, memory)`` percent, each 0..100."""
    return cpu_pressure(), memory_pressure()
