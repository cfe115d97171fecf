"""A node's key as its A2A credential, against real ``meshnode run`` processes sealed
under one keyring.

Invariants: a request signed by an admitted member of the mesh (``Meshnode-*`` headers,
meshnode/core/request_auth.py) gets WORK access on a node that trusts neither loopback
nor anything but its API token, and sees the tasks it started and no others; the same
request replayed, a stale one, one signed by a key that is not a member, and one whose
body was changed after signing, one signed for another node, and a stranger's signature
under a member's id are refused (401) and start nothing. A node importing another node's
A2A endpoint (its card public) signs its calls for that node, so they work without the
token, and the trace of a delegation through the import spans the three nodes.

On the code before the import client named the skill in ``metadata.skill`` (it sent only
``meshnode_skill``, which a node's endpoint does not read): the worker routed the text by
discovery and the delegation through the proxy failed with HTTP 502 ("no peer in the mesh
offers 'the request'").
"""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshnode.core.request_auth import HEADER_NODE, sign_request
from meshnode.runtime.store import KEY_FILE, load_identity, save_keyring
from protocol.identity import Identity
from protocol.jws import jwk_for_node
from protocol.keyring import Keyring
from tests.adversarial.attack import http_json
from tests.integration.cluster import NodeProcess, wait_until

pytest.importorskip("a2a.client")

pytestmark = pytest.mark.slow

AGENTS = str(Path(__file__).parents[1] / "integration" / "a2a_agents.py")
TOKEN = "signed-a2a-token-0123456789"
SETTLE_S = 30.0
CALLER_TRACE = "6e0c63257de34c92bf9efcd03927272e"
CALLER_SPAN = "b7ad6b7169203331"


def _send_body(text: str, *, skill: str = "slow_echo") -> bytes:
    message = {
        "messageId": uuid.uuid4().hex,
        "role": "ROLE_USER",
        "parts": [{"data": {"text": text}}],
        "metadata": {"skill": skill},
    }
    call = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}}
    return json.dumps(call).encode()


def _rpc_body(method: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 2, "method": method, "params": params}).encode()


def _signed(
    identity: Identity, audience: str, body: bytes, *, now: float | None = None
) -> dict[str, str]:
    """A2A headers and ``identity``'s signature of ``POST /a2a`` with ``body`` for the
    node ``audience``."""
    when = time.time() if now is None else now
    signature = sign_request(
        identity, identity.node_id, audience, "POST", "/a2a", body, when, random.Random()
    )
    return {"A2A-Version": "1.0", "Content-Type": "application/json", **signature}


def _post(address: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"http://{address}/a2a", content=body, headers=headers, timeout=30)


def _closed_worker(name: str, base: Path, seeds: list[str], *extra: str) -> NodeProcess:
    """A worker that trusts neither loopback nor anything but its token."""
    flags = [
        *extra,
        "--agent",
        f"{AGENTS}:A2AWorker",
        "--api-token",
        TOKEN,
        "--no-trust-loopback",
    ]
    return NodeProcess(name, base / name, seeds, extra=flags).start()


def test_member_signatures_grant_work_and_forgeries_are_refused(tmp_path: Path) -> None:
    ring = tmp_path / "ring.json"
    save_keyring(ring, Keyring.new("signed"))
    keyed = ["--keyring", str(ring), "--embedder", "hashing"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    worker = _closed_worker("w", tmp_path, [], *keyed)
    nodes = [worker]
    try:
        # A second worker whose card is public (--open-reads), for the import below: the
        # import client reads a card before it knows which node serves it.
        published = _closed_worker("o", tmp_path, [worker.address], *keyed, "--open-reads")
        nodes.append(published)
        member = NodeProcess("m", tmp_path / "m", [worker.address], extra=keyed).start()
        nodes.append(member)
        keys = tmp_path / "agents.jwks.json"  # o's card is signed by its node key
        keys.write_text(json.dumps({"keys": [jwk_for_node(published.node_id)]}))
        proxy_flags = [*keyed, "--a2a-key", str(keys)]
        proxy = NodeProcess("p", tmp_path / "p", [worker.address], extra=proxy_flags).start()
        nodes.append(proxy)

        def sees_members(node: NodeProcess) -> bool:
            got = httpx.get(f"http://{node.address}/v1/members", headers=auth, timeout=5)
            alive = {m["node_id"] for m in got.json()["members"] if m["state"] == "alive"}
            return {member.node_id, proxy.node_id} <= alive

        wait_until(lambda: sees_members(worker), SETTLE_S, "w sees m and p alive")
        wait_until(lambda: sees_members(published), SETTLE_S, "o sees m and p alive")
        me = load_identity(tmp_path / "m" / KEY_FILE)
        assert me.node_id == member.node_id
        address, w = worker.address, worker.node_id

        # Unsigned and token-less: refused, card included; a member's signed GET reads it.
        assert _post(address, _send_body("x"), {"A2A-Version": "1.0"}).status_code == 401
        card_url = f"http://{address}/.well-known/agent-card.json"
        assert httpx.get(card_url, timeout=5).status_code == 401
        card_path = "/.well-known/agent-card.json"
        signed_get = sign_request(
            me, me.node_id, w, "GET", card_path, b"", time.time(), random.Random()
        )
        card = httpx.get(card_url, headers=signed_get, timeout=5)
        assert card.status_code == 200
        scheme = card.json()["securitySchemes"]["meshnodeSignature"]["apiKeySecurityScheme"]
        assert scheme["name"] == "Meshnode-Signature"

        # A member's signed SendMessage: done, without the token.
        body = _send_body("signed hello")
        headers = _signed(me, w, body)
        reply = _post(address, body, headers)
        assert reply.status_code == 200, reply.text
        task = reply.json()["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED", task["status"]

        def tasks_by_token() -> int:
            listed = _post(address, _rpc_body("ListTasks", {}), {**auth, "A2A-Version": "1.0"})
            return int(listed.json()["result"]["totalSize"])

        assert tasks_by_token() == 1

        # Its own task by id, signed; the operator's task is not found to it.
        get_own = _rpc_body("GetTask", {"id": task["id"]})
        own = _post(address, get_own, _signed(me, w, get_own)).json()
        assert own["result"]["id"] == task["id"]
        operator = _post(address, _send_body("operator's"), {**auth, "A2A-Version": "1.0"})
        theirs = operator.json()["result"]["task"]["id"]
        get_theirs = _rpc_body("GetTask", {"id": theirs})
        hidden = _post(address, get_theirs, _signed(me, w, get_theirs)).json()
        assert hidden["error"]["code"] == -32001, hidden
        started = tasks_by_token()
        assert started == 2

        # The same request again: a replay.
        replayed = _post(address, body, headers)
        assert replayed.status_code == 401 and "replayed" in replayed.text
        # Signed two minutes ago.
        stale_body = _send_body("stale")
        stale = _post(address, stale_body, _signed(me, w, stale_body, now=time.time() - 120))
        assert stale.status_code == 401 and "old" in stale.text
        # A fresh key that never joined: judged as unsigned, so refused.
        stranger = Identity.generate()
        odd = _send_body("stranger")
        assert _post(address, odd, _signed(stranger, w, odd)).status_code == 401
        # The member's signature, another body.
        tampered = _post(address, _send_body("tampered"), _signed(me, w, _send_body("x")))
        assert tampered.status_code == 401 and "does not verify" in tampered.text
        # The member's signature for another node (o), replayed here.
        meant = _send_body("meant for o")
        elsewhere = _post(address, meant, _signed(me, published.node_id, meant))
        assert elsewhere.status_code == 401 and "does not verify" in elsewhere.text
        # The stranger's signature under the member's id.
        forged = {**_signed(stranger, w, odd), HEADER_NODE: me.node_id}
        assert _post(address, odd, forged).status_code == 401
        assert tasks_by_token() == started  # none of these started anything

        # Node to node: the proxy imports o's endpoint; its calls are signed for o.
        status, imported = http_json(
            proxy.address, "/v1/a2a/import", {"url": f"http://{published.address}"}, timeout=20
        )
        assert status == 200, imported
        assert "o.slow_echo" in imported["capabilities"]

        def member_finds_proxy() -> bool:
            status, hits = http_json(
                member.address, "/v1/discover", {"capability_name": "o.slow_echo"}
            )
            return status == 200 and any(c["node_id"] == proxy.node_id for c in hits["candidates"])

        wait_until(member_finds_proxy, SETTLE_S, "the member discovers the proxy")
        parent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        done = httpx.post(
            f"http://{member.address}/v1/delegate",
            json={"capability": "o.slow_echo", "input": {"text": "through the proxy"}},
            headers={"traceparent": parent},
            timeout=30,
        )
        assert done.status_code == 200, done.text
        assert done.json()["output"]["data"] == [{"text": "through the proxy"}]
        assert done.json()["trace_id"] == CALLER_TRACE

        proxied = httpx.get(f"http://{proxy.address}/v1/traces/{CALLER_TRACE}", timeout=5)
        (client,) = [s for s in proxied.json()["spans"] if s["kind"] == "client"]
        assert client["name"] == "invoke_agent o.slow_echo"
        assert client["attributes"]["meshnode.a2a.signed"] is True
        served = httpx.get(
            f"http://{published.address}/v1/traces/{CALLER_TRACE}", headers=auth, timeout=5
        ).json()["spans"]
        a2a_server = [s for s in served if s["attributes"].get("a2a.method") == "SendMessage"]
        assert len(a2a_server) == 1, served
        assert a2a_server[0]["parent_span_id"] == client["span_id"]
        run = [s for s in served if s is not a2a_server[0] and s["kind"] == "server"]
        assert [s["parent_span_id"] for s in run] == [a2a_server[0]["span_id"]]
    finally:
        for node in nodes:
            node.stop()
