"""Every example runs as ``python examples/NAME.py``, ends by itself, and passes the check
it makes of its own output (exit status 0, and the answer it prints is the right one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMEOUT_S = 150.0
"""For all of them: a first discovery by description loads MiniLM, slow on a busy machine."""

pytestmark = pytest.mark.slow

EXPECTED = {
    "hello_agent.py": ["Hello, mesh!", "check: ok"],
    "translation_agent.py": [
        "found translate_text on translator",
        "Hola amigo, buenos días! La malla funciona.",
        "check: ok",
    ],
    "two_agent_pipeline.py": [
        "18 words; most common: **gossip** ×2, **mesh** ×2, **node** ×2",
        "check: ok",
    ],
    "embed_in_aiohttp_app.py": [
        "/discover → shout on shouter",
        "/ask → {'text': 'HI MESH'}",
        "check: ok",
    ],
}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    workdir: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every example at once (each from its own scratch directory, as a user would run it
    after cloning); they share nothing, and waiting on them together halves the time."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    started: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    try:
        for name in sorted(EXPECTED):
            workdir = tmp_path_factory.mktemp(name.removesuffix(".py"))
            proc = subprocess.Popen(
                [sys.executable, str(EXAMPLES / name)],
                cwd=workdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            started[name] = (proc, workdir)
        deadline = time.monotonic() + TIMEOUT_S
        out: dict[str, Run] = {}
        for name, (proc, workdir) in started.items():
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out[name] = Run(proc.returncode, stdout, stderr, workdir)
        return out
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_checks_itself(name: str, runs: dict[str, Run]) -> None:
    run = runs[name]
    assert run.returncode == 0, f"{name} failed:\n{run.stdout}\n{run.stderr[-3000:]}"
    lines = run.stdout.splitlines()
    for expected in EXPECTED[name]:
        assert any(expected in line for line in lines), (expected, run.stdout)
    assert list(run.workdir.iterdir()) == [], "an example left files behind"
