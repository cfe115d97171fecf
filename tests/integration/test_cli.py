"""The ``meshnode`` command against real ``meshnode run`` processes.

Invariants: ``keygen`` creates a 0600 key and prints the id ``run`` then uses; ``members``,
``discover``, ``delegate`` and ``trust`` print what the node's HTTP API says, as tables or
JSON; a successful delegation raises the requester's trust in the provider; bad arguments
exit 2 with a message, an unreachable node exits 1.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.cluster import NodeProcess, wait_until

AGENT = str(Path(__file__).with_name("cli_agents.py")) + ":Upper"
pytestmark = pytest.mark.slow


def meshnode(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshnode.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_end_to_end(tmp_path: Path) -> None:
    keygen = meshnode("keygen", "--data-dir", str(tmp_path / "a"), "--json")
    assert keygen.returncode == 0, keygen.stderr
    key = json.loads(keygen.stdout)
    assert stat.S_IMODE(Path(key["key_file"]).stat().st_mode) == 0o600

    a = NodeProcess("a", tmp_path / "a", [], extra=["--embedder", "hashing"]).start()
    b = NodeProcess(
        "b", tmp_path / "b", [a.address], extra=["--embedder", "hashing", "--agent", AGENT]
    ).start()
    try:
        assert a.node_id == key["node_id"]
        wait_until(
            lambda: len(a.get("/v1/manifests")["manifests"]) == 2, 30, "a learns b's manifest"
        )

        members = meshnode("members", "--node", a.address, "--json")
        assert members.returncode == 0, members.stderr
        states = {m["node_id"]: m["state"] for m in json.loads(members.stdout)}
        assert states == {a.node_id: "alive", b.node_id: "alive"}
        table = meshnode("members", "--node", a.address).stdout
        assert "ADDRESS" in table
        assert b.address in table

        def found() -> bool:
            out = meshnode("discover", "make this text upper case", "--node", a.address, "--json")
            return bool(json.loads(out.stdout))

        wait_until(found, 30, "a's index holds b's capability")
        hits = json.loads(
            meshnode("discover", "make this text upper case", "--node", a.address, "--json").stdout
        )
        assert hits[0]["capability"] == "uppercase_text"
        assert hits[0]["node_id"] == b.node_id
        score = hits[0]["score"]
        assert {"total", "relevance", "semantic", "lexical", "trust", "availability"} <= set(score)
        table = meshnode("discover", "upper case", "--node", a.address).stdout
        header, row = table.splitlines()[:2]
        assert header.split()[3:9] == ["SCORE", "SEM", "LEX", "TRUST", "AVAIL", "COST"]
        assert "uppercase_text" in row
        assert (
            json.loads(
                meshnode(
                    "discover", "upper", "--node", a.address, "--max-cost", "0.0001", "--json"
                ).stdout
            )
            == []
        )

        done = meshnode(
            "delegate",
            "uppercase_text",
            "--input",
            '{"text": "mesh"}',
            "--node",
            a.address,
            "--expect",
            '{"type": "object", "required": ["text"]}',
            "--json",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert result["output"] == {"text": "MESH"}
        assert result["provider"] == b.node_id
        assert result["quality"] == 1.0
        plain = meshnode(
            "delegate", "uppercase_text", "--input", '{"text": "x"}', "--node", a.address
        )
        assert json.loads(plain.stdout) == {"text": "X"}

        trust = json.loads(meshnode("trust", "--node", a.address, "--json").stdout)
        peer = {p["node_id"]: p for p in trust["peers"]}[b.node_id]
        assert peer["direct"] > 0.5
        assert peer["breaker"] == "closed"

        bad_input = meshnode(
            "delegate", "uppercase_text", "--input", '{"txt": 1}', "--node", a.address, "--json"
        )
        assert bad_input.returncode == 1
        assert "invalid_input" in bad_input.stdout
    finally:
        a.stop()
        b.stop()

    assert meshnode("delegate", "x", "--input", "not json").returncode == 2
    assert meshnode("discover").returncode == 2
    unreachable = meshnode("members", "--node", "127.0.0.1:1")
    assert unreachable.returncode == 1
    assert "error" in unreachable.stderr


def test_discover_waits_for_a_manifest_then_gives_up_plainly(tmp_path: Path) -> None:
    """``discover --wait`` asks again until a candidate is found: run right after two nodes
    start, it finds the peer's capability (exit 0); for a capability no one offers it
    gives up after the wait with one line on stderr (exit 1, empty JSON list on stdout
    with ``--json``); a wait out of range is refused before anything is asked."""
    a = NodeProcess("a", tmp_path / "a", [], extra=["--embedder", "hashing"]).start()
    b = NodeProcess(
        "b", tmp_path / "b", [a.address], extra=["--embedder", "hashing", "--agent", AGENT]
    )
    try:
        b.start()
        out = meshnode(
            "discover", "--capability", "uppercase_text", "--wait", "30", "--node", a.address,
            "--json",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert [c["node_id"] for c in json.loads(out.stdout)] == [b.node_id]

        none = meshnode("discover", "--capability", "nobody_has_this", "--wait", "1",
                        "--node", a.address)  # fmt: skip
        assert none.returncode == 1
        assert none.stderr.strip() == "no candidates within 1 s"
        none_json = meshnode("discover", "--capability", "nobody_has_this", "--wait", "0.5",
                             "--node", a.address, "--json")  # fmt: skip
        assert none_json.returncode == 1 and json.loads(none_json.stdout) == []

        bad = meshnode("discover", "--capability", "x", "--wait", "0", "--node", a.address)
        assert bad.returncode != 0 and "--wait must be in (0, 600] seconds" in bad.stderr
    finally:
        b.stop()
        a.stop()
