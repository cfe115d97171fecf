"""External A2A agents served through the mesh: agents written with the official a2a-sdk
(``a2a_agent_server.py``: Starlette under uvicorn on 127.0.0.1, a real ``AgentExecutor``)
are imported by one ``meshnode run`` process (``meshnode a2a import URL --node``, and
``--a2a-import``) and called from another.

Invariants: the imported skill is discovered BY DESCRIPTION from another node and a
delegation by description runs on the external agent through the proxy node; the
capability is marked in the proxy's signed manifest as a proxy for that URL; a card whose
signature does not verify is refused and publishes nothing; a failing external agent
lowers the caller's trust in the proxy node (it is the provider); an agent asking for
more input is the caller's problem (invalid input, no blame); a skill removed upstream is
withdrawn and a new one published on the next refresh; with signatures required an
unsigned card is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("a2a")
pytest.importorskip("jwt")

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.adversarial.attack import http_json
from tests.integration.cluster import NodeProcess, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
AGENT = Path(__file__).with_name("a2a_agent_server.py")
READY_S = 30.0
SHOUT_QUERY = "reverse a sentence and shout it back in capital letters"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def agent(*args: str) -> Iterator[str]:
    """An external agent on a free port; yields its base URL."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(AGENT), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line)["event"] == "listening", line
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An EC P-256 key pair: (private PEM the agents sign with, public PEM the node pins)."""
    base = tmp_path_factory.mktemp("keys")
    private = ec.generate_private_key(ec.SECP256R1())
    priv_path, pub_path = base / "agent.pem", base / "agent.pub.pem"
    priv_path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv_path, pub_path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "meshnode.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def _capabilities(node: NodeProcess, of: NodeProcess) -> dict[str, dict[str, Any]]:
    for manifest in node.get("/v1/manifests")["manifests"]:
        if manifest["node_id"] == of.node_id:
            return {c["name"]: c for c in manifest["capabilities"]}
    return {}


def _direct(caller: NodeProcess, of: NodeProcess) -> float | None:
    for peer in caller.get("/v1/trust")["peers"]:
        if peer["node_id"] == of.node_id:
            direct: float | None = peer["direct"]
            return direct
    return None


@contextlib.contextmanager
def mesh(tmp_path: Path, *proxy_flags: str) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    nodes: list[NodeProcess] = []
    try:
        proxy = NodeProcess(
            "proxy", tmp_path / "proxy", [], extra=["--embedder", "hashing", *proxy_flags]
        ).start()
        nodes.append(proxy)
        caller = NodeProcess(
            "caller", tmp_path / "caller", [proxy.address], extra=["--embedder", "hashing"]
        ).start()
        nodes.append(caller)
        wait_until(lambda: proxy.node_id in caller.members(), READY_S, "the nodes meet")
        yield proxy, caller
    finally:
        for node in nodes:
            node.stop()


def test_imported_agent_is_discovered_by_description_and_called(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    with (
        agent("--sign-key", str(private)) as good,
        agent("--sign-key", str(private), "--tamper", "--name", "Forged Agent") as forged,
        mesh(tmp_path, "--a2a-key", str(public)) as (proxy, caller),
    ):
        done = _cli("a2a", "import", good, "--node", proxy.address, "--json")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["signed"] is True
        assert summary["capabilities"] == ["Shouter_Agent.shout"]

        wait_until(
            lambda: "Shouter_Agent.shout" in _capabilities(caller, proxy),
            READY_S,
            "the caller sees the proxied skill",
        )
        cap = _capabilities(caller, proxy)["Shouter_Agent.shout"]
        assert "a2a-proxy" in cap["tags"] and f"a2a:{good}" in cap["tags"]
        assert cap["input_schema"]["properties"] == {
            "text": {"type": "string", "minLength": 1, "maxLength": 100000}
        }

        def found() -> bool:
            status, body = http_json(caller.address, "/v1/discover", {"description": SHOUT_QUERY})
            best = body["candidates"][0] if status == 200 and body["candidates"] else {}
            return best.get("capability") == "Shouter_Agent.shout"

        wait_until(found, READY_S, "discovery by description finds the imported skill")
        status, body = http_json(
            caller.address,
            "/v1/delegate",
            {"description": SHOUT_QUERY, "input": {"text": "hello mesh"}, "deadline_s": 20},
            timeout=30,
        )
        assert status == 200, body
        assert body["provider"] == proxy.node_id
        assert body["output"] == {
            "state": "completed",
            "text": "HSEM OLLEH",
            "data": [{"words": 2}],
        }

        refused = _cli("a2a", "import", forged, "--node", proxy.address)
        assert refused.returncode == 1
        assert "signature is not valid" in refused.stderr
        listed = _cli("a2a", "list", "--node", proxy.address, "--json")
        assert [a["url"] for a in json.loads(listed.stdout)["agents"]] == [good]
        assert not any(n.startswith("Forged") for n in _capabilities(caller, proxy))


def test_failing_agent_lowers_trust_in_the_proxy(tmp_path: Path) -> None:
    with (
        agent("--mode", "fail", "--name", "Flaky Agent") as flaky,
        agent("--mode", "input", "--name", "Curious Agent") as curious,
        mesh(tmp_path, "--a2a-import", flaky, "--a2a-import", curious) as (proxy, caller),
    ):
        wait_until(
            lambda: (
                {"Flaky_Agent.shout", "Curious_Agent.shout"} <= set(_capabilities(caller, proxy))
            ),
            READY_S,
            "the caller sees both agents' skills",
        )
        # Holding the manifest is not enough: its skills are indexed in the background, and
        # a delegation before that finds no provider (seen once on a loaded machine).
        wait_until(
            lambda: all(
                http_json(caller.address, "/v1/discover", {"capability_name": name})[1].get(
                    "candidates"
                )
                for name in ("Flaky_Agent.shout", "Curious_Agent.shout")
            ),
            READY_S,
            "the caller's discovery finds both agents' skills",
        )
        status, body = http_json(
            caller.address,
            "/v1/delegate",
            {"capability": "Curious_Agent.shout", "input": {"text": "translate this"}},
            timeout=30,
        )
        assert status == 422 and body["invalid_input"] is True, body
        assert "which language do you mean?" in body["error"]
        assert _direct(caller, proxy) is None, "asking for input is not the proxy's failure"

        for _ in range(3):
            status, body = http_json(
                caller.address,
                "/v1/delegate",
                {"capability": "Flaky_Agent.shout", "input": {"text": "hello"}, "deadline_s": 20},
                timeout=30,
            )
            assert status == 502, body
            assert "the model is down" in body["attempts"][0]["detail"]
        wait_until(
            lambda: (_direct(caller, proxy) or 1.0) < 0.5,
            10,
            "the caller's opinion of the proxy drops below neutral",
        )
        trust = {p["node_id"]: p for p in caller.get("/v1/trust")["peers"]}[proxy.node_id]
        assert trust["trust"] < 0.5


def test_refresh_publishes_and_withdraws_skills(tmp_path: Path) -> None:
    skills = tmp_path / "skills.json"
    old = {"id": "shout", "name": "Shout", "description": "Shout text", "tags": ["text"]}
    new = {"id": "whisper", "name": "Whisper", "description": "Whisper text", "tags": ["text"]}
    skills.write_text(json.dumps([old]))
    with (
        agent("--skills-file", str(skills)) as url,
        mesh(tmp_path, "--a2a-import", url, "--a2a-refresh", "0.5") as (proxy, caller),
    ):
        wait_until(
            lambda: "Shouter_Agent.shout" in _capabilities(caller, proxy), READY_S, "imported"
        )
        skills.write_text(json.dumps([new]))
        wait_until(
            lambda: set(_capabilities(caller, proxy)) == {"Shouter_Agent.whisper"},
            READY_S,
            "the removed skill is withdrawn and the new one published",
        )


async def test_an_agent_that_never_answers_fails_the_task_in_time() -> None:
    """A hanging agent: the forwarded call gives up at its time budget with a clear
    reason (a failure, charged to the proxy like any other), and counts it."""
    import time

    from meshnode import MeshNode, NodeConfig
    from meshnode.runtime.a2a_import import A2AImporter, AgentTaskFailed

    with agent("--mode", "hang") as url:
        node = MeshNode(NodeConfig.local(name="p", port=0, embedder="hashing"))
        async with node, A2AImporter(node, call_timeout_s=1.0) as importer:
            await importer.import_agent(url)
            started = time.monotonic()
            with pytest.raises(AgentTaskFailed, match=r"did not finish within 1\.0 s"):
                await importer.call(url, "shout", {"text": "anyone there?"})
            assert time.monotonic() - started < 5.0
            assert importer.counts["timeouts"] == 1


async def test_unsigned_card_refused_when_signatures_are_required(tmp_path: Path) -> None:
    """``require_signed``: an unsigned card is refused and nothing is published; without
    it the same card is accepted (and marked unsigned)."""
    from meshnode import MeshNode, NodeConfig
    from meshnode.runtime.a2a_import import A2AImporter, CardRefused

    with agent() as url:
        node = MeshNode(NodeConfig.local(name="p", port=0, embedder="hashing"))
        async with node:
            async with A2AImporter(node, require_signed=True) as strict:
                with pytest.raises(CardRefused, match="not signed"):
                    await strict.import_agent(url)
                assert node.capabilities == {}
            async with A2AImporter(node) as lenient:
                imported = await lenient.import_agent(url)
                assert imported.signed is False
                assert set(node.capabilities) == {"Shouter_Agent.shout"}


def _swap(argv: list[str], old: str, new: str) -> list[str]:
    return [a.replace(old, new) for a in argv]


def test_docs_a2a_snippets_run(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """docs/interop.md, "Putting existing A2A agents on the mesh": the CLI block (run with
    --a2a-import and --a2a-key, then a2a import and a2a list) and the Python block run
    against a real signed agent and do what the page says."""
    from tests.integration import doc_snippets

    private, public = keys
    start, imp, lst = doc_snippets.commands("a2a-cli")
    with agent("--sign-key", str(private)) as url:
        port = str(_free_port())
        start = _swap(_swap(start, "http://127.0.0.1:9999", url), "7946", port)
        start = _swap(start, "agents.pub.pem", str(public))
        start += ["--data-dir", str(tmp_path / "proxy"), "--profile", "local"]
        start += ["--embedder", "hashing", "--log-level", "WARNING"]
        with doc_snippets.running(start, tmp_path, tmp_path / "proxy.log") as address:
            assert address.endswith(f":{port}")
            done = doc_snippets.run(_swap(_swap(imp, "http://127.0.0.1:9999", url), "7946", port))
            assert done.returncode == 0, done.stderr
            assert "imported Shouter_Agent" in done.stdout and "(signed: True)" in done.stdout
            listed = doc_snippets.run(_swap(lst, "7946", port))
            assert listed.returncode == 0, listed.stderr
            assert url in listed.stdout and "Shouter_Agent.shout" in listed.stdout

        script = tmp_path / "import_agent.py"
        script.write_text(doc_snippets.snippet("a2a-python"))
        (tmp_path / "agents.pub.pem").write_bytes(public.read_bytes())
        ran = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env={**doc_snippets.env(), "AGENT_URL": url},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        assert "imported Shouter_Agent as Shouter_Agent.shout" in ran.stdout
        assert "Shouter_Agent.shout is a proxy: True" in ran.stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--a2a-key", "/nonexistent.pem"], "cannot read the key file /nonexistent.pem"),
        (["--a2a-refresh", "0"], "refresh_s must be at least 0.2"),
        (["--a2a-import", "ftp://example.org"], "only http and https agents"),
        (["--mcp-expose", "/nonexistent.json"], "cannot read MCP config /nonexistent.json"),
    ],
)
def test_bad_bridge_flags_stop_the_node_with_a_clear_error(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    done = _cli(
        *["run", "--port", "0", "--profile", "local", "--embedder", "hashing"],
        *["--data-dir", str(tmp_path / "n"), "--log-level", "WARNING", *flags],
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
