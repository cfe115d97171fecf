"""Browser origins and DNS rebinding against real ``meshnode run`` processes.

A web page the operator visits can send requests to a node's API on 127.0.0.1: a form post
or a "simple" cross-origin ``fetch`` is sent without any CORS approval, and a page whose
domain resolves to 127.0.0.1 (DNS rebinding) can read the answers too. Invariants:

* ``POST /v1/delegate`` carrying a foreign ``Origin`` (or ``Origin: null``, or
  ``Sec-Fetch-Site: cross-site``) gets HTTP 403 with a JSON error and starts nothing:
  the requester's delegation counters and the provider's ``tasks_served`` stay at 0;
  the same request without those headers, or from the node's own origin (the
  dashboard), runs the task;
* a request relying on loopback trust whose ``Host`` names another domain
  (``evil.example:PORT``) gets HTTP 403, as does a rebinding page's same-origin request;
  the node's address, ``localhost`` and a ``--api-host`` name pass, and so does a request
  with the right API token whatever its ``Host``.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.attack import NodeProcess, split_address, wait_until

pytestmark = pytest.mark.slow

AGENT = str(Path(__file__).resolve().parents[1] / "integration" / "cli_agents.py") + ":Upper"
TOKEN = "origins-test-token-0123456789"


def _request(
    address: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One request with exactly ``headers`` (a ``Host`` given here replaces the real
    one); ``(status, JSON body or text)``."""
    host, port = split_address(address)
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = dict(headers or {})
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError:
        return resp.status, raw.decode("utf-8", "replace")


def _health(node: NodeProcess) -> dict[str, Any]:
    status, body = _request(node.address, "GET", "/v1/health")
    assert status == 200
    return dict(body)


def _tasks(node: NodeProcess) -> dict[str, int]:
    return dict(_health(node)["counters"]["tasks"])


def test_cross_origin_delegate_is_refused_before_any_work(tmp_path: Path) -> None:
    """On the unfixed code: the first cross-site post (``Origin: http://evil.example``)
    was run: HTTP 200 with the provider's output ``{"text": "HI"}``."""
    running: list[NodeProcess] = []
    try:
        provider = NodeProcess(
            "provider", tmp_path / "provider", [], extra=["--agent", AGENT]
        ).start()
        running.append(provider)
        requester = NodeProcess("requester", tmp_path / "requester", [provider.address]).start()
        running.append(requester)
        wait_until(
            lambda: any(
                m["node_id"] == provider.node_id
                for m in _request(requester.address, "GET", "/v1/manifests")[1]["manifests"]
            ),
            30,
            "the requester knows the provider's manifest",
        )
        task = {"capability": "uppercase_text", "input": {"text": "hi"}, "deadline_s": 10}
        attacks = [
            {"Origin": "http://evil.example"},
            {"Origin": "null", "Content-Type": "text/plain"},  # sandboxed page, no-cors
            {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
        ]
        for headers in attacks:
            status, body = _request(requester.address, "POST", "/v1/delegate", task, headers)
            assert status == 403, (headers, status, body)
            assert isinstance(body, dict) and "refused" in body["error"]
        counters = _tasks(requester)
        assert counters["delegations_ok"] == 0 and counters["delegations_failed"] == 0
        assert _tasks(provider)["tasks_served"] == 0
        assert _health(requester)["drops"]["api_cross_origin"] == len(attacks)

        # Tools (no Origin) and the node's own page (its own origin) still delegate.
        status, body = _request(requester.address, "POST", "/v1/delegate", task)
        assert status == 200, body
        assert body["output"] == {"text": "HI"}
        own = {"Origin": f"http://{requester.address}", "Sec-Fetch-Site": "same-origin"}
        status, body = _request(requester.address, "POST", "/v1/delegate", task, own)
        assert status == 200, body
        wait_until(
            lambda: _tasks(provider)["tasks_served"] == 2, 10, "the provider served both tasks"
        )
    finally:
        for node in running:
            node.stop()


def test_rebinding_host_is_refused_unless_it_names_the_node(tmp_path: Path) -> None:
    """On the unfixed code: ``GET /v1/members`` with ``Host: evil.example:PORT`` answered
    HTTP 200 with the member list."""
    node = NodeProcess(
        "n0",
        tmp_path / "n0",
        [],
        extra=["--api-host", "mesh.test", "--api-token", TOKEN, "--embedder", "hashing"],
    ).start()
    try:
        _, port = split_address(node.address)
        evil = f"evil.example:{port}"
        status, body = _request(node.address, "GET", "/v1/members", headers={"Host": evil})
        assert status == 403, body
        assert "does not name this node" in body["error"]
        # A rebinding page's own fetch: same origin as far as the browser knows.
        rebinding = {"Host": evil, "Origin": f"http://{evil}", "Sec-Fetch-Site": "same-origin"}
        status, body = _request(
            node.address, "POST", "/v1/discover", {"description": "x"}, rebinding
        )
        assert status == 403, body
        status, body = _request(
            node.address, "GET", "/v1/members", headers={"Host": evil, "Sec-Fetch-Site": "none"}
        )
        assert status == 403, body
        drops = _health(node)["drops"]
        assert drops["api_host_refused"] == 1 and drops["api_cross_origin"] == 2

        # What names the node passes: no Host rewrite, localhost, an --api-host name.
        for host in (None, f"localhost:{port}", f"mesh.test:{port}", f"MESH.test.:{port}"):
            headers = {} if host is None else {"Host": host}
            status, body = _request(node.address, "GET", "/v1/members", headers=headers)
            assert status == 200, (host, body)
            assert any(m["node_id"] == node.node_id for m in body["members"])
        # The token is a secret no page can attach: it passes whatever the Host.
        bearer = {"Host": evil, "Authorization": f"Bearer {TOKEN}"}
        status, body = _request(node.address, "GET", "/v1/members", headers=bearer)
        assert status == 200, body
    finally:
        node.stop()
