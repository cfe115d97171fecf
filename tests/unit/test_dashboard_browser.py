"""The dashboard's page logic in headless Chromium, with no node behind it: the page and its
assets are served by the browser's request routing (with the node's real headers), and
events are fed to it directly.

Invariants: the trace swimlane layout puts one lane per node in order of first appearance,
stacks overlapping spans of one node in rows, and scales time to the width; a synthetic
1,000-member stream renders every member, and a delta touching a few members changes the
rows of those members only (no per-member DOM churn)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from meshnode.runtime.dashboard import ASSET_TYPES, SECURITY_HEADERS

CHROMIUM = Path("/usr/bin/chromium")
ORIGIN = "http://dashboard.test"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium (Debian's chromium package) is not installed"
)


JSON_ROUTES: dict[str, Any] = {}
"""Paths answered with this JSON (as a node with the route would), for the page's fetches."""


def serve_page(page: Any) -> None:
    """Route the page's requests to the packaged files and :data:`JSON_ROUTES`; the other
    data routes answer 503 so the page stays idle (offline) and shows only what the test
    feeds it."""
    files = resources.files("meshnode.runtime") / "dashboard"

    def handle(route: Any) -> None:
        path = route.request.url[len(ORIGIN) :].split("?")[0]
        name = path.removeprefix("/ui/")
        if path in JSON_ROUTES:
            route.fulfill(status=200, json=JSON_ROUTES[path], headers=dict(SECURITY_HEADERS))
            return
        if path in ("/", "/ui"):
            body, kind = (files / "index.html").read_bytes(), "text/html"
        elif name in ASSET_TYPES:
            body, kind = (files / name).read_bytes(), ASSET_TYPES[name]
        else:
            route.fulfill(status=503, body=b"no node here")
            return
        route.fulfill(status=200, body=body, content_type=kind, headers=dict(SECURITY_HEADERS))

    page.route(f"{ORIGIN}/**", handle)
    page.goto(f"{ORIGIN}/")
    page.evaluate("window.meshDash.stop()")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        tab = context.new_page()
        serve_page(tab)
        yield tab
        context.close()


SPANS = [
    {"span_id": "a1", "parent_span_id": None, "name": "delegate", "node_id": "A",
     "start": 100.0, "end": 100.5, "status": "ok"},
    {"span_id": "b1", "parent_span_id": "a1", "name": "negotiate", "node_id": "B",
     "start": 100.1, "end": 100.2, "status": "ok"},
    {"span_id": "b2", "parent_span_id": "a1", "name": "run", "node_id": "B",
     "start": 100.15, "end": 100.4, "status": "error"},
    {"span_id": "a2", "parent_span_id": "a1", "name": "score", "node_id": "A",
     "start": 100.4, "end": None, "status": "ok"},
    {"span_id": "junk", "node_id": "C", "start": "soon"},
    {"span_id": "c1", "parent_span_id": "b2", "name": "lookup", "node_id": "C",
     "start": 100.2, "end": 100.3},
]  # fmt: skip


def test_the_trace_layout_gives_each_node_a_lane_and_stacks_overlaps(page: Any) -> None:
    layout = page.evaluate("spans => window.layoutTrace(spans, 1000)", SPANS)
    assert layout["lanes"] == ["A", "B", "C"]  # first appearance in time
    assert layout["t0"] == 100.0 and layout["t1"] == 100.5
    bars = {b["span_id"]: b for b in layout["bars"]}
    assert "junk" not in bars  # a span without a numeric start is left out
    assert (bars["a1"]["lane"], bars["a1"]["row"], bars["a1"]["x"]) == (0, 0, 0)
    assert bars["a1"]["w"] == pytest.approx(1000)
    assert (bars["b1"]["row"], bars["b2"]["row"]) == (0, 1)  # b2 overlaps b1
    assert bars["b1"]["x"] == pytest.approx(200) and bars["b1"]["w"] == pytest.approx(200)
    assert bars["a2"]["row"] == 1  # overlaps a1, which runs to the end
    assert bars["a2"]["w"] == pytest.approx(200)  # a running span lasts to the trace's end
    assert bars["b2"]["status"] == "error" and bars["c1"]["status"] == "ok"
    assert layout["rows"] == [2, 2, 1]
    empty = page.evaluate("() => window.layoutTrace('not a list', 100)")
    assert empty["bars"] == [] and empty["lanes"] == []


def synthetic_snapshot(n: int) -> dict[str, Any]:
    members = [
        {"node_id": f"node{i:05d}", "name": f"agent-{i}",
         "address": f"10.0.{i // 250}.{i % 250}:7946", "state": "alive", "incarnation": 1,
         "rtt_ms": float(1 + i % 200), "load": i % 4, "self": i == 0}
        for i in range(n)
    ]  # fmt: skip
    trust = [
        {"node_id": m["node_id"], "name": m["name"], "trust": 0.5, "direct": None,
         "breaker": "closed"}
        for m in members[1:]
    ]  # fmt: skip
    return {
        "seq": 0,
        "node": {"node_id": "node00000", "name": "agent-0", "address": "10.0.0.0:7946",
                 "status": "ok", "reasons": [], "incarnation": 1, "local_health": 0},
        "metrics": {"members": {"alive": n, "suspect": 0, "dead": 0, "left": 0},
                    "manifests": n, "ledger_records": 0, "tasks_in_flight": 0,
                    "delegations_ok": 0, "delegations_failed": 0, "tasks_served": 0,
                    "drops": 0, "connections": 0, "driver_restarts": 0},
        "capabilities": {"top": [], "more": 0},
        "tasks": {"in_flight": [], "recent": [], "serving": 0},
        "members": members,
        "trust": trust,
    }  # fmt: skip


def synthetic_delta(seq: int, changed: list[int]) -> dict[str, Any]:
    return {
        "seq": seq,
        "members": {
            "upsert": [
                {"node_id": f"node{i:05d}", "name": f"agent-{i}",
                 "address": f"10.0.{i // 250}.{i % 250}:7946", "state": "suspect",
                 "incarnation": 1, "rtt_ms": 5.0, "load": 0, "self": False}
                for i in changed
            ],
            "remove": [],
        },
    }  # fmt: skip


COUNT_MUTATIONS = """() => {
  window.__mutated = new Set();
  const body = document.querySelector('#members tbody');
  window.__observer = new MutationObserver((records) => {
    for (const r of records) {
      let n = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      while (n && n.tagName !== 'TR') n = n.parentElement;
      if (n) window.__mutated.add(n.dataset.nodeId);
    }
  });
  window.__observer.observe(body, {subtree: true, childList: true, characterData: true,
                                   attributes: true});
}"""


def test_a_thousand_members_render_and_a_delta_touches_only_its_rows(page: Any) -> None:
    page.evaluate("s => { window.meshDash.applySnapshot(s); window.meshDash.flush(); }",
                  synthetic_snapshot(1000))  # fmt: skip
    assert page.evaluate("document.querySelectorAll('#members tbody tr').length") == 1000
    assert page.evaluate("document.querySelectorAll('#graph circle').length") == 1000
    page.evaluate(COUNT_MUTATIONS)
    changed = [3, 250, 999]
    page.evaluate("d => { window.meshDash.applyDelta(d); window.meshDash.flush(); }",
                  synthetic_delta(1, changed))  # fmt: skip
    page.evaluate("() => new Promise(r => setTimeout(r, 0))")  # let the observer report
    mutated = set(page.evaluate("Array.from(window.__mutated)"))
    page.evaluate("window.__observer.disconnect()")
    assert mutated == {f"node{i:05d}" for i in changed}
    states = page.evaluate(
        "Array.from(document.querySelectorAll('#members tr.state-suspect'))"
        ".map(r => r.dataset.nodeId)"
    )
    assert sorted(states) == [f"node{i:05d}" for i in changed]
    # A delta older than what the page holds is ignored.
    page.evaluate("d => { window.meshDash.applyDelta(d); window.meshDash.flush(); }",
                  {"seq": 1, "members": {"upsert": [], "remove": ["node00003"]}})  # fmt: skip
    assert page.evaluate("document.querySelectorAll('#members tbody tr').length") == 1000


def test_a_task_links_to_its_swimlanes_and_a_peer_to_its_trust_history(page: Any) -> None:
    """With the trace and trust-history routes answering (the shapes the node serves), a
    task's timeline link draws one lane per node and one bar per span, and a peer's
    history draws every point; mesh strings land in text nodes only."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    JSON_ROUTES[f"/v1/traces/{trace_id}"] = {
        "trace_id": trace_id,
        "node_id": "node00000",
        "spans": [{**span, "trace_id": trace_id, "kind": "internal", "peer_id": None,
                   "attributes": {}} for span in SPANS],
    }  # fmt: skip
    JSON_ROUTES["/v1/trust/node00002/history"] = {
        "node_id": "node00002",
        "points": [{"at": 100.0 + i, "score": 0.5 + i / 100} for i in range(7)],
    }
    snapshot = synthetic_snapshot(3)
    snapshot["seq"] = 100
    snapshot["tasks"]["recent"] = [
        {"task_id": "t1", "capability": "echo", "trace_id": trace_id, "started_at": 100.0,
         "provider": "node00001", "provider_name": "agent-1", "outcome": "ok", "reason": "",
         "attempts": 1, "quality": None, "ended_at": 100.5},
    ]  # fmt: skip
    page.evaluate("s => { window.meshDash.applySnapshot(s); window.meshDash.flush(); }", snapshot)
    page.click('#tasks tr[data-task-id="t1"] a.trace-link')
    page.wait_for_selector("#trace rect")  # drawn in one synchronous pass
    assert page.eval_on_selector_all("#trace rect", "rs => rs.length") == 5
    note = page.inner_text("#trace-note")
    assert note.startswith("5 span(s) on 3 node(s), 500.0 ms")
    assert page.eval_on_selector_all("#trace rect.error", "rs => rs.length") == 1
    page.click('#trust tr[data-node-id="node00002"] button')
    page.wait_for_selector("#history-chart polyline")
    points = page.get_attribute("#history-chart polyline", "points")
    assert points is not None and len(points.split()) == 7
    assert "7 point(s)" in page.inner_text("#history-note")
