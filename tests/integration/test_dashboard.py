"""The live dashboard: its event stream and access rules on real nodes (in this process,
on 127.0.0.1), and the page itself in headless Chromium against a live 5-node mesh of
``meshnode run`` processes.

Invariants: the page and its assets carry a Content-Security-Policy that allows no inline
or foreign script; mesh data needs READ access, given to the page by a bearer token for
fetches and by a one-use, short-lived stream ticket for ``EventSource`` (the token never
appears in a URL); at most ``MAX_EVENT_STREAMS`` streams are served at once and a reader
that falls behind is dropped, never buffered without bound; a node shuts down promptly
with pages open; in the browser a user sees every member, discovers providers by typing,
sees a delegation appear with its trace link, sees a killed node turn suspect then dead,
and a capability description full of markup is shown as text and never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshnode import MeshNode, NodeConfig
from meshnode.runtime.dashboard import (
    CONTENT_SECURITY_POLICY,
    MAX_EVENT_STREAMS,
    MAX_EVENT_STREAMS_PER_ADDRESS,
    EventHub,
)
from tests.integration.cluster import NodeProcess, wait_until
from tests.integration.dashboard_agents import HOSTILE_DESCRIPTION

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AGENTS = Path(__file__).with_name("dashboard_agents.py")
TOKEN = "dashboard-token-0123456789"
SCREENSHOT = Path(__file__).parents[2] / "docs" / "images" / "dashboard.png"
EVENT_WAIT_S = 15.0
"""Longest wait for an event the node must send (its minimum interval is 1 s)."""


def _config(**kw: Any) -> NodeConfig:
    return NodeConfig.local(port=0, embedder="hashing", **kw)


@asynccontextmanager
async def _nodes(*configs: NodeConfig) -> AsyncIterator[list[MeshNode]]:
    nodes: list[MeshNode] = []
    try:
        for config in configs:
            node = MeshNode(config)
            await node.start()
            nodes.append(node)
        yield nodes
    finally:
        for node in reversed(nodes):
            await node.aclose()


async def _events(
    resp: aiohttp.ClientResponse, until: Callable[[str, dict[str, Any]], bool]
) -> list[tuple[str, dict[str, Any]]]:
    """Read server-sent events until ``until(kind, data)`` holds (within EVENT_WAIT_S)."""
    seen: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(EVENT_WAIT_S):
        kind = ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                seen.append((kind, data))
                if until(kind, data):
                    return seen
    raise AssertionError(f"stream ended before the condition held; saw {[k for k, _ in seen]}")


async def _ticket(session: aiohttp.ClientSession, url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(f"{url}/v1/events/ticket", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["ticket"])


# ============================================================================ in process


async def test_the_page_is_served_with_a_strict_content_security_policy() -> None:
    async with _nodes(_config(name="a")) as (a,), aiohttp.ClientSession() as s:
        for path in ("/", "/ui", "/ui/app.js", "/ui/trace.js", "/ui/style.css"):
            async with s.get(a.url + path) as resp:
                assert resp.status == 200, path
                assert resp.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                body = await resp.text()
        async with s.get(a.url + "/") as resp:
            page = await resp.text()
        assert "<script>" not in page and " on" not in page.split("<body>")[1].split(">")[0]
        assert "script-src 'self'" in CONTENT_SECURITY_POLICY
        assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
        for path in ("/ui/../api.py", "/ui/index.html.bak", "/ui/dashboard.py"):
            async with s.get(a.url + path) as resp:
                assert resp.status == 404, path
        assert body  # the last asset was not empty


async def test_the_stream_starts_with_a_snapshot_then_sends_deltas_on_change() -> None:
    """A page sees the members at once, then a member that joins later as a delta."""
    async with _nodes(_config(name="a")) as (a,), aiohttp.ClientSession() as s:
        ticket = await _ticket(s, a.url)
        async with s.get(a.url + "/v1/events", params={"ticket": ticket}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            ((kind, snap),) = await _events(resp, lambda k, d: k == "snapshot")
            assert [m["node_id"] for m in snap["members"]] == [a.node_id]
            async with _nodes(_config(name="b", seeds=(f"127.0.0.1:{a.address[1]}",))) as (b,):
                seen = await _events(
                    resp,
                    lambda k, d: any(
                        m["node_id"] == b.node_id for m in d.get("members", {}).get("upsert", [])
                    ),
                )
                kind, delta = seen[-1]
                assert kind == "delta" and delta["seq"] > snap["seq"]


async def test_streams_are_bounded_and_extra_ones_get_503() -> None:
    """``MAX_EVENT_STREAMS`` pages stream at once; the next is refused with 503 and counted;
    when one page closes, a new one is served."""
    async with _nodes(_config(name="a")) as (a,), aiohttp.ClientSession() as s:
        open_streams = []
        try:
            for _ in range(MAX_EVENT_STREAMS):
                resp = await s.get(a.url + "/v1/events", params={"ticket": await _ticket(s, a.url)})
                assert resp.status == 200
                await _events(resp, lambda k, d: k == "snapshot")
                open_streams.append(resp)
            extra = await s.get(a.url + "/v1/events", params={"ticket": await _ticket(s, a.url)})
            assert extra.status == 503 and extra.headers["Retry-After"]
            extra.release()
            assert a.drops["dashboard_streams_full"] == 1
            open_streams.pop().close()
            hub = _hub(a)
            deadline = time.monotonic() + EVENT_WAIT_S
            while len(hub.streams) >= MAX_EVENT_STREAMS:
                assert time.monotonic() < deadline, "a closed stream kept its slot"
                await asyncio.sleep(0.05)
            again = await s.get(a.url + "/v1/events", params={"ticket": await _ticket(s, a.url)})
            assert again.status == 200
            open_streams.append(again)
        finally:
            for resp in open_streams:
                resp.close()


async def test_a_reader_that_falls_behind_is_dropped_not_buffered() -> None:
    """A stream whose reader never takes its events holds at most ``queue_max`` of them;
    one more and it is dropped (counted), its queue emptied; the others go on."""
    async with _nodes(_config(name="a")) as (a,):
        hub = EventHub(a, max_streams=4, queue_max=3)
        slow = hub.open()
        assert slow is not None
        busy = hub.open()
        assert busy is not None
        for i in range(2):  # with its snapshot, the slow reader's queue is now full
            hub.publish({"node": {"i": i}})
            while not busy.queue.empty():  # the busy reader keeps up
                busy.queue.get_nowait()
        assert slow.queue.full() and slow in hub.streams
        hub.publish({"node": {"i": 2}})
        assert slow not in hub.streams and slow.closed
        assert slow.queue.qsize() == 1 and slow.queue.get_nowait() is None  # ends its writer
        assert busy in hub.streams and busy.queue.qsize() == 1
        assert hub.counters["dropped_slow"] == 1 and a.drops["dashboard_stream_slow"] == 1
        await hub.aclose()


async def test_one_remote_address_cannot_take_every_stream() -> None:
    """An address other than loopback holds at most ``MAX_EVENT_STREAMS_PER_ADDRESS``
    streams; others (and loopback) are still served."""
    async with _nodes(_config(name="a")) as (a,):
        hub = EventHub(a)
        held = [hub.open("192.0.2.7") for _ in range(MAX_EVENT_STREAMS_PER_ADDRESS)]
        assert all(s is not None for s in held)
        assert hub.open("192.0.2.7") is None
        assert hub.open("192.0.2.8") is not None and hub.open(None) is not None
        hub.close(held[0])  # type: ignore[arg-type]
        assert hub.open("192.0.2.7") is not None
        await hub.aclose()


async def test_a_node_with_a_page_open_shuts_down_promptly() -> None:
    """An open stream ends when its node closes; the close does not wait for the reader.

    Without the shutdown hook that ends every stream, ``aclose()`` waits for aiohttp's
    shutdown timeout (60 s) and this test times out after 15 s (checked)."""
    a = MeshNode(_config(name="a"))
    await a.start()
    try:
        async with aiohttp.ClientSession() as s:
            resp = await s.get(a.url + "/v1/events", params={"ticket": await _ticket(s, a.url)})
            await _events(resp, lambda k, d: k == "snapshot")
            started = time.monotonic()
            async with asyncio.timeout(EVENT_WAIT_S):
                await a.aclose()
                assert (await resp.content.read()).strip() == b""  # the stream ended
                assert resp.content.at_eof()
            took = time.monotonic() - started
            resp.close()
    finally:
        await a.aclose()
    assert took < EVENT_WAIT_S


async def test_with_a_token_the_data_needs_it_and_a_ticket_stands_in_for_it_once() -> None:
    """With loopback untrusted, every mesh-data route refuses a caller without the token;
    a ticket bought with the token opens one stream; the token in a URL opens nothing;
    the page and its assets stay open (they hold no data)."""
    cfg = _config(name="a", api_token=TOKEN, api_trust_loopback=False)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with _nodes(cfg) as (a,), aiohttp.ClientSession() as s:
        async with s.get(a.url + "/") as resp:
            assert resp.status == 200
        for method, path in (
            ("GET", "/v1/dashboard"),
            ("POST", "/v1/events/ticket"),
            ("GET", "/v1/events"),
            ("GET", f"/v1/events?token={TOKEN}"),
            ("GET", "/v1/events?ticket=1.2.3"),
        ):
            async with s.request(method, a.url + path) as resp:
                assert resp.status == 401, path
        async with s.post(
            a.url + "/v1/events/ticket", headers={"Authorization": "Bearer wrong-token-xxxxxx"}
        ) as resp:
            assert resp.status == 401
        async with s.get(a.url + "/v1/dashboard", headers=bearer) as resp:
            assert resp.status == 200 and (await resp.json())["node"]["node_id"] == a.node_id
        ticket = await _ticket(s, a.url, TOKEN)
        assert TOKEN not in ticket
        async with s.get(a.url + "/v1/events", params={"ticket": ticket}) as resp:
            assert resp.status == 200
            await _events(resp, lambda k, d: k == "snapshot")
        async with s.get(a.url + "/v1/events", params={"ticket": ticket}) as resp:
            assert resp.status == 401 and "already used" in await resp.text()


async def test_trace_assembly_is_a_work_route_and_keeps_only_a_peers_own_spans() -> None:
    """``/v1/dashboard/trace/{id}`` asks other nodes, so READ access (open reads) is not
    enough: 401 without the token, 400 for a malformed id or a reach outside 1 … 64, the
    node's own spans with it.
    A peer's answer counts only for spans it records itself, of the trace asked for."""
    from meshnode.runtime.dashboard import _peer_span

    cfg = _config(name="a", api_token=TOKEN, api_trust_loopback=False, api_open_reads=True)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    async with _nodes(cfg) as (a,), aiohttp.ClientSession() as s:
        path = f"/v1/dashboard/trace/{trace_id}"
        async with s.get(a.url + path) as resp:
            assert resp.status == 401
        async with s.get(a.url + "/v1/dashboard/trace/not-a-trace", headers=bearer) as resp:
            assert resp.status == 400
        for reach in ("0", "65", "-1", "x", "²", "1" * 40):
            async with s.get(a.url + path, params={"nodes": reach}, headers=bearer) as resp:
                assert resp.status == 400, reach
        async with s.post(
            a.url + "/v1/discover",
            json={"capability_name": "nothing"},
            headers={**bearer, "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        ) as resp:
            assert resp.status == 200
        async with s.get(a.url + path, params={"nodes": "64"}, headers=bearer) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert [x["name"] for x in body["spans"]] == ["POST /v1/discover"]
        assert body["missing"] == []

    peer = "p" * 52
    good = {
        "trace_id": trace_id,
        "span_id": "00f067aa0ba902b7",
        "parent_span_id": None,
        "name": "invoke_agent x",
        "kind": "server",
        "node_id": peer,
        "peer_id": None,
        "start": 1.0,
        "end": 2.0,
        "status": "ok",
        "attributes": {},
    }
    assert _peer_span(good, peer, trace_id) == good
    for bad in (
        {"node_id": "q" * 52},  # a span of another node, claimed by this one
        {"trace_id": "1" * 32},
        {"span_id": "xyz"},
        {"parent_span_id": 7},
        {"start": "soon"},
        {"name": None},
    ):
        assert _peer_span({**good, **bad}, peer, trace_id) is None, bad
    assert _peer_span(["not", "a", "span"], peer, trace_id) is None
    nested = _peer_span({**good, "attributes": {"k": {"deep": [1]}, "n": 1}}, peer, trace_id)
    assert nested is not None and nested["attributes"] == {"n": 1}


async def test_status_document_without_members_is_small() -> None:
    """``/v1/dashboard?members=0`` (what ``meshnode status`` reads) leaves out the
    per-member lists but keeps the counts."""
    async with _nodes(_config(name="a")) as (a,), aiohttp.ClientSession() as s:
        async with s.get(a.url + "/v1/dashboard?members=0") as resp:
            doc = await resp.json()
        assert "members" not in doc and "trust" not in doc
        assert doc["metrics"]["members"]["alive"] == 1


def _hub(node: MeshNode) -> EventHub:
    from meshnode.runtime.dashboard import _HUB_KEY

    runner = node._runner
    assert runner is not None
    hub = runner.app[_HUB_KEY]
    assert isinstance(hub, EventHub)
    return hub


# ============================================================================ in the browser

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium (Debian's chromium package) is not installed"
)


@contextmanager
def _browser(profile: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield context
        finally:
            context.close()


def _wait_js(page: Any, script: str, timeout: float, what: str) -> Any:
    """Poll ``script`` in the page until it is truthy (the page's CSP forbids the eval
    that ``wait_for_function`` needs; ``evaluate`` goes through the debugger)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what} (last: {value!r})")


def _delegate_quietly(address: str, body: dict[str, Any]) -> None:
    """POST a delegation and ignore its answer (a failure is what the page must show)."""
    request = urllib.request.Request(
        f"http://{address}/v1/delegate",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with contextlib.suppress(urllib.error.URLError, OSError):
        urllib.request.urlopen(request, timeout=90).close()


def _member_state(node_id: str) -> str:
    return (
        f"(() => {{ const r = document.querySelector('#members tr[data-node-id=\"{node_id}\"]');"
        " return r ? r.querySelector('td.state').textContent : null; })()"
    )


@contextmanager
def _mesh(base: Path) -> Iterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    common = ["--embedder", "hashing"]
    try:
        seed = NodeProcess("n0", base / "n0", [], extra=common).start()
        nodes.append(seed)
        for name, agent in (
            ("translator", "Translator"),
            ("translator-2", "Translator"),
            ('<img src=x onerror="window.__xss=9">', "Hostile"),
            ("slow", "Slow"),
        ):
            extra = [*common, "--agent", f"{AGENTS}:{agent}"] if agent else common
            nodes.append(
                NodeProcess(name, base / f"n{len(nodes)}", [seed.address], extra=extra).start()
            )
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.slow
@needs_chromium
def test_the_dashboard_of_a_live_mesh_in_headless_chromium(tmp_path: Path) -> None:
    """Open n0's dashboard: every member shows; typing a query lists the providers; a
    delegation appears with its trace link, which opens a swimlane timeline holding the
    spans of both nodes it touched; a task in flight shows its provider; that
    provider SIGKILLed turns suspect, then dead, and the task failed; a
    hostile description shows as text and runs nothing. A screenshot is kept.

    With the page reading only its own node's spans (``/v1/traces/{id}``, as it did),
    the timeline held one lane: the wait for two lanes timed out (checked).

    With the description written as HTML instead of text, the assertion on the shown text
    fails (the markup is parsed away; checked), whatever the CSP then blocks."""
    with _mesh(tmp_path) as nodes, _browser(tmp_path / "profile") as browser:
        n0 = nodes[0]
        wait_until(lambda: len(n0.members()) == 5, 20, "n0 knows all five members")
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://{n0.address}/")
        _wait_js(page, "document.getElementById('conn').textContent === 'live'", 15, "live")
        _wait_js(
            page,
            "document.querySelectorAll('#members tbody tr').length === 5"
            " && document.querySelectorAll('#graph circle').length === 5",
            15,
            "five members in the table and the graph",
        )
        shown = set(
            page.eval_on_selector_all("#members tbody tr", "rs => rs.map(r => r.dataset.nodeId)")
        )
        assert shown == {n.node_id for n in nodes}

        # Discovery, live from the search box.
        page.fill("#search", "translate text between languages")
        providers = _wait_js(
            page,
            "Array.from(document.querySelectorAll('#discovered li')).map(l => l.dataset.nodeId)",
            15,
            "discovered providers",
        )
        assert set(providers) >= {nodes[1].node_id, nodes[2].node_id}

        # A delegation appears with its outcome and a link to its trace.
        request = urllib.request.Request(
            f"http://{n0.address}/v1/delegate",
            data=json.dumps({"capability": "translate_text", "input": {"text": "hi"}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=15) as resp:
            delegated = json.loads(resp.read())
        task_id, provider = delegated["task_id"], delegated["provider"]
        link = _wait_js(
            page,
            f"(() => {{ const r = document.querySelector('#tasks tr[data-task-id=\"{task_id}\"]');"
            " const a = r && r.querySelector('a.trace-link');"
            " return a && r.className === 'outcome-ok' ? a.getAttribute('href') : null; })()",
            15,
            "the delegation in the task list",
        )
        assert link.startswith("#trace/")
        page.click(f'#tasks tr[data-task-id="{task_id}"] a.trace-link')
        _wait_js(
            page,
            "!document.getElementById('trace-panel').hidden"
            " && !document.getElementById('trace-note').textContent.startsWith('loading')",
            10,
            "the trace panel answered",
        )
        # The swimlane timeline holds the trace from both nodes: n0's lane (the HTTP
        # request, the delegation, the negotiation) and the provider's (its run).
        lanes = _wait_js(
            page,
            "(() => { const l = Array.from(document.querySelectorAll('#trace text.lane'))"
            ".map(t => t.dataset.nodeId); return l.length >= 2 ? l : null; })()",
            10,
            "two lanes in the trace timeline",
        )
        assert set(lanes) == {n0.node_id, provider}, lanes
        bars = page.eval_on_selector_all(
            "#trace rect",
            "rs => rs.map(r => [r.dataset.nodeId, r.querySelector('title').textContent])",
        )
        assert [n0.node_id, "POST /v1/delegate"] in bars, bars
        assert [n0.node_id, "invoke_agent translate_text"] in bars, bars
        assert [provider, "invoke_agent translate_text"] in bars, bars
        assert "on 2 node(s)" in page.inner_text("#trace-note")

        # The hostile manifest: its markup is text, nothing ran.
        caps = page.inner_text("#capabilities")
        assert 'onerror="window.__xss=1"' in caps and "<script>" in caps
        assert HOSTILE_DESCRIPTION.split(" <")[0] in caps
        assert page.evaluate("window.__xss") is None
        assert page.query_selector("#capabilities img, #capabilities script, #members img") is None

        # A task in flight at the slow node shows as such, with its provider.
        victim = nodes[4]
        slow = threading.Thread(
            target=_delegate_quietly,
            args=(n0.address, {"capability": "slow_task", "input": {}, "deadline_s": 60}),
        )
        slow.start()
        try:
            _wait_js(
                page,
                "Array.from(document.querySelectorAll('#tasks tr.in-flight'))"
                ".some(r => r.children[1].textContent === 'slow_task'"
                " && r.children[2].textContent === 'slow')",
                15,
                "the slow task in flight at the slow node",
            )
            # SIGKILL the slow node: its task fails, it turns suspect, then dead.
            victim.signal(signal.SIGKILL)
            victim.wait()
            _wait_js(page, f"{_member_state(victim.node_id)} === 'suspect'", 20, "victim suspect")
            _wait_js(page, f"{_member_state(victim.node_id)} === 'dead'", 30, "victim dead")
            _wait_js(
                page,
                "Array.from(document.querySelectorAll('#tasks tr.outcome-failed'))"
                ".some(r => r.children[1].textContent === 'slow_task')",
                30,
                "the slow task failed",
            )
        finally:
            slow.join(60)
        dot = f'#graph circle[data-node-id="{victim.node_id}"]'
        assert page.get_attribute(dot, "class") == "dead"
        assert errors == []
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        if os.environ.get("MESHNODE_UPDATE_SCREENSHOT"):  # refresh the copy in docs/
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "dashboard.png", SCREENSHOT)


@pytest.mark.slow
@needs_chromium
def test_the_page_asks_for_the_token_once_and_never_puts_it_in_a_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that wants its token even from loopback: the page asks for it, keeps it in
    sessionStorage, goes live, and no request the page makes carries it in its URL."""
    extra = ["--embedder", "hashing", "--no-trust-loopback"]
    node = NodeProcess("n0", tmp_path / "n0", [], extra=extra)
    with monkeypatch.context() as env:
        env.setenv("MESHNODE_API_TOKEN", TOKEN)  # the node's token, kept off its command line
        node.start()
    try:
        with _browser(tmp_path / "profile") as browser:
            page = browser.new_page()
            urls: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            page.goto(f"http://{node.address}/")
            _wait_js(page, "!document.getElementById('auth').hidden", 10, "the token prompt")
            page.fill("#token", TOKEN)
            page.click("#token-save")
            _wait_js(page, "document.getElementById('conn').textContent === 'live'", 15, "live")
            rows = "document.querySelectorAll('#members tbody tr').length === 1"
            _wait_js(page, rows, 10, "the node's own row")
            assert page.evaluate("sessionStorage.getItem('meshnode.api_token')") == TOKEN
            assert any("/v1/events?ticket=" in u for u in urls)
            assert not any(TOKEN in u for u in urls)
    finally:
        node.stop()
