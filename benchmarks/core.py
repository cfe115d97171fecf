"""Core throughput: signatures, the wire codec, ledger ingest and trust computation.

Usage::

    python benchmarks/core.py [--out results.json] [--quick]

Prints JSON to stdout (or writes it to ``--out``); progress goes to stderr. Every figure is
the median of several timed runs. Baselines measured in the same run sit beside the figures
they explain: bare msgpack beside the signed codec, the simulation signer beside Ed25519, and
a plain-Python EigenTrust beside the vectorised one (which must agree with it).

Trust graphs are random: every peer rates 20 distinct others with a uniform score. Records
are signed with ``protocol.FastSigner`` and checked with ``protocol.fast_verify`` so that
building 2 M records takes minutes, not hours; signature cost is measured separately.
``--quick`` skips the 100k-peer graph and runs fewer repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout

import msgpack
import numpy as np

import protocol
from crdt import TRUST_ALPHA, TRUST_MAX_ITERATIONS, TRUST_TOLERANCE, ReputationLedger
from protocol.codec import message_to_wire

GOAL_PEERS = 10_000
GOAL_RATINGS = 20
GOAL_MS = 60.0
NOW = 1_000_000.0
TTL = 30 * 24 * 3600.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ops_per_second(fn: Callable[[], object], *, runs: int, min_seconds: float = 0.2) -> float:
    """Median over ``runs`` of the rate of ``fn`` calls, each run lasting ``min_seconds``+."""
    rates = []
    for _ in range(runs):
        calls = 0
        start = time.perf_counter()
        elapsed = 0.0
        while elapsed < min_seconds:
            for _ in range(50):
                fn()
            calls += 50
            elapsed = time.perf_counter() - start
        rates.append(calls / elapsed)
    return statistics.median(rates)


def timed_ms(fn: Callable[[], object], *, runs: int) -> list[float]:
    """Wall-clock milliseconds of ``runs`` calls."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def cpu_ms(fn: Callable[[], object], *, runs: int) -> list[float]:
    """CPU milliseconds of ``runs`` calls: less sensitive to other processes on the host."""
    out = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        out.append((time.process_time() - start) * 1e3)
    return out


# --------------------------------------------------------------------------- crypto, codec


def bench_crypto(runs: int) -> dict[str, Any]:
    identity = protocol.Identity.from_seed(b"\x01" * 32)
    fast = protocol.FastSigner.from_seed(b"\x01")
    payload = protocol.signing_bytes(
        protocol.LedgerRecord(
            observer=identity.node_id,
            subject=fast.node_id,
            score=0.75,
            outcomes=12,
            seq=42,
            expires_at=NOW + TTL,
            signature=b"\x00" * 64,
        )
    )
    signature = identity.sign(payload)
    fast_signature = fast.sign(payload)
    log("crypto: Ed25519 and FastSigner sign / verify")
    return {
        "payload": "signing bytes of one LedgerRecord",
        "payload_bytes": len(payload),
        "ed25519_sign_ops_s": ops_per_second(lambda: identity.sign(payload), runs=runs),
        "ed25519_verify_ops_s": ops_per_second(
            lambda: protocol.verify(identity.public_key, payload, signature), runs=runs
        ),
        "baseline_fast_sign_ops_s": ops_per_second(lambda: fast.sign(payload), runs=runs),
        "baseline_fast_verify_ops_s": ops_per_second(
            lambda: protocol.fast_verify(fast.public_key, payload, fast_signature), runs=runs
        ),
        "signing_bytes_ops_s": ops_per_second(
            lambda: protocol.signing_bytes(protocol.Ping(seq=1, target=fast.node_id)), runs=runs
        ),
    }


def probe_batch(sender: protocol.Identity, members: int = 8) -> list[protocol.Message]:
    """A SWIM probe as it leaves a node: one Ping with ``members`` Alive rumors piggybacked."""
    batch: list[protocol.Message] = [protocol.Ping(seq=123_456, target=sender.node_id)]
    for i in range(members):
        member = protocol.Identity.from_seed(bytes([i + 10]) * 32)
        unsigned = protocol.Alive(
            node=member.node_id,
            incarnation=7 + i,
            host=f"10.0.{i}.{i + 1}",
            port=7946,
            signature=b"\x00" * 64,
        )
        sig = member.sign(protocol.signing_bytes(unsigned))
        batch.append(
            protocol.Alive(
                node=unsigned.node,
                incarnation=unsigned.incarnation,
                host=unsigned.host,
                port=unsigned.port,
                signature=sig,
            )
        )
    return batch


def bench_codec(runs: int) -> dict[str, Any]:
    sender = protocol.Identity.from_seed(b"\x02" * 32)
    batch = probe_batch(sender)
    frame = protocol.encode(batch, sender)
    decoded = protocol.decode(frame)
    assert decoded.messages == tuple(batch)
    wire = [message_to_wire(m) for m in batch]
    packed = msgpack.packb(wire, use_bin_type=True)
    log("codec: encode / decode of a Ping + 8 Alive batch")
    return {
        "batch": "1 Ping + 8 Alive, Ed25519-signed envelope",
        "frame_bytes": len(frame),
        "encode_ops_s": ops_per_second(lambda: protocol.encode(batch, sender), runs=runs),
        "decode_ops_s": ops_per_second(lambda: protocol.decode(frame), runs=runs),
        "baseline_decode_no_signature_check_ops_s": ops_per_second(
            lambda: protocol.decode(frame, verifier=lambda key, data, sig: True), runs=runs
        ),
        "baseline_msgpack_pack_ops_s": ops_per_second(
            lambda: msgpack.packb(wire, use_bin_type=True), runs=runs
        ),
        "baseline_msgpack_unpack_ops_s": ops_per_second(
            lambda: msgpack.unpackb(packed, raw=False), runs=runs
        ),
    }


# --------------------------------------------------------------------------- ledger


def signers(n: int) -> list[protocol.FastSigner]:
    return [protocol.FastSigner.from_seed(i.to_bytes(4, "big")) for i in range(n)]


def random_ledger(
    peers: int, ratings: int, seed: int
) -> tuple[ReputationLedger, list[protocol.FastSigner]]:
    """``peers`` FastSigner identities, each rating ``ratings`` distinct others."""
    rng = random.Random(seed)
    who = signers(peers)
    ids = [s.node_id for s in who]
    ledger = ReputationLedger(verifier=protocol.fast_verify)
    for i, signer in enumerate(who):
        picked = rng.sample(range(peers - 1), ratings)
        for j in picked:
            subject = ids[j if j < i else j + 1]  # skip self
            ledger.record_opinion(signer, subject, rng.random(), 1 + rng.randrange(20), NOW, TTL)
    return ledger, who


def bench_ingest(runs: int) -> dict[str, Any]:
    """Records/s through apply(): FastSigner records, and Ed25519 records."""
    log("ledger: apply() throughput")
    source, _ = random_ledger(500, 20, seed=7)
    fast_records = source.records()

    def fast_ingest() -> None:
        ledger = ReputationLedger(verifier=protocol.fast_verify)
        for record in fast_records:
            ledger.apply(record, NOW)

    real = [protocol.Identity.from_seed(bytes([i + 1]) * 32) for i in range(50)]
    real_ledger = ReputationLedger()
    rng = random.Random(8)
    for i, identity in enumerate(real):
        for j in rng.sample([k for k in range(50) if k != i], 20):
            real_ledger.record_opinion(identity, real[j].node_id, rng.random(), 1, NOW, TTL)
    ed_records = real_ledger.records()

    def ed_ingest() -> None:
        ledger = ReputationLedger()
        for record in ed_records:
            ledger.apply(record, NOW)

    fast_ms = statistics.median(timed_ms(fast_ingest, runs=runs))
    ed_ms = statistics.median(timed_ms(ed_ingest, runs=runs))
    twin = ReputationLedger(verifier=protocol.fast_verify)
    for record in fast_records:
        twin.apply(record, NOW)
    duplicate_ms = statistics.median(
        timed_ms(lambda: [twin.apply(r, NOW) for r in fast_records], runs=runs)
    )
    return {
        "apply_fast_verify_records_s": len(fast_records) / fast_ms * 1e3,
        "apply_ed25519_records_s": len(ed_records) / ed_ms * 1e3,
        "apply_duplicate_records_s": len(fast_records) / duplicate_ms * 1e3,
    }


def reference_eigentrust(
    edges: list[tuple[str, str, float]], pretrusted: list[str], nodes: list[str]
) -> dict[str, float]:
    """Plain-Python EigenTrust with the same formula, as a baseline and a cross-check."""
    out: dict[str, list[tuple[str, float]]] = {}
    for o, s, w in edges:
        if w > 0:
            out.setdefault(o, []).append((s, w))
    p = dict.fromkeys(nodes, 0.0)
    for node in pretrusted:
        p[node] = 1.0 / len(pretrusted)
    t = dict(p)
    for _ in range(TRUST_MAX_ITERATIONS):
        nxt = dict.fromkeys(nodes, 0.0)
        dangling = 0.0
        for node in nodes:
            row = out.get(node)
            if not row:
                dangling += t[node]
                continue
            total = sum(w for _, w in row)
            for s, w in row:
                nxt[s] += t[node] * w / total
        new = {
            n: (1 - TRUST_ALPHA) * (nxt[n] + dangling * p[n]) + TRUST_ALPHA * p[n] for n in nodes
        }
        delta = sum(abs(new[n] - t[n]) for n in nodes)
        t = new
        if delta < TRUST_TOLERANCE:
            break
    return t


def bench_trust(peers: int, ratings: int, runs: int, *, baseline: bool) -> dict[str, Any]:
    log(f"trust: building {peers} peers x {ratings} ratings")
    start = time.perf_counter()
    ledger, who = random_ledger(peers, ratings, seed=peers)
    setup_s = time.perf_counter() - start
    me = who[0].node_id
    pretrusted = [me] + [r.subject for r in ledger.records() if r.observer == me]

    start = time.perf_counter()
    ledger.graph()
    build_ms = (time.perf_counter() - start) * 1e3
    vector = ledger.trust_vector(NOW, pretrusted)
    log(f"trust: timing {runs} runs")
    dict_runs = timed_ms(lambda: ledger.trust(NOW, pretrusted), runs=runs)
    vector_runs = timed_ms(lambda: ledger.trust_vector(NOW, pretrusted), runs=runs)
    scores_runs = timed_ms(lambda: ledger.trust_scores(NOW, pretrusted), runs=runs)
    cpu_runs = cpu_ms(lambda: ledger.trust(NOW, pretrusted), runs=runs)
    result: dict[str, Any] = {
        "peers": peers,
        "ratings_per_peer": ratings,
        "records": len(ledger),
        "setup_s": round(setup_s, 2),
        "setup_records_s": round(len(ledger) / setup_s),
        "graph_build_ms": round(build_ms, 2),
        "trust_ms_median": round(statistics.median(dict_runs), 3),
        "trust_ms_runs": [round(x, 3) for x in dict_runs],
        "trust_cpu_ms_median": round(statistics.median(cpu_runs), 3),
        "trust_vector_ms_median": round(statistics.median(vector_runs), 3),
        "trust_scores_ms_median": round(statistics.median(scores_runs), 3),
        "cold_trust_ms": round(build_ms + statistics.median(dict_runs), 3),
        "iterations": vector.iterations,
        "converged": vector.converged,
        "pretrusted": len(pretrusted),
    }
    if baseline:
        edges = [(r.observer, r.subject, r.score) for r in ledger.records()]
        nodes = list(vector.ids)
        ref_runs = timed_ms(lambda: reference_eigentrust(edges, pretrusted, nodes), runs=1)
        ref = reference_eigentrust(edges, pretrusted, nodes)
        fast = vector.as_dict()
        result["baseline_pure_python_ms"] = round(ref_runs[0], 2)
        result["baseline_max_abs_diff"] = max(abs(ref[n] - fast[n]) for n in nodes)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the JSON here instead of stdout")
    parser.add_argument("--quick", action="store_true", help="skip 100k peers, fewer runs")
    args = parser.parse_args(argv)
    runs = 3 if args.quick else 7
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]

    results: dict[str, Any] = {
        "meta": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "quick": args.quick,
            "runs": runs,
        },
        "crypto": bench_crypto(runs),
        "codec": bench_codec(runs),
        "ledger": bench_ingest(runs),
    }
    results["trust"] = [
        bench_trust(n, GOAL_RATINGS, runs if n < 100_000 else 5, baseline=n == 1_000) for n in sizes
    ]
    results["meta"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    goal = next(t for t in results["trust"] if t["peers"] == GOAL_PEERS)
    results["goal"] = {
        "name": f"trust() on {GOAL_PEERS} peers x {GOAL_RATINGS} ratings, graph cached",
        "limit_ms": GOAL_MS,
        "measured_ms": goal["trust_ms_median"],
        "met": goal["trust_ms_median"] < GOAL_MS,
        "measured_cpu_ms": goal["trust_cpu_ms_median"],
        "cold_ms_including_graph_build": goal["cold_trust_ms"],
    }
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
        log(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
