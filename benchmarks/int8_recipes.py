"""How closely each int8 quantisation recipe of MiniLM tracks the float graph, and how fast.

Usage::

    python -m benchmarks.int8_recipes [--reps 7] [--out FILE]

For each recipe (ONNX Runtime's ``quantize_dynamic`` with some options, or with some
weight matrices left in float) it makes the int8 graph from the cached float one, embeds
a text set that is not retrieval test data (:data:`~meshnode.discovery.model.CHECK_TEXTS`,
the capability descriptions of the small older set ``tests/data/retrieval.json``, and the
request-like texts below), one text per forward pass on one thread as the int8 embedder
runs, and reports the cosine of each vector with the float graph's (mean, minimum,
minimum without the empty text, minimum on CHECK_TEXTS) and the time to embed the whole
set: in each of ``--reps`` rounds the float graph and every recipe embed it once, and the
report gives the median time and the median of the per-round ratios (float time over the
recipe's: its speed-up).
The recipe is chosen on these figures, not on retrieval recall (that would tune on the
test set).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from meshnode.discovery import MiniLMEmbedder
from meshnode.discovery.graph_cache import graph_file_name
from meshnode.discovery.model import CHECK_TEXTS, MINILM_MAX_TOKENS, minilm_path
from meshnode.discovery.onnx_export import feeds, open_session
from meshnode.discovery.quantize import smooth_activations

REQUESTS = (
    "book me a table for two tonight somewhere quiet",
    "what's the weather going to be like in Lisbon on Saturday?",
    "turn these meeting notes into a list of action items with owners",
    "check whether this invoice total matches the line items",
    "find me cheap flights from Berlin to Oslo in March",
    "rewrite this paragraph so a ten-year-old understands it",
    "is this mole something I should worry about",
    "convert 3.5 cups of flour to grams",
    "schedule a reminder to renew my passport next month",
    "pull the latest closing price for ACME and plot the last year",
    "who won the match last night and what was the score",
    "draft a polite email declining the job offer",
    "transcribe the attached voice memo",
    "detect the language of: ceci n'est pas une pipe",
    "resize every photo in this folder to 1024 pixels wide",
    "audit my smart contract for reentrancy bugs",
    "suggest a name for a bakery that sells sourdough",
    "how many calories are in a banana",
    "ok",
    "SELECT * FROM users WHERE id = 7; explain this query plan",
)
"""Request-like texts written for this benchmark (short, long, code, one word)."""


def texts() -> list[str]:
    """The benchmark's text set: CHECK_TEXTS, the old set's descriptions, REQUESTS."""
    path = Path(__file__).resolve().parent.parent / "tests" / "data" / "retrieval.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    descriptions = [capability["description"] for capability in data["capabilities"]]
    return list(CHECK_TEXTS) + descriptions + list(REQUESTS)


def weight_rows(model: Any) -> dict[str, int]:
    """Each MatMul with a constant weight: its node name and the weight's input size."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return {
        node.name: shapes[node.input[1]][0]
        for node in model.graph.node
        if node.op_type == "MatMul" and node.input[1] in shapes
    }


def recipes(model: Any) -> dict[str, dict[str, Any]]:
    """The recipes tried: keyword arguments for ``quantize_dynamic`` beyond the model, and
    ``smooth``: keyword arguments for :func:`smooth_activations` first (absent: none)."""
    rows = weight_rows(model)
    names = list(rows)
    hidden = min(rows.values())
    down = [name for name, size in rows.items() if size > hidden]  # FFN down-projections
    up = [name for name in names if "intermediate" in name]
    last = [name for name in names if "layer.5/" in name]
    first = [name for name in names if "layer.0/" in name]
    base: dict[str, Any] = {
        "per_channel": True,
        "op_types_to_quantize": ["MatMul"],
        "extra_options": {"MatMulConstBOnly": True},
    }
    return {
        "v1 (all constant MatMuls)": base,
        "reduce_range": {**base, "reduce_range": True},
        "per-tensor weights": {**base, "per_channel": False},
        "float FFN down (6)": {**base, "nodes_to_exclude": down},
        "float FFN down, layers 0-2 (3)": {**base, "nodes_to_exclude": down[:3]},
        "float FFN down, layers 3-5 (3)": {**base, "nodes_to_exclude": down[3:]},
        "float FFN (12)": {**base, "nodes_to_exclude": down + up},
        "float last layer (6)": {**base, "nodes_to_exclude": last},
        "float first layer (6)": {**base, "nodes_to_exclude": first},
        "float first layer + FFN down": {
            **base,
            "nodes_to_exclude": sorted(set(first) | set(down)),
        },
        "smoothed, alpha 0.5": {**base, "smooth": {"alpha": 0.5}},
        "smoothed, alpha 0.6": {**base, "smooth": {"alpha": 0.6}},
        "smoothed, alpha 0.7 (v2)": {**base, "smooth": {"alpha": 0.7}},
        "smoothed, alpha 0.8": {**base, "smooth": {"alpha": 0.8}},
        "smoothed with context, alpha 0.7": {
            **base,
            "smooth": {"alpha": 0.7, "context": True},
        },
        "smoothed, alpha 0.7, float FFN down, layers 0-2": {
            **base,
            "smooth": {"alpha": 0.7},
            "nodes_to_exclude": down[:3],
        },
    }


def quantize(model: Any, options: dict[str, Any], tokenizer: Any, tmp: Path) -> bytes:
    """The int8 graph of ``model`` under ``options`` (a recipe of :func:`recipes`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = dict(options)
    smooth = options.pop("smooth", None)
    if smooth is not None:
        model = smooth_activations(model, tokenizer, **smooth)
    out = tmp / "int8.onnx"
    quantize_dynamic(model, out, weight_type=QuantType.QInt8, **options)
    return out.read_bytes()


def embed_all(session: Any, rows: list[list[int]]) -> np.ndarray:
    """Each text alone through ``session``."""
    return np.stack([session.run(None, feeds([ids]))[0][0] for ids in rows])


def timed(session: Any, rows: list[list[int]]) -> float:
    """Seconds to embed ``rows`` through ``session``, one text per pass."""
    start = time.perf_counter()
    embed_all(session, rows)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timing rounds")
    parser.add_argument("--only", nargs="*", help="recipe names to run (default all)")
    parser.add_argument("--out", type=Path, help="write the report here as JSON")
    args = parser.parse_args(argv)

    import logging

    import onnx
    import onnxruntime
    from tokenizers import Tokenizer

    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="meshnode-int8-recipes-") as tmp_name:
        tmp = Path(tmp_name)
        MiniLMEmbedder(precision="fp32", cache_dir=tmp)  # exports the float graph
        path = minilm_path()
        graph = tmp / graph_file_name(path)
        model = onnx.load(str(graph))
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=MINILM_MAX_TOKENS)
        tokenizer.no_padding()
        text_set = texts()
        rows = [encoding.ids for encoding in tokenizer.encode_batch(text_set)]
        reference = open_session(str(graph), 1)
        expected = embed_all(reference, rows)
        nonempty = [i for i, text in enumerate(text_set) if text]
        report: dict[str, Any] = {
            "benchmark": "int8-recipes",
            "onnxruntime": onnxruntime.__version__,
            "texts": len(text_set),
            "reps": args.reps,
            "recipes": {},
        }
        sessions = {}
        for name, options in recipes(model).items():
            if args.only and name not in args.only:
                continue
            session = open_session(quantize(model, options, tokenizer, tmp), 1)
            cosines = np.sum(embed_all(session, rows) * expected, axis=1)
            sessions[name] = session
            report["recipes"][name] = {
                "cosine_mean": round(float(cosines.mean()), 4),
                "cosine_min": round(float(cosines.min()), 4),
                "cosine_min_nonempty": round(float(cosines[nonempty].min()), 4),
                "cosine_check_texts_min": round(float(cosines[: len(CHECK_TEXTS)].min()), 4),
                "excluded": len(options.get("nodes_to_exclude", [])),
            }
        # Every round runs the float graph and each recipe once, so a slow spell of the
        # machine weighs on all of them alike; each ratio is taken within its round.
        float_times: list[float] = []
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.reps):
            float_times.append(timed(reference, rows))
            for name, session in sessions.items():
                times[name].append(timed(session, rows))
        report["fp32_s_median"] = round(statistics.median(float_times), 4)
        for name, entry in report["recipes"].items():
            ratios = [f / q for f, q in zip(float_times, times[name], strict=True)]
            entry["int8_s_median"] = round(statistics.median(times[name]), 4)
            entry["speedup_median"] = round(statistics.median(ratios), 3)
            print(name, json.dumps(entry), flush=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
