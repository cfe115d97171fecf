"""``meshnode status`` against a live mesh of ``meshnode run`` processes.

Invariants: ``--json`` gives the node's view (members by state, health, tasks with their
outcome, capabilities ranked by providers) and the text output shows the same on one
screen; a node that wants its token refuses a status without it (exit 1, a clear message)
and answers with ``--token``; ``--watch`` refreshes until interrupted and then exits 0.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import NodeProcess, wait_until

pytestmark = pytest.mark.slow

AGENTS = Path(__file__).with_name("dashboard_agents.py")
TOKEN = "status-token-0123456789"
COMMAND_TIMEOUT_S = 30.0


def status(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshnode.cli", "status", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env={**os.environ, "COLUMNS": "120", **(env or {})},
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base = tmp_path_factory.mktemp("mesh")
    nodes: list[NodeProcess] = []
    common = ["--embedder", "hashing"]
    try:
        seed = NodeProcess("n0", base / "n0", [], extra=common).start()
        nodes.append(seed)
        for name, extra in (
            ("translator", ["--agent", f"{AGENTS}:Translator"]),
            ("translator-2", ["--agent", f"{AGENTS}:Translator"]),
            ("idle", []),
        ):
            nodes.append(
                NodeProcess(name, base / name, [seed.address], extra=[*common, *extra]).start()
            )
        wait_until(lambda: len(seed.members()) == 4, 20, "n0 knows all four members")
        wait_until(
            lambda: len(seed.get("/v1/manifests")["manifests"]) == 4, 20, "n0 has every manifest"
        )
        request = urllib.request.Request(
            f"http://{seed.address}/v1/delegate",
            data=json.dumps({"capability": "translate_text", "input": {"text": "hi"}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=15) as resp:
            assert resp.status == 200
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_status_json_is_the_nodes_view(mesh: list[NodeProcess]) -> None:
    n0 = mesh[0]
    done = status("--node", n0.address, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["node"]["node_id"] == n0.node_id and doc["node"]["status"] == "ok"
    assert doc["metrics"]["members"] == {"alive": 4, "suspect": 0, "dead": 0, "left": 0}
    (task,) = doc["tasks"]["recent"]
    assert task["capability"] == "translate_text" and task["outcome"] == "ok"
    assert task["provider"] in {mesh[1].node_id, mesh[2].node_id} and task["trace_id"]
    assert (
        task["provider_name"]
        == {mesh[1].node_id: "translator", mesh[2].node_id: "translator-2"}[task["provider"]]
    )
    top = doc["capabilities"]["top"]
    assert top[0]["name"] == "translate_text" and top[0]["providers"] == 2
    assert doc["metrics"]["delegations_ok"] == 1


def test_status_text_fits_one_screen_with_the_same_facts(mesh: list[NodeProcess]) -> None:
    n0 = mesh[0]
    done = status("--node", n0.address)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("\n") <= 24  # one screen
    assert f"n0 {n0.node_id[:10]} {n0.address}" in out and " ok " in out
    assert "alive 4  suspect 0  dead 0  left 0" in out
    assert "delegations ok 1" in out
    line = next(x for x in out.splitlines() if x.startswith("translate_text"))
    assert line.split()[1] == "2"  # providers
    task = next(x for x in out.splitlines() if "translate_text" in x and " ok" in x).split()
    assert task[2] in {"translator", "translator-2"} and task[3] == "ok"


def test_status_needs_the_token_when_the_node_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ["--embedder", "hashing", "--no-trust-loopback"]
    node = NodeProcess("locked", tmp_path / "locked", [], extra=extra)
    with monkeypatch.context() as env:
        env.setenv("MESHNODE_API_TOKEN", TOKEN)  # the node's token, kept off its command line
        node.start()
    try:
        refused = status("--node", node.address, env={"MESHNODE_API_TOKEN": ""})
        assert refused.returncode == 1
        assert "401" in refused.stderr and "api token" in refused.stderr
        allowed = status("--node", node.address, "--token", TOKEN, "--json")
        assert allowed.returncode == 0, allowed.stderr
        assert json.loads(allowed.stdout)["node"]["node_id"] == node.node_id
    finally:
        node.stop()


def test_status_watch_refreshes_until_interrupted(mesh: list[NodeProcess]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshnode.cli", "status", "--node", mesh[0].address, "--json",
         "--watch", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    # Read every line as it comes (a pipe nobody reads fills up and blocks the writer).
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        docs = [json.loads(lines.get(timeout=COMMAND_TIMEOUT_S)) for _ in range(3)]
        assert all(d["node"]["node_id"] == mesh[0].node_id for d in docs)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(COMMAND_TIMEOUT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(COMMAND_TIMEOUT_S)  # it ends at the exited process's end of output
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    bad = status("--node", mesh[0].address, "--watch", "0")
    assert bad.returncode == 2 and "--watch" in bad.stderr
