"""The command line: seed first, replay command on failure, exit codes, outputs."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from simulations import cli
from simulations.progress import WIDTH, Progress, format_duration, time_left
from simulations.scenarios import Outcome, Spec, run_scenario

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


def test_summary_gives_rounds_with_two_decimals_and_the_round_length() -> None:
    """The rumor summary prints its round counts with 2 decimals and says how long a round
    is. On the unfixed code: ``rumor: rounds p50/p99/max 0.271514/0.797009/0.797009
    (heard: 0.700441 max; analytic 3.16)``, with no round length."""
    result = _cli(
        "--scenario", "rumor", "--nodes", "20", "--seed", "1", "--duration", "5",
        "--profile", "local",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.strip().startswith("rumor:"))
    assert re.search(
        r"applied after \d+\.\d\d/\d+\.\d\d/\d+\.\d\d gossip rounds p50/p99/max "
        r"\(1 round = gossip_interval 0\.05 s\), heard after \d+\.\d\d max; "
        r"analytic bound \d+\.\d\d rounds$",
        line,
    ), line


def phase_lines(text: str) -> dict[str, list[str]]:
    """The progress lines of each phase, in order, by phase label."""
    phases: dict[str, list[str]] = {}
    for line in text.replace("\r", "\n").splitlines():
        if "[" in line and "%" in line:
            phases.setdefault(line.split("[", 1)[0].strip(), []).append(line)
    return phases


def test_every_phase_bar_ends_at_100_percent() -> None:
    """Each phase's last progress line is at 100 % and says how long the phase took, also
    for phases that end on a condition before their time limit. On the unfixed code: the
    bootstrap's last line was at 0.0 % and the rumor's at 0.8 %."""
    stream = io.StringIO()
    spec = Spec("rumor", nodes=20, seed=1, duration=5.0, profile="local")
    outcome = run_scenario(spec, Progress(stream=stream))
    assert not outcome.failed
    phases = phase_lines(stream.getvalue())
    assert list(phases) == ["start", "bootstrap", "settle", "rumor"]
    for label, lines in phases.items():
        assert "100.0%" in lines[-1], (label, lines[-1])
        assert "done in" in lines[-1], (label, lines[-1])
        assert "#" * WIDTH in lines[-1]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_estimates_the_time_left() -> None:
    """While a phase runs the bar shows an estimate of the wall time left (here with a
    wall clock that advances 2 s per reading, so the estimate is seconds, not "<1 s"); on
    a terminal the bar is redrawn in place and its last drawing is at 100 %."""
    readings = iter(range(0, 10**6, 2))
    stream = _Terminal()
    spec = Spec("steady", nodes=30, seed=1, duration=20.0, profile="local")
    outcome = run_scenario(spec, Progress(stream=stream, wall=lambda: float(next(readings))))
    assert not outcome.failed
    text = stream.getvalue()
    steady = phase_lines(text)["steady"]
    running = [line for line in steady if "100.0%" not in line]
    assert running, steady  # the phase was drawn while it ran
    assert all(re.search(r"left (~\d+ (s|min)|<1 s)", line) for line in running), running
    assert re.search(r"left ~\d+ s", running[0]), running[0]
    assert "done in" in steady[-1] and "100.0%" in steady[-1]
    assert text.count("\n") == len(phase_lines(text))  # one line per phase, redrawn in place


@pytest.mark.parametrize(
    ("fraction", "elapsed", "left"),
    [(0.0, 10.0, None), (0.5, 10.0, 10.0), (0.25, 30.0, 90.0), (1.0, 5.0, 0.0), (0.9, 9.0, 1.0)],
)
def test_time_left_runs_the_rest_at_the_pace_so_far(
    fraction: float, elapsed: float, left: float | None
) -> None:
    assert (
        time_left(fraction, elapsed) == pytest.approx(left)
        if left is not None
        else (time_left(fraction, elapsed) is None)
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "<1 s"), (42.3, "42 s"), (185.0, "3 min 05 s"), (7440.0, "2 h 04 min")],
)
def test_durations_read_plainly(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_rumor_plot_x_axis_is_in_rounds() -> None:
    """The rumor plot's bound and goal lines are counted in rounds, and so is its x axis:
    the goal line sits at goal_factor × bound rounds, the simulated curves end at their
    last time / gossip_interval, and the label states the round length. On the unfixed
    code: x in seconds ("seconds after publication"), the goal line at 0.258 (5.16 rounds
    × 0.05 s)."""
    from simulations.plot import dissemination_figure

    spec = Spec("rumor", nodes=50, seed=1, duration=5.0, profile="local")
    outcome = run_scenario(spec)
    curve = outcome.curve
    assert curve is not None
    fig = dissemination_figure(curve)
    try:
        ax = fig.axes[0]
        assert (
            ax.get_xlabel() == "gossip rounds after publication (1 round = gossip_interval 0.05 s)"
        )
        goal = float(curve["goal_factor"]) * float(curve["bound_rounds"])
        vertical = [line.get_xdata()[0] for line in ax.lines if len(set(line.get_xdata())) == 1]
        assert goal == pytest.approx(max(vertical))
        heard = next(line for line in ax.lines if line.get_label().startswith("heard"))
        assert heard.get_xdata()[-1] == pytest.approx(curve["heard"][-1] / curve["gossip_interval"])
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_an_output_into_a_missing_folder_is_refused_before_the_run(
    flag: str, tmp_path: Path
) -> None:
    """``--json``/``--plot`` into a folder that does not exist: refused at once (status
    64), before the seed is drawn and anything runs. On the unfixed code: the whole run,
    then ``FileNotFoundError`` (a traceback, status 1) when writing the JSON report, and
    for ``--plot`` the same from matplotlib's savefig."""
    target = tmp_path / "missing" / "out.file"
    result = _cli("--scenario", "rumor", "--nodes", "5", "--seed", "1", flag, str(target))
    assert result.returncode == 64, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"error: {flag} {target}: the folder {target.parent} does not exist"
    )
    assert result.stdout == ""
