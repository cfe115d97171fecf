"""``meshnode run`` on an address other hosts reach needs admission or ``--open``.

Invariants: bound to ``0.0.0.0`` with neither keyring nor authority, ``meshnode run``
exits 2 before binding, with one line naming the fix; ``--open`` starts it; a keyring
starts it; on loopback nothing is needed (every other process test runs so).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cluster import NodeProcess

pytestmark = pytest.mark.slow


def test_an_open_mesh_on_a_reachable_address_needs_open_said(tmp_path: Path) -> None:
    """On the code before the rule: the first command started and listened on 0.0.0.0."""
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshnode.cli",
            "run",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--profile",
            "local",
            "--data-dir",
            str(tmp_path / "a"),
            "--embedder",
            "hashing",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "refusing to run an open mesh on 0.0.0.0" in line
    assert "meshnode keys init" in line and "--open" in line
    assert "listening" not in refused.stdout

    extra = ["--host", "0.0.0.0", "--advertise-host", "127.0.0.1", "--embedder", "hashing"]
    opened = NodeProcess("b", tmp_path / "b", [], extra=[*extra, "--open"]).start()
    try:
        assert opened.get("/v1/health")["status"] in ("ok", "degraded")
    finally:
        opened.stop()

    ring = tmp_path / "ring.json"
    init = subprocess.run(
        [sys.executable, "-m", "meshnode.cli", "keys", "init", str(ring)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    keyed = NodeProcess("c", tmp_path / "c", [], extra=[*extra, "--keyring", str(ring)]).start()
    try:
        assert keyed.get("/v1/health")["status"] in ("ok", "degraded")
    finally:
        keyed.stop()
