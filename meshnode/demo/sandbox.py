"""Run a Python snippet in a child process with limits.

This is **isolation, not a sandbox**. The child runs as the same user as the node, can
read any file that user can read, and can open network connections. What it gets:

* a fresh interpreter in isolated mode (``python -I``: no ``PYTHON*`` variables, no user
  site-packages, the script's directory not on ``sys.path``) with an **empty
  environment** (no secrets inherited from the node) in a new, empty temporary working
  directory that is deleted afterwards;
* its own session and process group, so a timeout kills whatever it started too;
* resource limits set in the child before ``exec`` (``preexec_fn``): address space
  (``RLIMIT_AS``, :attr:`RunLimits.memory_bytes`), CPU seconds (``RLIMIT_CPU``), size of
  files it writes (``RLIMIT_FSIZE``), open files (``RLIMIT_NOFILE``) and no core dumps;
* a wall-clock deadline (:attr:`RunLimits.timeout_s`) after which the group is killed;
* an output cap (:attr:`RunLimits.output_bytes` for stdout and stderr each): the child is
  killed once it writes more, and what it wrote up to the cap is kept.

Run code you do not trust inside a container, a VM or a dedicated unprivileged user on
top of this; the limits here keep a buggy snippet from taking the node down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["MAX_CODE_CHARS", "RunLimits", "RunResult", "run_python"]

MAX_CODE_CHARS = 100_000
"""Longest snippet accepted (characters)."""
PIPE_DRAIN_S = 1.0
"""After the run ends, how long to wait for its output pipes to close (a process that
left the group may hold them open)."""


@dataclass(frozen=True, slots=True)
class RunLimits:
    """Limits on one run. Defaults suit small computations in the standard library."""

    timeout_s: float = 5.0
    """Wall-clock seconds before the process group is killed."""
    memory_bytes: int = 256 * 1024 * 1024
    """Address-space limit (``RLIMIT_AS``). The bare interpreter needs about 30 MiB;
    importing numpy needs more than 256 MiB because of its thread pools' reservations."""
    output_bytes: int = 64 * 1024
    """Most bytes kept from stdout and from stderr, each; writing more kills the run."""
    file_bytes: int = 1024 * 1024
    """Largest file the snippet may write (``RLIMIT_FSIZE``)."""
    open_files: int = 64
    """Most open file descriptors (``RLIMIT_NOFILE``)."""

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= 300:
            raise ValueError("timeout_s must be in (0, 300]")
        for name in ("memory_bytes", "output_bytes", "file_bytes", "open_files"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class RunResult:
    """What happened to one run."""

    exit_code: int | None
    """The process's exit status; negative for a signal (``-9``: killed); None never."""
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.output_truncated

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "duration_ms": round(self.duration_ms, 3), "ok": self.ok}


def _limiter(limits: RunLimits) -> Callable[[], None]:
    cpu = int(limits.timeout_s) + 1

    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _drain(
    stream: asyncio.StreamReader, cap: int, buffer: bytearray, over: asyncio.Event
) -> None:
    """Read to the end, keeping the first ``cap`` bytes; set ``over`` past the cap."""
    while chunk := await stream.read(16 * 1024):
        room = cap - len(buffer)
        if room > 0:
            buffer += chunk[:room]
        if len(chunk) > room:
            over.set()


async def run_python(
    code: str, limits: RunLimits | None = None, *, python: str = sys.executable
) -> RunResult:
    """Run ``code`` with ``python -I`` under ``limits`` (see the module docstring)."""
    limits = limits or RunLimits()
    if not isinstance(code, str) or len(code) > MAX_CODE_CHARS:
        raise ValueError(f"code must be a string of at most {MAX_CODE_CHARS} characters")
    if "\x00" in code:
        raise ValueError("code must not contain NUL characters")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="meshnode-run-") as workdir:
        proc = await asyncio.create_subprocess_exec(
            python,
            "-I",
            "-c",
            code,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=workdir,
            env={},
            start_new_session=True,
            preexec_fn=_limiter(limits),
        )
        assert proc.stdout is not None and proc.stderr is not None
        out, err = bytearray(), bytearray()
        over = asyncio.Event()
        readers: asyncio.Future[tuple[None, None]] = asyncio.gather(
            _drain(proc.stdout, limits.output_bytes, out, over),
            _drain(proc.stderr, limits.output_bytes, err, over),
        )
        overflow: asyncio.Future[bool] = asyncio.ensure_future(over.wait())
        timed_out = truncated = False
        try:
            waiting: set[asyncio.Future[Any]] = {readers, overflow}
            done, _ = await asyncio.wait(
                waiting, timeout=limits.timeout_s, return_when="FIRST_COMPLETED"
            )
            truncated = overflow in done
            timed_out = not truncated and readers not in done
        finally:
            overflow.cancel()
            # Kill the whole group before reaping the leader, so its id cannot have been
            # reused: this also ends anything the snippet started and left behind.
            _kill_group(proc)
            exit_code = await asyncio.shield(proc.wait())
            # Everything in the group is dead, so the pipes reach their end at once unless
            # a process left the group; then stop reading and close them ourselves.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(readers), PIPE_DRAIN_S)
            if not readers.done():
                readers.cancel()
                transport = getattr(proc, "_transport", None)
                if transport is not None:
                    transport.close()
            await asyncio.gather(readers, overflow, return_exceptions=True)
    return RunResult(
        exit_code=exit_code,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        timed_out=timed_out,
        output_truncated=truncated,
        duration_ms=(time.monotonic() - started) * 1000,
    )
