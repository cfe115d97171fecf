"""``python -m simulations``: run one seeded scenario, write the JSON report and the plot.

Theory of operation
-------------------
The command line maps one-to-one onto :class:`simulations.scenarios.Spec`. The seed is
printed first (a random one is drawn from the operating system when ``--seed`` is not
given, and printed all the same); then the run, with a progress bar on stderr; then a
short summary. A failed safety invariant or liveness check prints what failed and the
exact command that replays the run, and the exit status is 1 (safety) or 2 (liveness).

Examples::

    python -m simulations --scenario join --nodes 100 --seed 7
    python -m simulations --scenario rumor --nodes 1000 --seed 1 --loss 0.1 \\
        --json rumor.json --plot rumor.png
    python -m simulations --scenario slow-node --nodes 50 --seed 3 --loss 0.05 --duration 120
    python -m simulations --scenario byzantine --byzantine 0.1 --nodes 20 --profile local \\
        --duration 20 --json byzantine.json
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.byzantine import ATTACKS
from simulations.economy import BAD_KINDS
from simulations.progress import Progress
from simulations.report import build_report, command_line, dumps
from simulations.scenarios import (
    SCENARIOS,
    STARTS,
    TOPOLOGIES,
    Spec,
    make_config,
    run_scenario,
)

__all__ = ["build_parser", "main", "parse_args", "spec_from_args"]


def _pair(text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        a = float(low)
        b = float(high) if sep else a
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, got {text!r}") from None
    if a < 0 or b < a:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, got {text!r}")
    return a, b


def _attacks(text: str) -> tuple[str, ...]:
    if text == "none":
        return ()
    names = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown attacks {unknown}; pick from {ATTACKS}")
    return names


def _bad_kinds(text: str) -> tuple[str, ...]:
    names = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in names if k not in BAD_KINDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown kinds {unknown}; pick from {BAD_KINDS}")
    return names


def _setting(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


SCENARIO_HELP: dict[str, str] = {
    "join": "every node joins through the seeds; time until all see each other alive, hold "
    "every manifest and the same ledger (--duration bounds it)",
    "crash": "--crash-fraction of the nodes crash at once; failure detection times and "
    "false positives",
    "partition-heal": "the mesh splits in two halves for --partition-s, then heals; time "
    "to reconverge against two push-pull intervals",
    "churn": "nodes join and leave (--churn-rate, --churn-crash) for --duration, then "
    "--quiet-s to converge again",
    "rumor": "one node publishes a new manifest; gossip rounds until every node heard and "
    "applied it, against the push-gossip bound",
    "slow-node": "one node stalls again and again (--pause-s, --run-s, --slow-mode); false "
    "suspicions with Lifeguard on and off",
    "steady": "a converged mesh with no faults; the base traffic per node",
    "byzantine": "--byzantine of the nodes turn hostile (--attacks); honest false deaths, "
    "member and record bounds, reconvergence",
    "economy": "requesters delegate to honest and bad providers (--delegations, --bad-share, "
    "--sybil); trust and routing convergence by round",
    "coordinates": "network coordinates learn the links (best with --topology two-regions); "
    "median relative round-trip error every 10 s, at most 0.2 by the end",
}
"""One line per scenario for ``--help`` (the full story: :mod:`simulations.scenarios`)."""

EXAMPLES = """\
examples:
  python -m simulations --scenario join --nodes 100 --seed 7
  python -m simulations --scenario rumor --nodes 1000 --seed 1 --loss 0.1 \\
      --json rumor.json --plot rumor.png
  python -m simulations --scenario byzantine --byzantine 0.1 --nodes 20 --profile local \\
      --duration 20 --json byzantine.json

The seed is printed first; a failed check prints the command that replays the run.
Exit status: 0 passed, 1 safety violation, 2 liveness check failed, 64 bad arguments."""


def _description() -> str:
    width = max(len(name) for name in SCENARIOS)
    lines = [
        "Deterministic discrete-event simulation of a meshnode mesh: one seeded run of one "
        "scenario,",
        "judged by safety invariants during faults and liveness checks after them.",
        "",
        "scenarios:",
    ]
    for name in SCENARIOS:
        wrapped = textwrap.wrap(SCENARIO_HELP[name], 86 - width, break_on_hyphens=False)
        lines.append(f"  {name:<{width}}  {wrapped[0]}")
        lines += [f"  {'':<{width}}  {more}" for more in wrapped[1:]]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m simulations`` argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m simulations",
        description=_description(),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario", required=True, choices=SCENARIOS, help="what happens to the mesh (above)"
    )
    p.add_argument("--nodes", type=int, default=50, help="mesh size (default 50)")
    p.add_argument("--seed", type=int, default=None, help="run seed (default: random, printed)")
    p.add_argument("--loss", type=float, default=0.0, help="datagram loss probability (default 0)")
    p.add_argument(
        "--latency-ms",
        type=_pair,
        default=(0.5, 1.0),
        metavar="MIN:MEAN",
        help="one-way latency: minimum and mean in ms (default 0.5:1)",
    )
    p.add_argument(
        "--duplicate", type=float, default=0.0, help="datagram duplication probability (default 0)"
    )
    p.add_argument(
        "--reorder", type=float, default=0.0, help="probability of an extra delay (default 0)"
    )
    p.add_argument(
        "--duration", type=float, default=60.0, help="seconds of the measured phase (default 60)"
    )
    p.add_argument(
        "--profile",
        choices=("lan", "wan", "local"),
        default="lan",
        help="NodeConfig timing preset (default lan)",
    )
    p.add_argument(
        "--crypto",
        choices=("fast", "real"),
        default="fast",
        help="fast: protocol.FastSigner (not secure, ~50x cheaper, same sizes; the default); "
        "real: Ed25519",
    )
    p.add_argument(
        "--lifeguard",
        choices=("on", "off"),
        default="on",
        help="local health scaling of probe and suspicion timing (default on)",
    )
    p.add_argument("--wire", action="store_true", help="encode and decode every packet")
    p.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="flat",
        help="link model: flat (every link --latency-ms; the default) or two-regions (two "
        "halves, about 1 ms round trip inside one and 40 ms between)",
    )
    p.add_argument(
        "--start",
        choices=STARTS,
        default="join",
        help="how the mesh comes up before the measured phase (not for --scenario join): "
        "join (every node joins through the seeds, then --settle; the default) or "
        "converged (every node starts knowing every other alive, incarnation 0, with its "
        "manifest, nothing left to gossip: the steady state, for large N)",
    )
    p.add_argument(
        "--seeds", type=int, default=3, help="seed nodes everyone joins through (default 3)"
    )
    p.add_argument(
        "--join-spread",
        type=float,
        default=1.0,
        help="nodes start within this many seconds (default 1)",
    )
    p.add_argument(
        "--bootstrap-limit",
        type=float,
        default=600.0,
        help="seconds the bootstrap may take to converge (default 600)",
    )
    p.add_argument("--settle", type=float, default=5.0, help="seconds after bootstrap (default 5)")
    p.add_argument(
        "--crash-fraction",
        type=float,
        default=0.1,
        help="crash: share of the non-seed nodes that crash (default 0.1)",
    )
    p.add_argument(
        "--partition-s",
        type=float,
        default=30.0,
        help="partition-heal: seconds the halves are apart (default 30)",
    )
    p.add_argument(
        "--churn-rate", type=float, default=1.0, help="churn: joins+leaves per second (default 1)"
    )
    p.add_argument(
        "--churn-crash",
        type=float,
        default=0.0,
        help="churn: share of departures that crash (default 0)",
    )
    p.add_argument(
        "--quiet-s",
        type=float,
        default=60.0,
        help="seconds of convergence budget after faults (default 60)",
    )
    p.add_argument(
        "--outcome-rate",
        type=float,
        default=1.0,
        help="task outcomes per second, whole mesh (default 1)",
    )
    p.add_argument(
        "--pause-s",
        type=_pair,
        default=(0.1, 2.0),
        metavar="MIN:MAX",
        help="slow-node: stall seconds (default 0.1:2)",
    )
    p.add_argument(
        "--run-s",
        type=_pair,
        default=(0.1, 2.0),
        metavar="MIN:MAX",
        help="slow-node: run seconds (default 0.1:2)",
    )
    p.add_argument(
        "--slow-mode",
        choices=("pause", "lag"),
        default="pause",
        help="slow-node: stall the process, or delay what it receives by --pause-s (default pause)",
    )
    p.add_argument(
        "--byzantine",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="byzantine: fraction of the nodes that turn hostile (default 0.1)",
    )
    p.add_argument(
        "--attacks",
        type=_attacks,
        default=ATTACKS,
        metavar="A,B",
        help=f"byzantine: attacks, comma-separated, from {','.join(ATTACKS)} "
        "('none': only members with real keys; default all)",
    )
    p.add_argument(
        "--fake-members",
        type=int,
        default=2000,
        help="byzantine: fresh identities each hostile node invents (default 2000)",
    )
    p.add_argument(
        "--flood-records",
        type=int,
        default=2000,
        help="byzantine: records from fresh keys each hostile node signs (default 2000)",
    )
    p.add_argument(
        "--delegations",
        type=int,
        default=2000,
        help="economy: delegations started in all (default 2000)",
    )
    p.add_argument(
        "--delegation-rate",
        type=float,
        default=0.2,
        help="economy: delegations per second per requester (default 0.2)",
    )
    p.add_argument(
        "--bad-share",
        type=float,
        default=0.2,
        metavar="FRACTION",
        help="economy: share of bad providers: flaky, slow, lying, silent in turn (default 0.2)",
    )
    p.add_argument(
        "--sybil", type=int, default=0, metavar="N", help="economy: Sybil ring size (default 0)"
    )
    p.add_argument(
        "--bad-input",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="economy: share of requesters sending input that breaks the schema (default 0)",
    )
    p.add_argument(
        "--bad-kinds",
        type=_bad_kinds,
        default=BAD_KINDS,
        metavar="A,B",
        help=f"economy: kinds of the bad providers, in turn, from {','.join(BAD_KINDS)} "
        "(default all)",
    )
    p.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a NodeConfig field (repeatable; default: none)",
    )
    p.add_argument(
        "--json",
        type=str,
        default=None,
        help="write the JSON report here ('-': stdout; default: none)",
    )
    p.add_argument(
        "--plot",
        type=str,
        default=None,
        help="write the scenario's plot here (PNG; rumor and economy; default: none)",
    )
    p.add_argument(
        "--no-timing",
        action="store_true",
        help="leave wall time and events/s out of the JSON (byte-identical reports)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def spec_from_args(args: argparse.Namespace) -> Spec:
    seed = args.seed
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "big")
    return Spec(
        scenario=args.scenario,
        nodes=args.nodes,
        seed=seed,
        loss=args.loss,
        latency_min_ms=args.latency_ms[0],
        latency_mean_ms=args.latency_ms[1],
        duplicate=args.duplicate,
        reorder=args.reorder,
        duration=args.duration,
        profile=args.profile,
        crypto=args.crypto,
        lifeguard=args.lifeguard == "on",
        wire=args.wire,
        seeds=args.seeds,
        join_spread=args.join_spread,
        bootstrap_limit=args.bootstrap_limit,
        settle=args.settle,
        crash_fraction=args.crash_fraction,
        partition_s=args.partition_s,
        churn_rate=args.churn_rate,
        churn_crash=args.churn_crash,
        quiet_s=args.quiet_s,
        outcome_rate=args.outcome_rate,
        pause_s=args.pause_s,
        run_s=args.run_s,
        slow_mode=args.slow_mode,
        overrides=tuple(args.set),
        start=args.start,
        topology=args.topology,
        byzantine=args.byzantine,
        attacks=args.attacks,
        fake_members=args.fake_members,
        flood_records=args.flood_records,
        delegations=args.delegations,
        delegation_rate=args.delegation_rate,
        bad_share=args.bad_share,
        sybil=args.sybil,
        bad_input=args.bad_input,
        bad_kinds=args.bad_kinds,
    )


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before the run, a ``--json`` or ``--plot`` file that could not be written
    after it (its folder missing, or the path a folder): a long run must not end in an
    error that was known at its start."""
    for flag, given in (("--json", args.json), ("--plot", args.plot)):
        if not given or given == "-":
            continue
        path = Path(given)
        if path.is_dir():
            raise ValueError(f"{flag} {given} is a folder: give a file name")
        if not path.parent.is_dir():
            raise ValueError(f"{flag} {given}: the folder {path.parent} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stderr if args.json == "-" else sys.stdout
    try:
        spec = spec_from_args(args)
        config = make_config(spec)
        check_outputs(args)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 64
    print(f"seed={spec.seed}", file=out, flush=True)
    out.flush()
    progress = Progress(enabled=not args.quiet)
    wall_start = time.perf_counter()
    outcome = run_scenario(spec, progress)
    wall = time.perf_counter() - wall_start
    sys.stderr.flush()
    report = build_report(spec, config, outcome, wall_s=None if args.no_timing else wall)
    text = dumps(report)
    if args.json == "-":
        sys.stdout.write(text)
    elif args.json:
        Path(args.json).write_text(text)
    if args.plot:
        if outcome.curve is None:
            print(f"note: the {spec.scenario} scenario has no dissemination plot", file=out)
        elif outcome.curve.get("kind") == "economy":
            from simulations.plot import plot_economy

            plot_economy(outcome.curve, args.plot)
        else:
            from simulations.plot import plot_dissemination

            plot_dissemination(outcome.curve, args.plot)
    _summarise(report, out)
    print(
        f"{outcome.events:,} events, {outcome.simulated_seconds:.1f} simulated s, "
        f"{wall:.1f} s wall ({outcome.events / wall if wall > 0 else 0:,.0f} events/s)",
        file=out,
    )
    if outcome.violations or any(not c["passed"] for c in outcome.checks):
        for violation in outcome.violations:
            print(f"SAFETY VIOLATION: {violation}", file=out)
        for check in outcome.checks:
            if not check["passed"]:
                print(f"LIVENESS CHECK FAILED: {check['name']}: {check['detail']}", file=out)
        print(f"replay: {command_line(spec)}", file=out)
        return 1 if outcome.violations else 2
    return 0


def fixed(value: Any, digits: int = 2) -> str:
    """A figure with ``digits`` decimals for the summary (``-`` for none, as is for text)."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.{digits}f}"
    return str(value)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The summary printed after a run: seconds and round counts with 2 decimals, each
    round count with the length of its round."""
    summary = report["summary"]
    results = report["results"]
    lines = [f"scenario {report['scenario']}, {report['nodes']} nodes, seed {report['seed']}"]
    if summary["membership_convergence_s"] is not None:
        lines.append(f"  membership converged after {fixed(summary['membership_convergence_s'])} s")
    if summary["rumor"]:
        r = summary["rumor"]
        rounds = r["rounds"]
        lines.append(
            f"  rumor: applied after {fixed(rounds['p50'])}/{fixed(rounds['p99'])}/"
            f"{fixed(rounds['max'])} gossip rounds p50/p99/max (1 round = gossip_interval "
            f"{results['gossip_interval_s']:g} s), heard after {fixed(r['heard_rounds']['max'])} "
            f"max; analytic bound {fixed(r['analytic_rounds'])} rounds"
        )
    if summary["failure_detection"]:
        fd = summary["failure_detection"]
        lines.append(
            f"  failure detection: first node p50 {fixed(fd['first_node_s']['p50'])} s, "
            f"all nodes max {fixed(fd['all_nodes_s']['max'])} s"
        )
    if summary["reconvergence_after_heal"]:
        rc = summary["reconvergence_after_heal"]
        lines.append(
            f"  reconvergence after heal: membership {fixed(rc['membership_s'])} s, manifests "
            f"{fixed(rc['manifests_s'])} s, ledger {fixed(rc['ledger_s'])} s (budget "
            f"{fixed(rc['budget_s'])} s)"
        )
    lines.append(
        f"  false suspicions {summary['false_suspicions']}, false deaths {summary['false_deaths']}"
    )
    if report["scenario"] == "byzantine":
        r = results
        lines.append(
            f"  byzantine {r['byzantine_nodes']}: honest false deaths "
            f"{r['false_deaths_of_honest']}, peak members {r['peak_members']} (bound "
            f"{r['bounds']['members']}), peak records {r['peak_records']} (bound "
            f"{r['bounds']['records']}), honest convergence after the attack "
            f"{fixed(r['honest_convergence_after_stop_s'])} s (budget "
            f"{fixed(r['convergence_budget_s'])} s)"
        )
    if report["scenario"] == "economy":
        r = results
        tasks, trust = r["tasks"], r["trust_convergence"]
        rate = r["plan"]["delegation_rate"]
        lines.append(
            f"  economy (1 round = one delegation per requester, {fixed(1 / rate)} s on "
            f"average at {rate:g} per s): trust converged at round "
            f"{fixed(trust['round'], 0)} ({fixed(trust['seconds'])} s), routing at round "
            f"{fixed(r['routing_convergence']['round'], 0)} of "
            f"{r['rounds']}, share to bad {fixed(r['share_to_bad']['all'])}, completed "
            f"{tasks['completed']} ({tasks['completed_good']} good), failed {tasks['failed']}, "
            f"deadline misses {tasks['deadline_missed']}, breaker flaps {r['breakers']['flaps']}, "
            f"Sybil ring trust {fixed(r['sybil_ring']['trust_mean_final'])}, honest providers "
            f"lowered by bad input {r['bad_input']['honest_providers_lowered']}"
        )
    traffic = summary["traffic_per_node_per_s"]
    if traffic.get("gossip"):
        lines.append(
            f"  per node per s: gossip {fixed(traffic['gossip']['bytes'], 0)} B, probe "
            f"{fixed(traffic['probe']['bytes'], 0)} B, push-pull "
            f"{fixed(traffic['push_pull']['bytes'], 0)} B, fetch "
            f"{fixed(traffic['manifest_fetch']['bytes'], 0)} B"
        )
    return lines


def _summarise(report: dict[str, Any], out: Any) -> None:
    for line in summary_lines(report):
        print(line, file=out)
