"""Join tail: how often one member misses every gossip copy of a join, and how catch-up
push-pulls repair it, in the simulator.

Usage::

    python benchmarks/join_tail.py [--sizes 10,50,100] [--runs 10] [--joins 10]
                                   [--out join-tail.json] [--quick]

Each run starts N nodes as a converged mesh (LAN profile, 0.5 ms minimum and 1 ms mean
one-way latency, no loss), lets it settle, then joins ``--joins`` new nodes one after
another through node 0. A join lasts from the new node's start until every other live node
holds it alive; the next join starts ``GAP_S`` later. Runs differ only by their seed.

Why there is a tail at all: a rumor is sent ``limit = retransmit_mult × ceil(log10(N + 1))``
times by every node that holds it, each copy to a random member (memberlist's rule, and
the one this project's membership follows). A given member then misses all of about
``N × limit`` copies with probability about ``exp(−limit)``, so about
``N × exp(−limit)`` members per join hear of it only later. N = 50 is the worst case
among the sizes here: ``limit`` is still 8, as at N = 10. serf's agent has the same rule,
and ``benchmarks/membership.py`` has seen one of its joins take 32.6 s that way.

Every size runs twice on the same seeds: with the LAN profile as it is, where acks carry
the size of the sender's view and a node that sees bigger views on two probes in a row
starts a catch-up push-pull (``NodeConfig.catch_up_interval``), and with catch-up off
(``catch_up_interval=0``, memberlist's behaviour: the straggler waits for the periodic
push-pull, every ``push_pull_interval``, 30 s or more at these sizes).

The JSON has, per size and variant: every join's duration, median, p99 and max, the
number of joins slower than ``SLOW_S``, the analytic expectation ``N × exp(−limit)`` next
to the observed share, and the catch-up push-pulls started mesh-wide.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshnode.core.config import NodeConfig  # noqa: E402
from meshnode.core.membership import MemberState  # noqa: E402
from simulations.cluster import Cluster, SimNode  # noqa: E402
from simulations.network import LinkModel  # noqa: E402

SIZES = (10, 50, 100)
RUNS = 10
JOINS = 10
QUICK_RUNS = 2
QUICK_JOINS = 5
SETTLE_S = 5.0
"""Virtual seconds between the converged start and the first join."""
GAP_S = 1.0
"""Virtual seconds between one join's completion and the next join (retransmissions of
the previous join are over by then: 8 copies at 3 per 200 ms gossip round)."""
STEP_S = 0.01
"""Virtual seconds between two checks of whether a join has completed."""
JOIN_LIMIT_S = 120.0
"""Virtual seconds after which a join is recorded as incomplete (four push-pull
intervals at N = 50)."""
SLOW_S = 1.0
"""A join slower than this had a straggler: a member that missed every gossip copy."""


def seen_by_all(cluster: Cluster, new: SimNode) -> bool:
    for node in cluster.live_nodes():
        if node is new or node.core is None:
            continue
        member = node.core.membership.member(new.node_id)
        if member is None or member.state is not MemberState.ALIVE:
            return False
    return True


def run_size(n: int, runs: int, joins: int, config: NodeConfig) -> dict[str, Any]:
    durations: list[float] = []
    incomplete = 0
    limit = 0
    catch_ups = 0
    for seed in range(runs):
        cluster = Cluster(
            seed=seed,
            config=config,
            link=LinkModel(min_latency=0.0005, mean_latency=0.001),
            strict=True,
        )
        nodes = [cluster.add_node() for _ in range(n)]
        cluster.start_converged(nodes, nodes[:1])
        cluster.run_until(cluster.now + SETTLE_S)
        for _ in range(joins):
            new = cluster.add_node()
            started = cluster.now
            cluster.start(new, [nodes[0]])
            while not seen_by_all(cluster, new) and cluster.now < started + JOIN_LIMIT_S:
                cluster.run_until(cluster.now + STEP_S)
            if not seen_by_all(cluster, new):
                incomplete += 1
            durations.append(round(cluster.now - started, 3))
            cluster.run_until(cluster.now + GAP_S)
            nodes.append(new)
        core = nodes[1].core
        assert core is not None
        limit = core.membership.retransmit_limit()
        catch_ups += sum(
            node.core.membership.counters["catch_up_push_pulls"]
            for node in nodes
            if node.core is not None
        )
    ordered = sorted(durations)
    slow = sum(1 for d in durations if d > SLOW_S)
    return {
        "nodes_before_first_join": n,
        "joins": len(durations),
        "retransmit_limit_at_end": limit,
        "median_s": round(statistics.median(ordered), 3),
        "p99_s": ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)],
        "max_s": ordered[-1],
        "slow_joins": slow,
        "slow_share": round(slow / len(durations), 4),
        "incomplete_after_limit": incomplete,
        "catch_up_push_pulls": catch_ups,
        "expected_slow_share": round(min(1.0, n * math.exp(-limit)), 4),
        "durations_s": durations,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--runs", type=int, default=None, help=f"seeds per size ({RUNS})")
    parser.add_argument("--joins", type=int, default=None, help=f"joins per run ({JOINS})")
    parser.add_argument("--quick", action="store_true", help="2 runs of 5 joins per size")
    parser.add_argument("--out", type=Path, help="write the JSON here (it is printed too)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if not sizes or min(sizes) < 2:
        parser.error("--sizes: every size must be at least 2")
    runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    joins = args.joins or (QUICK_JOINS if args.quick else JOINS)
    if runs < 1 or joins < 1:
        parser.error("--runs and --joins must be at least 1")
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "join_tail",
        "settings": {
            "profile": "lan",
            "catch_up_interval_s": NodeConfig.lan().catch_up_interval,
            "latency_ms": {"min": 0.5, "mean": 1.0},
            "loss": 0.0,
            "runs": runs,
            "joins_per_run": joins,
            "settle_s": SETTLE_S,
            "gap_s": GAP_S,
            "slow_s": SLOW_S,
            "join_limit_s": JOIN_LIMIT_S,
            "seeds": list(range(runs)),
        },
        "sizes": [],
    }
    variants = {
        "catch_up": NodeConfig.lan(),
        "no_catch_up": NodeConfig.lan(catch_up_interval=0.0),
    }
    for n in sizes:
        entry: dict[str, Any] = {"nodes": n}
        for name, config in variants.items():
            print(f"N={n}, {name}: {runs} runs x {joins} joins", file=sys.stderr, flush=True)
            result = run_size(n, runs, joins, config)
            print(
                f"  median {result['median_s']} s, max {result['max_s']} s, "
                f"{result['slow_joins']} of {result['joins']} slower than {SLOW_S} s "
                f"(expected share {result['expected_slow_share']}), "
                f"{result['catch_up_push_pulls']} catch-up push-pulls",
                file=sys.stderr,
                flush=True,
            )
            entry[name] = result
        report["sizes"].append(entry)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
