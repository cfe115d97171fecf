"""Retrieval benchmark: does discovery find the capability a person would pick?

Usage::

    python -m benchmarks.retrieval [--out docs/benchmarks/retrieval.json]

For each retrieval set (``tests/data/retrieval.json``, the "old" set of 70 capabilities
the previous floor was chosen on; ``tests/data/retrieval_large.json``, the "new" set of
209 capabilities and 202 queries, as it is: "descriptions only"; and "new_examples", the
same set "with author examples": three examples per capability from
``tests/data/retrieval_large_examples.json``, written from the capabilities alone, in
place of the set's own) and each embedder (all-MiniLM-L6-v2 at fp32 and at
int8 on ONNX Runtime, and the hashing embedder), the capabilities are spread over nodes
seven at a time in a real :class:`~meshnode.discovery.CapabilityIndex`, every query is
embedded, and the answer is taken the way a node takes it, with equal trust, load and
price for every provider (so the order is the order of relevance):

* ``before``: the previous rule: the capability text without examples, the
  ``candidate_pool(5)`` nearest hits by embedding, an absolute similarity floor of 0.3;
* ``after``: each capability's vector as a node makes it
  (:func:`~meshnode.discovery.index.capability_vectors`: the whole text, and each example
  embedded alone, summed),
  :meth:`~meshnode.discovery.CapabilityIndex.hybrid_search` (embedding and BM25), and
  :func:`meshnode.core.router.rank` with its defaults (fused relevance, calibrated floor);
* ``after_one_text``: ``after`` with the whole text (examples folded in) embedded once,
  the previous rule (to show what embedding the examples alone adds);
* ``after_dense``: ``after`` without the lexical signal (to show what each part does).

Each reports recall@1, recall@3 (the expected capability first, or in the first three)
and the share of empty answers, over all queries and over the ``dev`` and ``held_out``
splits apart (the constants were chosen on ``dev``). The share of queries sharing no
content word with their capability's description is measured with the lexical index's
own tokeniser. A ``calibration`` section gives, on the new set's dev split, the figures the
router's constants were chosen from: the expected capability's relevance (lowest and 5th
percentile), the other capabilities' relevance (median and 95th percentile), how far the
expected capability fell below the best when it was not first, and recall@1 for a sweep
of ``LEXICAL_WEIGHT``. An ``ideas`` section gives dev recall for cheap query-time ideas
that were measured and not kept (exact scores over the whole set, MiniLM fp32 and int8).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshnode.core import router
from meshnode.core.router import candidate_pool, rank, relevance
from meshnode.discovery import CapabilityIndex, Embedder, HashingEmbedder, IndexEntry
from meshnode.discovery.index import (
    EXAMPLE_HEAD_WEIGHT,
    capability_text,
    capability_texts,
    capability_vectors,
)
from meshnode.discovery.lexical import LexicalIndex, capability_terms, terms
from protocol.manifest import Capability

ROOT = Path(__file__).resolve().parents[1]
SETS = {
    "old": ROOT / "tests" / "data" / "retrieval.json",
    "new": ROOT / "tests" / "data" / "retrieval_large.json",
    "new_examples": ROOT / "tests" / "data" / "retrieval_large.json",
}
AUTHOR_EXAMPLES = ROOT / "tests" / "data" / "retrieval_large_examples.json"
"""Three examples per capability of the large set, written from the capabilities alone
(never from the queries); the "new_examples" condition puts them in place of the set's
own."""
CAPABILITIES_PER_NODE = 7
TOP_K = 5
OLD_FLOOR = 0.3
"""The absolute similarity floor of the previous rule."""
WEIGHT_SWEEP = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0)


def load_set(
    path: Path, *, author_examples: bool = False
) -> tuple[list[Capability], list[dict[str, Any]]]:
    """The set's capabilities and queries; with ``author_examples`` each capability gets
    its examples from :data:`AUTHOR_EXAMPLES` (replacing its own where present)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    extra: dict[str, list[str]] = {}
    if author_examples:
        extra = json.loads(AUTHOR_EXAMPLES.read_text(encoding="utf-8"))["examples"]
    caps = [
        Capability(
            name=c["name"],
            description=c["description"],
            tags=tuple(c["tags"]),
            examples=tuple(extra.get(c["name"], c.get("examples", ()))),
        )
        for c in data["capabilities"]
    ]
    return caps, data["queries"]


def build_index(embedder: Embedder, caps: Sequence[Capability], *, rule: str) -> Any:
    """A capability index of ``caps``, seven per node, each capability embedded by
    ``rule``: ``"node"`` as a node does (:func:`capability_vectors`), ``"one_text"`` its
    whole text once (the previous rule), ``"no_examples"`` its text without examples (as
    before the field existed)."""
    index = CapabilityIndex(embedder.model_id, embedder.dim)
    for start in range(0, len(caps), CAPABILITIES_PER_NODE):
        node_id = f"node-{start // CAPABILITIES_PER_NODE:02d}"
        chunk = caps[start : start + CAPABILITIES_PER_NODE]
        if rule == "no_examples":
            chunk = [Capability(c.name, c.description, tags=c.tags) for c in chunk]
        texts = [capability_text(c) for c in chunk]
        entries = [
            IndexEntry(node_id=node_id, capability=c, text=t)
            for c, t in zip(chunk, texts, strict=True)
        ]
        vectors = capability_vectors(embedder, chunk) if rule == "node" else embedder.embed(texts)
        index.upsert(node_id, entries, vectors, embedder.model_id)
    return index


def no_shared_word_share(caps: Sequence[Capability], queries: Sequence[dict[str, Any]]) -> float:
    by_name = {c.name: c for c in caps}
    none = sum(
        not set(terms(q["query"])) & set(terms(by_name[q["expected"]].description)) for q in queries
    )
    return none / len(queries)


def answers(
    embedder: Embedder, caps: Sequence[Capability], queries: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Per pipeline, the capability names answered for each query (best first), plus the
    raw material of the calibration figures."""
    texts = [q["query"] for q in queries]
    vectors = embedder.embed(texts)
    pool = candidate_pool(TOP_K)
    old_index = build_index(embedder, caps, rule="no_examples")
    one_index = build_index(embedder, caps, rule="one_text")
    new_index = build_index(embedder, caps, rule="node")
    out: dict[str, Any] = {
        "before": [],
        "after": [],
        "after_one_text": [],
        "after_dense": [],
        "hybrid": [],
    }
    for text, vector in zip(texts, vectors, strict=True):
        dense = old_index.search(vector, pool, embedder.model_id)
        out["before"].append([e.name for e, s in dense if s >= OLD_FLOOR][:TOP_K])
        hybrid = new_index.hybrid_search(vector, text, pool, embedder.model_id)
        out["hybrid"].append(hybrid)
        hits = [(h.entry, h.similarity) for h in hybrid]
        words = {h.entry.key: h.lexical for h in hybrid}
        ranked = rank(hits, trust={}, load={}, top_k=TOP_K, lexical=words)
        out["after"].append([c.capability_name for c in ranked])
        ranked = rank(hits, trust={}, load={}, top_k=TOP_K)
        out["after_dense"].append([c.capability_name for c in ranked])
        one = one_index.hybrid_search(vector, text, pool, embedder.model_id)
        ranked = rank(
            [(h.entry, h.similarity) for h in one],
            trust={},
            load={},
            top_k=TOP_K,
            lexical={h.entry.key: h.lexical for h in one},
        )
        out["after_one_text"].append([c.capability_name for c in ranked])
    return out


def score(
    found: Sequence[Sequence[str]], queries: Sequence[dict[str, Any]], *, misses: bool = False
) -> dict[str, Any]:
    def figures(idx: list[int]) -> dict[str, Any]:
        return {
            "queries": len(idx),
            "recall_at_1": _share([found[i][:1] == [queries[i]["expected"]] for i in idx]),
            "recall_at_3": _share([queries[i]["expected"] in found[i][:3] for i in idx]),
            "empty_share": _share([not found[i] for i in idx]),
        }

    every = list(range(len(queries)))
    result = figures(every)
    for split in ("dev", "held_out"):
        result[split] = figures([i for i in every if queries[i]["split"] == split])
    if not misses:
        return result
    result["misses_at_1"] = [
        [queries[i]["query"], queries[i]["expected"], list(found[i][:3])]
        for i in every
        if found[i][:1] != [queries[i]["expected"]]
    ]
    return result


def _share(flags: Sequence[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def calibration(hybrid: list[Any], queries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Figures on the dev split that the router's constants were chosen from."""
    dev = [i for i, q in enumerate(queries) if q["split"] == "dev"]
    expected: list[float] = []
    others: list[float] = []
    gaps: list[float] = []
    for i in dev:
        rel = {h.entry.name: relevance(h.similarity, h.lexical) for h in hybrid[i]}
        want = rel.get(queries[i]["expected"])
        if want is None:
            continue
        expected.append(want)
        others += [v for name, v in rel.items() if name != queries[i]["expected"]]
        gaps.append(max(rel.values()) - want)
    sweep = {}
    for weight in WEIGHT_SWEEP:
        hits1 = 0
        for i in dev:
            best = max(hybrid[i], key=lambda h: relevance(h.similarity, h.lexical, weight))
            hits1 += best.entry.name == queries[i]["expected"]
        sweep[str(weight)] = round(hits1 / len(dev), 4)
    return {
        "expected_relevance_min": round(min(expected), 4),
        "expected_relevance_p5": round(float(np.percentile(expected, 5)), 4),
        "expected_in_pool_share": round(len(expected) / len(dev), 4),
        "other_relevance_median": round(float(np.median(others)), 4),
        "other_relevance_p95": round(float(np.percentile(others, 95)), 4),
        "gap_below_best_max": round(max(gaps), 4),
        "gap_below_best_p95": round(float(np.percentile(gaps, 95)), 4),
        "dev_recall_at_1_by_lexical_weight": sweep,
    }


HUBNESS_NEIGHBOURS = 5
"""Neighbours of a capability whose mean similarity measures how much of a hub it is, in
the hubness idea of :func:`ideas`."""


def ideas(
    embedder: Embedder, caps: Sequence[Capability], queries: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Recall@1 / recall@3 on the dev and held-out splits for cheap query-time ideas that
    were measured and not kept, each against the same exact scoring without it:
    cosine with the capability vectors (:func:`capability_vectors`) plus
    ``LEXICAL_WEIGHT`` × normalised BM25 (no floor: ranking only)."""
    names = [c.name for c in caps]
    expected = np.array([names.index(q["expected"]) for q in queries])
    dev = np.array([q["split"] == "dev" for q in queries])
    queries_v = np.asarray(embedder.embed([q["query"] for q in queries]), dtype=np.float64)
    caps_v = np.asarray(capability_vectors(embedder, caps), dtype=np.float64)
    lexical = LexicalIndex()
    for i, cap in enumerate(caps):
        lexical.add(i, capability_terms(cap))
    words = np.zeros((len(queries), len(caps)))
    for qi, q in enumerate(queries):
        for key, _, normalised in lexical.search(q["query"], len(caps)):
            words[qi, int(str(key))] = normalised

    def unit(m: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)

    def figures(scores: np.ndarray) -> dict[str, Any]:
        order = np.argsort(-(scores + router.LEXICAL_WEIGHT * words), axis=1, kind="stable")
        first = order[:, 0] == expected
        top3 = (order[:, :3] == expected[:, None]).any(axis=1)
        return {
            split: [round(float(first[mask].mean()), 4), round(float(top3[mask].mean()), 4)]
            for split, mask in (("dev", dev), ("held_out", ~dev))
        }

    base = queries_v @ caps_v.T
    out: dict[str, Any] = {"baseline": figures(base)}
    # Hubness (CSLS-like): lower capabilities that sit close to many others.
    between = caps_v @ caps_v.T
    np.fill_diagonal(between, -1.0)
    hub = np.sort(between, axis=1)[:, -HUBNESS_NEIGHBOURS:].mean(axis=1)
    out["hubness_correction_0.25"] = figures(base - 0.25 * hub[None, :])
    # Centering: remove the mean capability direction from both sides.
    mean = caps_v.mean(axis=0)
    out["centering_0.5"] = figures(unit(queries_v - 0.5 * mean) @ unit(caps_v - 0.5 * mean).T)
    # Pseudo-relevance feedback: move the query towards its three nearest capabilities.
    top = np.argsort(-base, axis=1)[:, :3]
    moved = unit(queries_v + 0.5 * caps_v[top].mean(axis=1))
    out["pseudo_relevance_feedback_3_0.5"] = figures(moved @ caps_v.T)
    # The capability name alone as a second vector, blended in.
    name_v = np.asarray(
        embedder.embed([" ".join(c.name.replace("_", " ").split()) for c in caps]),
        dtype=np.float64,
    )
    out["name_vector_blend_0.1"] = figures(0.9 * base + 0.1 * (queries_v @ name_v.T))
    # The description alone and the name alone summed into the capability's vector.
    desc_v = np.asarray(embedder.embed([c.description for c in caps]), dtype=np.float64)
    summed = unit(caps_v + 0.5 * unit(desc_v) + 0.25 * unit(name_v))
    out["description_and_name_summed_0.5_0.25"] = figures(queries_v @ summed.T)
    # A query prefix that says it is a request.
    prefixed = np.asarray(
        embedder.embed([f"request: {q['query']}" for q in queries]), dtype=np.float64
    )
    out["query_prefix_request"] = figures(prefixed @ caps_v.T)
    # Every text its own vector, a capability scored by its best text (max, not sum).
    texts = [capability_texts(c) for c in caps]
    flat = np.asarray(embedder.embed([t for group in texts for t in group]), dtype=np.float64)
    best = np.full_like(base, -1.0)
    start = 0
    for i, group in enumerate(texts):
        sims = queries_v @ flat[start : start + len(group)].T
        best[:, i] = sims.max(axis=1)
        start += len(group)
    out["multi_vector_max"] = figures(best)
    for weight in (0.0, 0.1, 0.2):
        order = np.argsort(-(base + weight * words), axis=1, kind="stable")
        out[f"lexical_weight_{weight}"] = {
            split: [
                round(float((order[:, 0] == expected)[mask].mean()), 4),
                round(float((order[:, :3] == expected[:, None]).any(axis=1)[mask].mean()), 4),
            ]
            for split, mask in (("dev", dev), ("held_out", ~dev))
        }
    return out


def embedders() -> dict[str, Embedder]:
    from meshnode.discovery import MiniLMEmbedder

    return {
        "minilm_fp32": MiniLMEmbedder(precision="fp32"),
        "minilm_int8": MiniLMEmbedder(precision="int8"),
        "hashing": HashingEmbedder(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON here (it is printed too)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "command": "python -m benchmarks.retrieval --out docs/benchmarks/retrieval.json",
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "constants": {
            "MIN_SIMILARITY": router.MIN_SIMILARITY,
            "RELEVANCE_MARGIN": router.RELEVANCE_MARGIN,
            "RELEVANCE_NOISE_Z": router.RELEVANCE_NOISE_Z,
            "NOISE_MIN_POOL": router.NOISE_MIN_POOL,
            "LEXICAL_WEIGHT": router.LEXICAL_WEIGHT,
            "EXAMPLE_HEAD_WEIGHT": EXAMPLE_HEAD_WEIGHT,
            "old_floor": OLD_FLOOR,
            "top_k": TOP_K,
        },
        "sets": {},
    }
    models = embedders()
    for set_name, path in SETS.items():
        caps, queries = load_set(path, author_examples=set_name == "new_examples")
        entry: dict[str, Any] = {
            "path": str(path.relative_to(ROOT)),
            "condition": "with author examples"
            if set_name == "new_examples"
            else "descriptions only (the set's own examples where it has them)",
            "capabilities": len(caps),
            "queries": len(queries),
            "held_out_queries": sum(q["split"] == "held_out" for q in queries),
            "no_shared_content_word_share": round(no_shared_word_share(caps, queries), 4),
            "results": {},
        }
        for model_name, embedder in models.items():
            found = answers(embedder, caps, queries)
            entry["results"][model_name] = {
                pipeline: score(found[pipeline], queries, misses=pipeline == "after")
                for pipeline in ("before", "after_dense", "after_one_text", "after")
            }
            if set_name != "old":
                entry["results"][model_name]["calibration"] = calibration(found["hybrid"], queries)
            if set_name != "old" and model_name != "hashing":
                entry.setdefault("ideas", {})[model_name] = ideas(embedder, caps, queries)
        report["sets"][set_name] = entry
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
