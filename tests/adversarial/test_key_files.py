"""Attacks on a node's identity key file, by a local account that can plant files in the
data dir before the node starts, against real ``meshnode run`` processes.

Invariant: a node only ever runs under a key that is a regular 0600 file in its data dir.
A symlink at ``node.key`` (to a key of the attacker's choosing, or dangling) makes
``meshnode run`` exit non-zero at once with one line saying why; it never starts, never
takes the planted identity and never creates a key through the link.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshnode.runtime.store import KEY_FILE, save_identity
from protocol import Identity

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 60.0
"""Longest a refused ``meshnode run`` may take before the test gives up on it."""
REFUSAL_WITHIN_S = 30.0
"""A refusal must come this soon (interpreter start and imports included)."""


def _run(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "meshnode.cli",
            "run",
            "--name",
            "victim",
            "--port",
            "0",
            "--profile",
            "local",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "WARNING",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_a_symlinked_key_is_refused_by_meshnode_run(tmp_path: Path) -> None:
    """``node.key`` is a symlink to a valid 0600 key the attacker made: the node exits
    non-zero with one line naming the symlink, and never announces the planted identity.

    On the unfixed code: the node followed the link, started and listened under the
    planted key's node id."""
    planted = Identity.generate()
    planted_file = tmp_path / "attacker" / "their.key"
    save_identity(planted_file, planted)
    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)
    (data_dir / KEY_FILE).symlink_to(planted_file)
    started = time.monotonic()
    done = _run(data_dir)
    assert done.returncode != 0
    assert time.monotonic() - started < REFUSAL_WITHIN_S
    assert "listening" not in done.stdout
    assert planted.node_id not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "is a symlink" in lines[0]
    assert (data_dir / KEY_FILE).is_symlink()  # refused, not replaced


def test_a_dangling_key_symlink_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    """``node.key`` is a symlink to a path that does not exist yet: the node refuses to
    start rather than creating a key there (or silently replacing the link with a fresh
    identity).

    On the unfixed code: the node generated a new identity, replaced the link with it
    and started."""
    target = tmp_path / "attacker" / "new.key"
    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)
    (data_dir / KEY_FILE).symlink_to(target)
    done = _run(data_dir)
    assert done.returncode != 0
    assert "listening" not in done.stdout
    assert "is a symlink" in done.stderr
    assert not target.exists()
    assert (data_dir / KEY_FILE).is_symlink()
