"""Simulation benchmarks: scale, dissemination, bandwidth growth, Lifeguard, partition heal.

Usage::

    python benchmarks/simulation.py [--only NAME ...] [--out PATH] [--quick] [--reuse]

Every run is a seeded scenario of :mod:`simulations`, executed in its own child process
(so that peak memory is measured per run) and reported as JSON: one file per run under
``benchmarks/results/simulation/`` and a summary with every goal, measured value and
verdict in ``--out`` (default ``benchmarks/results/simulation.json``). The dissemination
plots go to ``docs/simulation/``. Progress goes to stderr. Each goal is compared with a
baseline measured in the same run where one exists: the analytic epidemic bound for
dissemination, N=100 for bandwidth growth, Lifeguard off for the slow node.

Benchmarks (``--only`` takes these names):

``scale``
    N=10,000 for 60 simulated seconds of steady-state operation (the ``steady`` scenario
    started converged: every node already knows every other alive, with its manifest),
    with the default workload of one ledger opinion per second, within a wall-clock budget
    of 10 minutes (the goal) on one core. Setting up the converged mesh counts towards the
    budget. If the budget runs out the child stops and reports how far the run got.
``scale-10k``
    Time and peak memory of the steady state at N = 1,000, 2,000 and 10,000 (the
    ``scale`` run: ``steady``, ``--start converged``, 60 simulated seconds, one ledger
    opinion per second), each in its own process. Goals at N = 10,000: at most 5 minutes of
    wall time (setting up the converged mesh included) and at most 6 GB of peak resident
    memory. The two smaller runs show how time and memory grow with N (per-node tables
    are O(N) each, so memory is O(N²) in one process).
``scale-join``
    What the join storm itself costs: N=1,000 joining through 3 seeds at once, 60
    simulated seconds (or until the 10-minute budget runs out).
``scale-curve``
    The join at N = 100, 300 and 1,000, 60 simulated seconds each, and the converged
    steady state at N = 1,000, 3,000 and 10,000 for 10 simulated seconds: cost per
    simulated second and peak memory against N.
``rumor``
    N=1,000 started converged, one manifest update, at 0 % and 10 % datagram loss: rounds
    to reach every node against ``1.25 × (log4 N + ln N / 3)`` and ``1.5 ×`` that.
``bandwidth``
    A converged mesh (``steady`` scenario): UDP bytes per node per second with no news at
    N = 100 and 300 after a join, and at N = 300, 1,000 and 10,000 started converged (a
    join of 10,000 nodes is beyond the budget; N = 300 is measured both ways, to show
    that the two starts reach the same steady state); and with one ledger opinion per
    second (mesh-wide) at N = 100, 300 (joined) and 10,000 (converged, the ``scale`` run).
    Goal: growth by at most 1.2x from N=100 to N=10,000.
``slow-node``
    N=100, 5 % loss, 300 s, Lifeguard on and off on one fault schedule: one node stalling
    for 0.1–2 s after runs of 0.1–2 s; the same with long stalls (1–12 s, around the
    minimum suspicion timeout of 8 s at this size); and a node that is slow rather than
    stalled (everything it receives arrives 1–4 s late while its timers run).
    Goal: zero false deaths with Lifeguard on.
``partition``
    N=1,000 started converged, split 50/50 for 30 s, then healed. Goal: membership,
    manifests and ledger reconverge within two push-pull intervals.
``economy``
    The agent economy (``--scenario economy``, started converged): 1,000 agents and
    10,000 delegations (20 % bad providers of every kind, a Sybil ring of 10, 5 % sloppy
    clients), goal at most 2 minutes of wall time; and 200 agents and 2,000 delegations
    beside it, for the cost per delegation against N. Reports the economy's own figures
    (trust convergence, share of requests to bad providers, tasks completed, deadline
    misses) with the cost.
``rumor-after-join-sweep``
    N=1,000 joining through 3 seeds, then one manifest update as soon as the join has
    converged (plus the 5 s settle), seeds 1-30 (``--quick``: seeds 1-3). Goal: every
    node hears the rumor within ``1.25 × (log4 N + ln N / 3)`` rounds on every seed.
``lossy-joins``
    N=1,000 joining through 3 seeds at 5 % and 10 % datagram loss, 120 simulated
    seconds. Goal: zero false deaths at 5 %, convergence at both.
``--quick`` shrinks every N by 10× (for a smoke test of the script itself). ``--reuse``
takes a run already finished with the very same spec from ``benchmarks/results/simulation/``
(e.g. the 10,000-node point of ``bandwidth`` from ``scale``) instead of running it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a plain checkout

from simulations.epidemic import rounds_bound  # noqa: E402
from simulations.progress import Progress  # noqa: E402
from simulations.report import build_report, dumps  # noqa: E402
from simulations.scenarios import Spec, make_config, run_scenario  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "simulation"
FIGURES = ROOT / "docs" / "simulation"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- child process


class WallBudgetExceeded(Exception):
    """Raised from the progress hook when a run exceeds its wall-clock budget."""


class BudgetProgress(Progress):
    """The CLI's progress bar, plus a wall-clock budget (benchmarks only: a run stopped by
    it is cut at a point that depends on the machine, so it is not reproducible)."""

    def __init__(self, budget: float | None) -> None:
        super().__init__(enabled=True)
        self.budget = budget
        self.started = time.perf_counter()

    def update(self) -> None:
        super().update()
        if self.budget is not None and time.perf_counter() - self.started > self.budget:
            raise WallBudgetExceeded


def child(spec_json: str, budget: float | None, out: Path) -> None:
    fields = json.loads(spec_json)
    for key in ("pause_s", "run_s", "bad_kinds"):
        if key in fields:
            fields[key] = tuple(fields[key])
    fields["overrides"] = tuple(tuple(x) for x in fields.get("overrides", ()))
    spec = Spec(**fields)
    progress = BudgetProgress(budget)
    started = time.perf_counter()
    result: dict[str, Any] = {"spec": fields}
    try:
        outcome = run_scenario(spec, progress)
    except WallBudgetExceeded:
        cluster = progress.cluster
        wall = time.perf_counter() - started
        assert cluster is not None
        result.update(
            {
                "stopped_by_wall_budget": True,
                "wall_s": round(wall, 1),
                "simulated_seconds_reached": round(cluster.now, 3),
                "events": cluster.engine.events,
                "events_per_s": round(cluster.engine.events / wall, 1),
                "live_nodes": cluster.tracker.live_count,
                "wrong_member_views": cluster.tracker.wrong_views,
            }
        )
    else:
        wall = time.perf_counter() - started
        report = build_report(spec, make_config(spec), outcome, wall_s=wall)
        result.update(
            {
                "stopped_by_wall_budget": False,
                "wall_s": round(wall, 1),
                "simulated_seconds_reached": outcome.simulated_seconds,
                "events": outcome.events,
                "events_per_s": round(outcome.events / wall, 1) if wall > 0 else None,
                "report": report,
            }
        )
        if outcome.curve is not None:
            result["curve"] = outcome.curve
    result["max_rss_mb"] = _peak_rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def _peak_rss_mb() -> float:
    """Peak resident memory of this process. ``ru_maxrss`` survives ``execve`` on Linux
    (it would report the parent's peak), so read the high-water mark of this image."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---------------------------------------------------------------------------- parent


def run(name: str, spec: Spec, *, budget: float | None = None) -> dict[str, Any]:
    """Run ``spec`` in a child process; return its result dict (also saved to disk)."""
    RUNS.mkdir(parents=True, exist_ok=True)
    out = RUNS / f"{name}.json"
    spec_json = json.dumps(dataclasses.asdict(spec))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        spec_json,
        "--child-out",
        str(out),
    ]
    if budget is not None:
        command += ["--wall-budget", str(budget)]
    log(f"== {name}: {spec.scenario} N={spec.nodes} seed={spec.seed} loss={spec.loss}")
    if REUSE:
        earlier = _finished_run(json.loads(spec_json))
        if earlier is not None:
            log(f"   {name}: reusing {earlier[0].name} (same spec, finished)")
            return earlier[1]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, check=False)
    if completed.returncode != 0 or not out.exists():
        return {
            "error": f"child exited {completed.returncode}",
            "wall_s": time.perf_counter() - started,
        }
    result: dict[str, Any] = json.loads(out.read_text())
    log(
        f"   {name}: wall {result['wall_s']} s, cpu {result.get('cpu_s')} s, "
        f"{result['simulated_seconds_reached']} simulated s, "
        f"{result['events']:,} events, {result['max_rss_mb']} MB"
    )
    return result


REUSE = False
"""``--reuse``: take a finished run of the same spec from ``RUNS`` instead of running it."""


def _finished_run(spec: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    for path in sorted(RUNS.glob("*.json")):
        try:
            result: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("spec") == spec and result.get("stopped_by_wall_budget") is False:
            return path, result
    return None


def goal(
    name: str, target: str, measured: Any, passed: bool | None, **extra: Any
) -> dict[str, Any]:
    return {"goal": name, "target": target, "measured": measured, "passed": passed, **extra}


def bench_scale(scale: float) -> list[dict[str, Any]]:
    n = max(10, int(10_000 * scale))
    spec = Spec("steady", nodes=n, seed=1, duration=60.0, start="converged")
    result = run(f"scale-{n}", spec, budget=600.0)
    stopped = result.get("stopped_by_wall_budget", True)
    passed = not stopped and result.get("wall_s", math.inf) <= 600.0
    report = result.get("report", {})
    return [
        goal(
            f"N={n} for 60 simulated seconds (steady state, converged start) within 10 "
            "minutes of wall time",
            "<= 600 s wall",
            _cost(result)
            | {
                "stopped_by_wall_budget": stopped,
                "wrong_member_views": result.get("wrong_member_views"),
                "false_suspicions": report.get("summary", {}).get("false_suspicions"),
                "traffic_per_node_per_s": report.get("summary", {}).get("traffic_per_node_per_s"),
            },
            passed,
        )
    ]


SCALE_10K_WALL_S = 300.0
"""Goal of ``scale-10k``: wall seconds of the 10,000-node steady run, set-up included."""
SCALE_10K_PEAK_MB = 6_000.0
"""Goal of ``scale-10k``: peak resident megabytes of that run."""
SCALE_10K_SIZES = (1_000, 2_000, 10_000)
"""Mesh sizes of ``scale-10k``; the last one carries the goals."""


def bench_scale_10k(scale: float) -> list[dict[str, Any]]:
    """Wall time and peak memory of the steady state at 1,000, 2,000 and 10,000 nodes."""
    points: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for size in SCALE_10K_SIZES:
        n = max(10, int(size * scale))
        spec = Spec("steady", nodes=n, seed=1, duration=60.0, start="converged")
        result = run(f"scale-10k-{n}", spec, budget=600.0)
        points.append({"nodes": n} | _cost(result))
    stopped = result.get("stopped_by_wall_budget", True)
    wall = result.get("wall_s", math.inf)
    peak = result.get("max_rss_mb", math.inf)
    return [
        goal(
            f"N={points[-1]['nodes']} for 60 simulated seconds (steady state, converged "
            "start): wall time and peak memory",
            f"<= {SCALE_10K_WALL_S:.0f} s wall and <= {SCALE_10K_PEAK_MB:.0f} MB peak RSS",
            {"points": points, "stopped_by_wall_budget": stopped},
            not stopped and wall <= SCALE_10K_WALL_S and peak <= SCALE_10K_PEAK_MB,
        )
    ]


def _cost(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "wall_s": result.get("wall_s"),
        "cpu_s": result.get("cpu_s"),
        "simulated_seconds_reached": result.get("simulated_seconds_reached"),
        "events": result.get("events"),
        "events_per_s": result.get("events_per_s"),
        "max_rss_mb": result.get("max_rss_mb"),
    }


def bench_scale_join(scale: float) -> list[dict[str, Any]]:
    points = []
    for n in (1000,):
        n = max(10, int(n * scale))
        result = run(f"scale-join-{n}", Spec("join", nodes=n, seed=1, duration=60.0), budget=600.0)
        results = result.get("report", {}).get("results", {})
        points.append(
            {"nodes": n}
            | _cost(result)
            | {
                "stopped_by_wall_budget": result.get("stopped_by_wall_budget"),
                "convergence_s": results.get("convergence_s"),
                "membership_convergence_s": results.get("membership_convergence_s"),
                "wrong_member_views": result.get("wrong_member_views"),
            }
        )
    return [goal("the join storm itself (N nodes through 3 seeds at once)", "-", points, None)]


def bench_scale_curve(scale: float) -> list[dict[str, Any]]:
    points = []
    for n in (100, 300, 1000):
        n = max(10, int(n * scale))
        result = run(f"scale-curve-{n}", Spec("join", nodes=n, seed=1, duration=60.0))
        report = result.get("report", {})
        points.append(
            {"nodes": n, "start": "join"}
            | _cost(result)
            | {
                "membership_convergence_s": report.get("summary", {}).get(
                    "membership_convergence_s"
                ),
                "convergence_s": report.get("results", {}).get("convergence_s"),
            }
        )
    for n in (1000, 3000, 10_000):
        n = max(10, int(n * scale))
        spec = Spec("steady", nodes=n, seed=1, duration=10.0, start="converged")
        result = run(f"scale-curve-{n}-converged", spec)
        points.append({"nodes": n, "start": "converged"} | _cost(result))
    return [goal("simulation cost at growing N", "-", points, None)]


def bench_rumor(scale: float) -> list[dict[str, Any]]:
    n = max(10, int(1000 * scale))
    bound = rounds_bound(n, 3)
    out = []
    FIGURES.mkdir(parents=True, exist_ok=True)
    for loss, factor, label in ((0.0, 1.25, "0"), (0.1, 1.5 * 1.25, "10")):
        spec = Spec(
            "rumor", nodes=n, seed=1, loss=loss, duration=60.0, settle=5.0, start="converged"
        )
        result = run(f"rumor-{n}-loss{label}", spec)
        report = result.get("report", {})
        res = report.get("results", {})
        if "curve" in result:
            from simulations.plot import plot_dissemination

            plot_dissemination(result["curve"], FIGURES / f"rumor-{n}-loss{label}.png")
        applied = (res.get("applied_rounds") or {}).get("max")
        heard = (res.get("heard_rounds") or {}).get("max")
        limit = factor * bound
        out.append(
            goal(
                f"rumor reaches every one of N={n} nodes at {label} % loss",
                f"every node hears the rumor within {factor:g} x {bound:.2f} = {limit:.2f} "
                "gossip rounds",
                {
                    "applied_rounds": res.get("applied_rounds"),
                    "heard_rounds": res.get("heard_rounds"),
                    "applied_s": res.get("applied_s"),
                    "informed": res.get("informed"),
                    "of": res.get("of"),
                },
                heard is not None
                and heard <= limit
                and (res.get("heard_rounds") or {}).get("count") == res.get("of"),
                applied_max_rounds=applied,
                analytic_rounds=round(bound, 3),
            )
        )
    return out


def bench_bandwidth(scale: float) -> list[dict[str, Any]]:
    out = []
    plans = (
        (
            0.0,
            (
                (100, "join"),
                (300, "join"),
                (300, "converged"),
                (1000, "converged"),
                (10_000, "converged"),
            ),
        ),
        (1.0, ((100, "join"), (300, "join"), (10_000, "converged"))),
    )
    for rate, sizes in plans:
        points: dict[str, dict[str, Any]] = {}
        for n, start in sizes:
            n = max(10, int(n * scale))
            spec = Spec("steady", nodes=n, seed=1, duration=60.0, outcome_rate=rate, start=start)
            suffix = "-converged" if start == "converged" else ""
            result = run(f"steady-{n}-outcomes{rate:g}{suffix}", spec)
            results = result.get("report", {}).get("results", {})
            per_node = results.get("traffic", {}).get("per_node_per_s", {})
            points[f"{n}{suffix}"] = {
                "nodes": n,
                "start": start,
                "udp_bytes": per_node.get("udp", {}).get("bytes"),
                "gossip_only_bytes": per_node.get("gossip", {}).get("bytes"),
                "probe_bytes": per_node.get("probe", {}).get("bytes"),
                "push_pull_bytes": per_node.get("push_pull", {}).get("bytes"),
                "retransmit_limit": results.get("retransmit_limit"),
                "drain_s": results.get("drain_s"),
            } | _cost(result)
        ordered = sorted(points.values(), key=lambda p: (p["nodes"], p["start"] == "converged"))
        small, large = ordered[0], ordered[-1]
        a = small["udp_bytes"] or 0.0
        b = large["udp_bytes"] or 0.0
        out.append(
            goal(
                f"UDP bytes per node per second from N={small['nodes']} to "
                f"N={large['nodes']}, {rate:g} ledger opinions per second mesh-wide",
                "growth <= 1.2x",
                {
                    "points": points,
                    f"ratio_{small['nodes']}_to_{large['nodes']}": round(b / a, 3) if a else None,
                },
                bool(a) and b / a <= 1.2,
            )
        )
    return out


def bench_slow_node(scale: float) -> list[dict[str, Any]]:
    n = max(10, int(100 * scale))
    keys = (
        "false_deaths_total",
        "false_deaths_of_slow_node",
        "false_suspicions_total",
        "false_suspicions_of_slow_node",
        "false_suspicions_of_others",
        "false_suspicions_by_slow_node",
        "false_deaths_by_slow_node",
        "slow_node_health_at_end",
        "slow_node_refutations",
        "slow_node_stalls_detected",
        "pauses",
        "paused_s",
        "longest_pause_s",
    )
    out = []
    variants = (
        ("", "pause", (0.1, 2.0), (0.1, 2.0)),
        ("-long", "pause", (1.0, 12.0), (1.0, 4.0)),
        ("-lag", "lag", (1.0, 4.0), (0.1, 2.0)),
    )
    for label, mode, pause, run_s in variants:
        spec = Spec(
            "slow-node",
            nodes=n,
            seed=1,
            loss=0.05,
            duration=300.0,
            pause_s=pause,
            run_s=run_s,
            slow_mode=mode,
        )
        result = run(f"slow-node-{n}{label}", spec)
        res = result.get("report", {}).get("results", {})
        on = res.get("lifeguard_on", {})
        off = res.get("lifeguard_off", {})
        out.append(
            goal(
                f"slow node (N={n}, 5 % loss, "
                + (
                    f"stalls of {pause[0]:g}-{pause[1]:g} s"
                    if mode == "pause"
                    else f"inbound lag of {pause[0]:g}-{pause[1]:g} s"
                )
                + "): no false deaths with Lifeguard on",
                "0 false deaths",
                {
                    "lifeguard_on": {k: on.get(k) for k in keys},
                    "lifeguard_off": {k: off.get(k) for k in keys},
                },
                on.get("false_deaths_total") == 0,
            )
        )
    return out


def bench_partition(scale: float) -> list[dict[str, Any]]:
    n = max(10, int(1000 * scale))
    spec = Spec(
        "partition-heal", nodes=n, seed=1, partition_s=30.0, duration=400.0, start="converged"
    )
    result = run(f"partition-{n}", spec)
    rc = result.get("report", {}).get("results", {}).get("reconvergence", {})
    budget = rc.get("budget_s")
    return [
        goal(
            f"50/50 partition of N={n} heals: everything reconverges",
            f"<= 2 push-pull intervals = {budget} s",
            rc,
            bool(rc.get("within_budget")),
        )
    ]


ECONOMY_GOAL_S = 120.0
"""Wall-clock goal for 1,000 agents and 10,000 delegations, seconds."""
ECONOMY_BUDGET_S = 1800.0
"""Wall-clock budget after which the economy run is stopped and reported as far as it got."""


def bench_economy(scale: float) -> list[dict[str, Any]]:
    """The agent economy at two sizes; the goal applies to the larger."""
    out = []
    for agents, delegations in ((200, 2_000), (1_000, 10_000)):
        n = max(10, int(agents * scale))
        count = max(100, int(delegations * scale))
        spec = Spec(
            "economy",
            nodes=n,
            seed=1,
            start="converged",
            delegations=count,
            sybil=max(2, n // 100),
            bad_input=0.05,
        )
        result = run(f"economy-{n}-{count}", spec, budget=ECONOMY_BUDGET_S)
        stopped = result.get("stopped_by_wall_budget", True)
        economy = result.get("report", {}).get("results", {})
        figures = _cost(result) | {
            "nodes": n,
            "delegations": count,
            "stopped_by_wall_budget": stopped,
            "wall_ms_per_delegation": None
            if stopped or not result.get("wall_s")
            else round(1000.0 * result["wall_s"] / count, 3),
            "trust_convergence": economy.get("trust_convergence"),
            "share_to_bad": (economy.get("share_to_bad") or {}).get("all"),
            "tasks": economy.get("tasks"),
            "breakers": economy.get("breakers"),
            "sybil_ring": economy.get("sybil_ring"),
            "bad_input": economy.get("bad_input"),
        }
        large = agents == 1_000
        out.append(
            goal(
                f"economy: {n} agents x {count} delegations"
                + (f" within {ECONOMY_GOAL_S:g} s of wall time" if large else " (reference)"),
                f"<= {ECONOMY_GOAL_S:g} s wall" if large else "-",
                figures,
                (not stopped and result.get("wall_s", math.inf) <= ECONOMY_GOAL_S)
                if large
                else None,
            )
        )
    return out


def bench_rumor_after_join_sweep(scale: float) -> list[dict[str, Any]]:
    """A rumor right after a join storm, seeds 1-30 (``--quick``: 100 nodes, seeds 1-3):
    max and p99 rounds per seed against ``1.25 x`` the analytic bound."""
    n = max(10, int(1000 * scale))
    seeds = range(1, 31) if scale >= 1.0 else range(1, 4)
    limit = 1.25 * rounds_bound(n, 3)
    rows = []
    for seed in seeds:
        result = run(f"rumor-after-join-{n}-seed{seed}", Spec("rumor", nodes=n, seed=seed))
        res = result.get("report", {}).get("results", {})
        heard = res.get("heard_rounds") or {}
        rows.append(
            {
                "seed": seed,
                "heard_max_rounds": heard.get("max"),
                "heard_p99_rounds": heard.get("p99"),
                "informed": res.get("informed"),
                "of": res.get("of"),
                "bootstrap_s": (res.get("bootstrap") or {}).get("converged_s"),
                "wall_s": result.get("wall_s"),
            }
        )
    worst = max((r["heard_max_rounds"] or math.inf for r in rows), default=math.inf)
    return [
        goal(
            f"rumor after a join of N={n}: every node hears it within 1.25 x the bound, "
            f"seeds {seeds.start}-{seeds.stop - 1}",
            f"max <= {limit:.2f} rounds on every seed",
            rows,
            worst <= limit and all(r["informed"] == r["of"] for r in rows),
            worst_max_rounds=worst if math.isfinite(worst) else None,
        )
    ]


def bench_lossy_joins(scale: float) -> list[dict[str, Any]]:
    """N=1,000 joining through 3 seeds at 5 % and 10 % datagram loss (120 simulated s):
    zero false deaths at 5 %, convergence at both."""
    n = max(10, int(1000 * scale))
    out = []
    for loss in (0.05, 0.1):
        label = f"{round(loss * 100)}"
        spec = Spec("join", nodes=n, seed=1, loss=loss, duration=120.0)
        result = run(f"lossy-join-{n}-loss{label}", spec)
        res = result.get("report", {}).get("results", {})
        deaths = (res.get("false_deaths") or {}).get("false")
        suspicions = (res.get("false_suspicions") or {}).get("false")
        converged = res.get("convergence_s")
        out.append(
            goal(
                f"N={n} join at {label} % loss",
                "converged within 120 s" + (", zero false deaths" if loss <= 0.05 else ""),
                {
                    "convergence_s": converged,
                    "membership_convergence_s": res.get("membership_convergence_s"),
                    "wrong_member_views_at_end": res.get("wrong_member_views_at_end"),
                    "false_suspicions": suspicions,
                    "false_deaths": deaths,
                }
                | _cost(result),
                converged is not None and (loss > 0.05 or deaths == 0),
            )
        )
    return out


BENCHES = {
    "scale": bench_scale,
    "scale-10k": bench_scale_10k,
    "scale-join": bench_scale_join,
    "scale-curve": bench_scale_curve,
    "rumor": bench_rumor,
    "bandwidth": bench_bandwidth,
    "slow-node": bench_slow_node,
    "partition": bench_partition,
    "economy": bench_economy,
    "rumor-after-join-sweep": bench_rumor_after_join_sweep,
    "lossy-joins": bench_lossy_joins,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=None)
    parser.add_argument("--out", default=str(RESULTS / "simulation.json"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take runs already finished with the same spec from benchmarks/results/simulation/",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--wall-budget", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.wall_budget, Path(args.child_out))
        return
    global REUSE
    REUSE = args.reuse
    scale = 0.1 if args.quick else 1.0
    names = args.only or list(BENCHES)
    out_path = Path(args.out)
    summary: dict[str, Any] = {}
    if out_path.exists():
        try:
            summary = json.loads(out_path.read_text()).get("benchmarks", {})
        except (OSError, ValueError):
            summary = {}
    started = time.perf_counter()
    for name in names:
        summary[name] = BENCHES[name](scale)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "quick": args.quick,
            "benchmarks": summary,
        }
        out_path.write_text(dumps(document))
    log(f"done in {time.perf_counter() - started:.0f} s -> {out_path}")


if __name__ == "__main__":
    main()
