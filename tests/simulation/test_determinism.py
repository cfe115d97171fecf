"""Same seed and arguments: byte-identical JSON; another seed: another run.

How it is tested: the command line runs in fresh interpreter processes with different
``PYTHONHASHSEED`` values (so any behaviour that leaked from set or dict hashing order would
show), and the two ``--no-timing`` reports are compared byte for byte. With timing on, the
reports differ only in their ``timing`` section.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, name: str, *args: str, hash_seed: str = "0") -> bytes:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    result = subprocess.run(
        [sys.executable, "-m", "simulations", *args, "--json", str(out), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode in (0, 2), result.stdout + result.stderr
    assert result.stdout.startswith("seed="), result.stdout
    return out.read_bytes()


ARGS = (
    "--nodes", "12", "--loss", "0.05", "--latency-ms", "0.5:2", "--duration", "10",
    "--profile", "local", "--duplicate", "0.02", "--reorder", "0.05",
)  # fmt: skip


@pytest.mark.parametrize("scenario", ["crash", "partition-heal"])
def test_same_seed_gives_byte_identical_json(tmp_path: Path, scenario: str) -> None:
    """Two processes, two hash seeds, one simulation seed: identical report bytes."""
    args = ("--scenario", scenario, "--seed", "11", *ARGS, "--no-timing")
    first = _run(tmp_path, "a", *args, hash_seed="1")
    second = _run(tmp_path, "b", *args, hash_seed="2")
    assert first == second
    assert b'"timing"' not in first


def test_different_seed_gives_a_different_run(tmp_path: Path) -> None:
    base = ("--scenario", "crash", *ARGS, "--no-timing")
    first = json.loads(_run(tmp_path, "a", *base, "--seed", "11"))
    second = json.loads(_run(tmp_path, "b", *base, "--seed", "12"))
    assert first["seed"] != second["seed"]
    assert first["results"] != second["results"]


def test_timing_is_the_only_difference(tmp_path: Path) -> None:
    """With timing on, everything outside the ``timing`` section is identical."""
    args = ("--scenario", "churn", "--seed", "5", *ARGS)
    first = json.loads(_run(tmp_path, "a", *args, hash_seed="3"))
    second = json.loads(_run(tmp_path, "b", *args, hash_seed="4"))
    assert set(first["timing"]) == {"wall_s", "events_per_s"}
    first.pop("timing")
    second.pop("timing")
    assert first == second


def test_converged_start_gives_byte_identical_json(tmp_path: Path) -> None:
    """A converged start (shared member tables, bulk tracker counts) is as deterministic
    as a join."""
    args = (
        "--scenario", "crash", "--start", "converged", "--seed", "13", *ARGS, "--no-timing",
    )  # fmt: skip
    first = _run(tmp_path, "a", *args, hash_seed="5")
    second = _run(tmp_path, "b", *args, hash_seed="6")
    assert first == second
    assert b'"start": "converged"' in first
