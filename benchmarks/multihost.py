"""Multi-host benchmark: join, failure detection and delegation latency per region pair,
on eight network namespaces in two regions 40 ms apart (tests/multihost/harness.py),
with serf agents in the same namespaces as the baseline for join and detection.

Usage (root; see docs/multihost.md)::

    python benchmarks/multihost.py [--out docs/benchmarks/multihost.json] [--rounds 3]
                                   [--calls 20] [--skip-serf]

Both systems run their LAN timings (meshnode ``--profile lan``, serf's default). Every
figure is polled over the harness's control link every ``POLL_S`` seconds, so each time
is late by up to that much, for both systems alike.

1. **Join.** The joiner (a3 or b3) is stopped and started again with a fresh identity and
   one seed in region a or b: each (joiner region, seed region) pair. ``join_s`` runs from
   its ready line (meshnode: ``listening``; serf: the agent's RPC answering) until all
   seven others see it alive.
2. **Failure detection.** SIGKILL of a3 or b3: ``detect_s`` per (victim region, observer
   region) runs from the kill until every observer in that region sees it failed
   (meshnode ``dead``; serf ``failed``).
3. **Delegation** (meshnode only): a0 and b0 each call ``echo_a`` (served by a1) and
   ``echo_b`` (served by b1) ``--calls`` times over ``POST /v1/delegate``; the median and
   p90 of the wall time per (requester region, provider region).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.membership import serf_members
from tests.multihost.agents import ECHO_A, ECHO_B
from tests.multihost.harness import (
    REGIONS,
    HostNode,
    Mesh,
    converged,
    mesh,
    unavailable_reason,
)

POLL_S = 0.05
"""Polling period of every wait (s): each figure is late by up to this much."""
WAIT_S = 120.0
"""Longest any one join or detection may take before the benchmark gives up (s)."""
CALL_GAP_S = 0.3
"""Pause between two API calls that make work (s): the node allows one address 5 a second
(``NodeConfig.api_rate_per_s``), and a rate-limited call would not be a latency sample."""
SERF_PORT = 7947
"""serf's gossip port in each namespace (meshnode keeps 7946)."""
SERF_RPC_PORT = 7373
"""serf's RPC port, bound to the node's own address so the control link reaches it."""
AGENTS = {
    "a1": "tests/multihost/agents.py:EchoA",
    "b1": "tests/multihost/agents.py:EchoB",
}
"""One provider per capability name, so each call's region pair is known."""


def poll(predicate: Callable[[], bool], what: str) -> float:
    """Poll until true; return the monotonic time it first held."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, ValueError, EOFError):
            if predicate():
                return time.monotonic()
        time.sleep(POLL_S)
    raise TimeoutError(f"timed out waiting for {what}")


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 4),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4),
        "samples": [round(v, 4) for v in ordered],
    }


# ---------------------------------------------------------------------------- meshnode


def mesh_state(observer: HostNode, node_id: str) -> str | None:
    member = observer.members().get(node_id)
    return None if member is None else str(member["state"])


def meshnode_run(base: Path, rounds: int, calls: int) -> dict[str, Any]:
    join: dict[str, list[float]] = {}
    detect: dict[str, list[float]] = {}
    delegation: dict[str, list[float]] = {}
    with mesh(base, profile="lan", agents=AGENTS) as m:
        poll(lambda: converged(m), "meshnode converges")
        for r in range(rounds):
            for joiner_name in ("a3", "b3"):
                joiner = m.node(joiner_name)
                others = [n for n in m.nodes if n is not joiner]
                # detection: kill, every observer region sees it dead
                victim_id = joiner.node_id
                m.kill_node(joiner)
                killed = time.monotonic()
                for region in REGIONS:
                    observers = [n for n in others if n.region == region]
                    done = poll(
                        lambda obs=observers, v=victim_id: all(  # type: ignore[misc]
                            mesh_state(o, v) == "dead" for o in obs
                        ),
                        f"{region} sees {joiner_name} dead",
                    )
                    detect.setdefault(f"{joiner.region}->{region}", []).append(done - killed)
                # join: fresh identity, one seed in each region in turn
                seed_region = REGIONS[r % len(REGIONS)]
                seed = m.node(f"{seed_region}0").address
                joiner.data_dir = base / f"{joiner_name}-r{r}"
                ready = m.start_node(joiner, [seed])
                new_id = joiner.node_id
                done = poll(
                    lambda n=new_id, obs=others: all(  # type: ignore[misc]
                        mesh_state(o, n) == "alive" for o in obs
                    ),
                    f"everyone sees {joiner_name} alive",
                )
                join.setdefault(f"{joiner.region}<-seed {seed_region}", []).append(done - ready)
        for requester_name in ("a0", "b0"):
            requester = m.node(requester_name)
            for cap, provider_region in ((ECHO_A, "a"), (ECHO_B, "b")):
                poll(
                    lambda req=requester, c=cap: bool(  # type: ignore[misc]
                        req.request("POST", "/v1/discover", {"capability_name": c})["candidates"]
                    ),
                    f"{requester_name} knows {cap}",
                )
                time.sleep(2 * CALL_GAP_S)
                for i in range(calls + 1):
                    time.sleep(CALL_GAP_S)
                    started = time.monotonic()
                    result = requester.request(
                        "POST",
                        "/v1/delegate",
                        {"capability": cap, "input": {"text": str(i)}, "deadline_s": 10},
                        timeout=20,
                    )
                    took = time.monotonic() - started
                    if result.get("output") != {"text": str(i)}:
                        raise RuntimeError(f"delegation failed: {result}")
                    if i:  # the first call opens the connection: not counted
                        key = f"{requester.region}->{provider_region}"
                        delegation.setdefault(key, []).append(took * 1000)
    return {
        "join_s": {k: summary(v) for k, v in sorted(join.items())},
        "detect_s": {k: summary(v) for k, v in sorted(detect.items())},
        "delegation_ms": {k: summary(v) for k, v in sorted(delegation.items())},
    }


# ---------------------------------------------------------------------------- serf


class SerfMesh:
    """serf agents in the harness's namespaces (the meshnode processes stopped)."""

    def __init__(self, m: Mesh, serf: str, base: Path) -> None:
        self.m, self.serf, self.base = m, serf, base
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def rpc(self, node: HostNode) -> str:
        return f"{node.ip}:{SERF_RPC_PORT}"

    def start(self, node: HostNode, name: str, join: list[str]) -> float:
        cmd = [
            "ip",
            "netns",
            "exec",
            node.ns,
            self.serf,
            "agent",
            "-node",
            name,
            "-bind",
            f"{node.ip}:{SERF_PORT}",
            "-rpc-addr",
            self.rpc(node),
        ]
        for seed in join:
            cmd += ["-join", seed]
        with open(self.base / f"serf-{name}.log", "ab") as log:
            self.procs[node.name] = subprocess.Popen(cmd, stdout=log, stderr=log)
        return poll(lambda: name in serf_members(self.rpc(node)), f"serf {name} answers")

    def kill(self, node: HostNode) -> None:
        proc = self.procs.pop(node.name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(10)
        self.procs.clear()


def serf_run(base: Path, serf: str, rounds: int) -> dict[str, Any]:
    join: dict[str, list[float]] = {}
    detect: dict[str, list[float]] = {}
    with mesh(base, profile="lan") as m:
        m.stop_nodes()
        s = SerfMesh(m, serf, base)
        try:
            first = f"{m.node('a0').ip}:{SERF_PORT}"
            names = {n.name: n.name for n in m.nodes}
            for node in m.nodes:
                s.start(node, node.name, [] if node.name == "a0" else [first])
            poll(
                lambda: all(
                    sorted(k for k, v in serf_members(s.rpc(n)).items() if v == "alive")
                    == sorted(names.values())
                    for n in m.nodes
                ),
                "serf converges",
            )
            for r in range(rounds):
                for joiner_name in ("a3", "b3"):
                    joiner = m.node(joiner_name)
                    others = [n for n in m.nodes if n is not joiner]
                    victim = names[joiner_name]
                    s.kill(joiner)
                    killed = time.monotonic()
                    for region in REGIONS:
                        observers = [n for n in others if n.region == region]
                        done = poll(
                            lambda obs=observers, v=victim: all(  # type: ignore[misc]
                                serf_members(s.rpc(o)).get(v) == "failed" for o in obs
                            ),
                            f"serf {region} sees {victim} failed",
                        )
                        detect.setdefault(f"{joiner.region}->{region}", []).append(done - killed)
                    seed_region = REGIONS[r % len(REGIONS)]
                    seed_ip = m.node(f"{seed_region}0").ip
                    new_name = f"{joiner_name}-r{r}"
                    names[joiner_name] = new_name
                    ready = s.start(joiner, new_name, [f"{seed_ip}:{SERF_PORT}"])
                    done = poll(
                        lambda nn=new_name, obs=others: all(  # type: ignore[misc]
                            serf_members(s.rpc(o)).get(nn) == "alive" for o in obs
                        ),
                        f"everyone sees serf {new_name} alive",
                    )
                    join.setdefault(f"{joiner.region}<-seed {seed_region}", []).append(done - ready)
        finally:
            s.close()
    return {
        "join_s": {k: summary(v) for k, v in sorted(join.items())},
        "detect_s": {k: summary(v) for k, v in sorted(detect.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/multihost.json"))
    parser.add_argument("--rounds", type=int, default=3, help="kills and joins per node (3)")
    parser.add_argument("--calls", type=int, default=20, help="delegations per pair (20)")
    parser.add_argument("--skip-serf", action="store_true", help="meshnode only")
    parser.add_argument("--serf", default="serf", help="serf binary (default: serf on PATH)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be at least 1")
    reason = unavailable_reason()
    if reason:
        print(f"multihost: {reason}", file=sys.stderr)
        return 2
    serf = None if args.skip_serf else shutil.which(args.serf)
    base = Path(tempfile.mkdtemp(prefix="mhn-bench-"))
    try:
        result: dict[str, Any] = {
            "setup": {
                "nodes": 8,
                "regions": {"a": "10.213.1.0/24", "b": "10.213.2.0/24"},
                "rtt_inside_ms": 1.0,
                "rtt_between_ms": 40.0,
                "profile": "lan",
                "poll_s": POLL_S,
                "rounds": args.rounds,
                "calls": args.calls,
            },
            "meshnode": meshnode_run(base / "meshnode", args.rounds, args.calls),
            "serf": None if serf is None else serf_run(base / "serf", serf, args.rounds),
        }
        if serf is None:
            result["serf_skipped"] = "--skip-serf" if args.skip_serf else "no serf binary"
    finally:
        shutil.rmtree(base, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
