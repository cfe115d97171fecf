"""The dashboard page under a synthetic 1,000-member event stream, in headless Chromium.

Usage::

    python benchmarks/dashboard.py [--members 1000] [--rounds 30] [--out results.json]

Feeds the real page (served through the browser's request routing, with the node's
headers) one snapshot of ``--members`` members, then deltas changing 1, 10 and 100 members
(state and round-trip time), and reports the time the page takes to apply and render each
(median and 95th percentile of ``--rounds``, in milliseconds, measured inside the page with
``performance.now()``). The baseline in the same run is a full re-render of the same
snapshot, the cost a page that rebuilt everything on each event would pay.
Needs /usr/bin/chromium (Debian's chromium package) and the playwright package.

``--view`` measures the node's side instead: the time to compute the dashboard's view
(:func:`meshnode.runtime.dashboard.state`) and the delta between two views, on a running
node that has adopted a converged mesh of 1,000 and 10,000 members (each with a manifest
of one capability, 50 capability names in all), median of 10. The event hub does this once
a second while a page is open.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

from tests.unit.test_dashboard_browser import (
    CHROMIUM,
    serve_page,
    synthetic_delta,
    synthetic_snapshot,
)

TIMED = """([kind, event]) => {
  const t0 = performance.now();
  if (kind === 'snapshot') window.meshDash.applySnapshot(event);
  else window.meshDash.applyDelta(event);
  window.meshDash.flush();
  document.body.offsetHeight;  // include layout
  return performance.now() - t0;
}"""


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[max(0, int(len(ordered) * 0.95) - 1)], 3),
        "max_ms": round(ordered[-1], 3),
    }


def run(members: int, rounds: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        page = context.new_page()
        serve_page(page)
        snapshot = synthetic_snapshot(members)
        first = page.evaluate(TIMED, ["snapshot", snapshot])
        full = [page.evaluate(TIMED, ["snapshot", {**snapshot, "seq": 0}]) for _ in range(5)]
        seq = 0
        deltas: dict[str, Any] = {}
        for changed in (1, 10, 100):
            samples = []
            for r in range(rounds):
                seq += 1
                ids = [(r * 7919 + k * 104729) % (members - 1) + 1 for k in range(changed)]
                samples.append(page.evaluate(TIMED, ["delta", synthetic_delta(seq, ids)]))
            deltas[f"{changed}_changed"] = _summary(samples)
        rows = page.evaluate("document.querySelectorAll('#members tbody tr').length")
        context.close()
    assert rows == members, rows
    return {
        "members": members,
        "rounds": rounds,
        "first_snapshot_ms": round(first, 3),
        "full_rerender_baseline": _summary(full),
        "delta": deltas,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def view_cost(members: int) -> dict[str, Any]:
    import asyncio
    import random
    import time

    from meshnode import MeshNode, NodeConfig
    from meshnode.core.membership import Membership
    from meshnode.core.tables import ConvergedTable
    from meshnode.runtime.dashboard import diff, state
    from protocol import Capability, Identity, Manifest

    async def measure() -> dict[str, Any]:
        node = MeshNode(NodeConfig.local(port=0, embedder="hashing", name="bench"))
        await node.start()
        try:
            cfg = NodeConfig.lan()
            store = node.core.manifests.copy(
                max_manifests=cfg.max_manifests, max_bytes=cfg.max_manifest_bytes
            )
            table = {}
            for i in range(members):
                ident = Identity.from_seed(i.to_bytes(32, "big"))
                address = ("127.0.0.2", 20_000 + i)  # nobody listens: never answered
                m = Membership(cfg, ident, host=address[0], port=address[1],
                               rng=random.Random(i), now=time.time())  # fmt: skip
                table[ident.node_id] = m.member(ident.node_id)
                cap = Capability(name=f"cap_{i % 50}", description="does things " * 5)
                store.apply(Manifest.create(ident, name=f"agent-{i}", capabilities=[cap],
                                            endpoint=f"{address[0]}:{address[1]}", version=1),
                            time.time())  # fmt: skip
            node.core.adopt_converged(ConvergedTable(table), store, [], time.time())
            views, deltas = [], []
            previous = state(node)
            for _ in range(10):
                t0 = time.perf_counter()
                view = state(node)
                views.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                diff(previous, view)
                deltas.append((time.perf_counter() - t0) * 1000)
                previous = view
            return {"members": members, "view": _summary(views), "diff": _summary(deltas)}
        finally:
            await node.aclose()

    return asyncio.run(measure())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--view", action="store_true", help="measure the node's side")
    args = parser.parse_args()
    if args.view:
        result = json.dumps([view_cost(n) for n in (1000, 10_000)], indent=2)
        if args.out:
            args.out.write_text(result + "\n")
        print(result)
        return 0
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing: install Debian's chromium package", file=sys.stderr)
        return 2
    result = json.dumps(run(args.members, args.rounds), indent=2)
    if args.out:
        args.out.write_text(result + "\n")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
