"""Helpers to run real ``meshnode run`` processes on 127.0.0.1 and query them over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT = 30.0
"""Seconds a process may take to print its listening line (imports included)."""


@dataclass
class NodeProcess:
    name: str
    data_dir: Path
    seeds: list[str]
    port: int = 0
    profile: str = "local"
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    node_id: str = ""
    address: str = ""

    def start(self) -> NodeProcess:
        cmd = [
            sys.executable,
            "-m",
            "meshnode.cli",
            "run",
            "--name",
            self.name,
            "--port",
            str(self.port),
            "--profile",
            self.profile,
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "WARNING",
            *self.extra,
        ]
        for seed in self.seeds:
            cmd += ["--seed", seed]
        with open(self.data_dir.with_suffix(".log"), "a") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if event.get("event") == "listening":
                    self.node_id, self.address = event["node_id"], event["address"]
                    self.port = int(self.address.rsplit(":", 1)[1])
                    return self
        raise RuntimeError(f"{self.name} did not start; see {self.data_dir.with_suffix('.log')}")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=5) as resp:
            return json.loads(resp.read())

    def members(self) -> dict[str, dict[str, Any]]:
        return {m["node_id"]: m for m in self.get("/v1/members")["members"]}

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (urllib.error.URLError, OSError, KeyError) as exc:
            last_error = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what} ({last_error})")


@contextlib.contextmanager
def cluster(base: Path, n: int, profile: str = "local") -> Iterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    try:
        seed = NodeProcess("n0", base / "n0", [], profile=profile).start()
        nodes.append(seed)
        for i in range(1, n):
            nodes.append(
                NodeProcess(f"n{i}", base / f"n{i}", [seed.address], profile=profile).start()
            )
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (None if there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent: picks the outgoing address
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address
