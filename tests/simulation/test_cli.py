"""The command line: seed first, replay command on failure, exit codes, outputs."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from simulations import cli
from simulations.scenarios import Outcome

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations", *args, "--quiet"],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_failed_check_prints_a_replay_command_that_replays(tmp_path: Path) -> None:
    """A liveness failure exits 2 and prints a command; that command, run again, produces
    the very same report."""
    first = tmp_path / "first.json"
    args = ["--scenario", "crash", "--nodes", "10", "--seed", "9", "--duration", "2"]
    result = _cli(*args, "--json", str(first), "--no-timing")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "seed=9"
    assert "LIVENESS CHECK FAILED: crashes_detected" in result.stdout
    replay = next(line for line in lines if line.startswith("replay: "))
    command = shlex.split(replay.removeprefix("replay: "))
    assert command[:3] == ["python", "-m", "simulations"]
    second = tmp_path / "second.json"
    again = _cli(*command[3:], "--json", str(second), "--no-timing")
    assert again.returncode == 2
    assert first.read_bytes() == second.read_bytes()


def test_random_seed_is_printed_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = _cli("--scenario", "join", "--nodes", "5", "--duration", "10", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    seed = int(result.stdout.splitlines()[0].removeprefix("seed="))
    report = json.loads(out.read_text())
    assert report["seed"] == seed
    assert f"--seed {seed}" in report["command"]
    assert report["passed"] is True


def test_plot_is_written(tmp_path: Path) -> None:
    png = tmp_path / "rumor.png"
    result = _cli(
        "--scenario", "rumor", "--nodes", "20", "--seed", "1", "--duration", "5",
        "--profile", "local", "--plot", str(png),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_safety_violation_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(spec: object, progress: object = None) -> Outcome:
        return Outcome({}, [], ["t=1.0: n3 sent a 1500-byte datagram (limit 1400)"], 10, 1.0)

    monkeypatch.setattr(cli, "run_scenario", broken)
    code = cli.main(["--scenario", "join", "--seed", "4", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert "SAFETY VIOLATION: t=1.0: n3 sent a 1500-byte datagram" in out
    assert "replay: python -m simulations --scenario join --nodes 50 --seed 4" in out


def test_bad_arguments_are_refused() -> None:
    result = _cli("--scenario", "join", "--nodes", "0")
    assert result.returncode != 0
    assert "nodes must be at least 1" in result.stderr


def test_replay_command_keeps_a_converged_start() -> None:
    from simulations.report import command_line
    from simulations.scenarios import Spec

    spec = Spec("steady", nodes=30, seed=4, duration=5.0, start="converged")
    command = shlex.split(command_line(spec))
    assert "--start" in command
    replayed = cli.spec_from_args(cli.parse_args(command[3:]))
    assert replayed == spec
    assert "--start" not in command_line(Spec("steady"))


def test_a_converged_join_is_refused() -> None:
    result = _cli("--scenario", "join", "--start", "converged", "--nodes", "5")
    assert result.returncode == 64
    assert "cannot start converged" in result.stderr
