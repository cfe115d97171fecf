"""The int8 copy of the ONNX graph: weight matrices quantised to 8 bits.

Theory of operation
-------------------
:func:`quantize_int8` makes, from the float graph, a graph whose constant weight matrices
are signed 8-bit per output channel (activations are quantised per tensor as the graph
runs: ONNX Runtime's dynamic quantisation), checks it against the float graph and refuses
it below :data:`INT8_MATCH_MIN_COSINE`. :func:`int8_dot_product_cpu` tells whether this CPU
has the 8-bit dot-product instructions that make it worth it (see
:data:`~meshnode.discovery.MINILM_PRECISION`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from meshnode.discovery.model import CHECK_TEXTS
from meshnode.discovery.onnx_export import feeds, open_session

__all__ = [
    "INT8_MATCH_MIN_COSINE",
    "INT8_QUANTIZE_VERSION",
    "int8_dot_product_cpu",
    "quantize_int8",
]

INT8_QUANTIZE_VERSION = 1
"""Version of the quantisation recipe in :func:`quantize_int8`; part of the int8 graph's
file name, with ONNX Runtime's version (its quantiser makes the graph)."""

INT8_MATCH_MIN_COSINE = 0.97
"""An int8 graph is used only if, on :data:`~meshnode.discovery.model.CHECK_TEXTS`, every
vector it gives has at least this cosine with the float graph's (measured: 0.980 for the
empty text, 0.992 and above for the others)."""

_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""``/proc/cpuinfo`` flags of x86 CPUs with 8-bit dot-product instructions, which ONNX
Runtime's int8 matrix kernels use."""


def int8_dot_product_cpu(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU has 8-bit dot-product instructions (AVX-VNNI, AVX512-VNNI or
    AMX-INT8), read from the ``flags`` lines of ``/proc/cpuinfo`` (or of ``cpuinfo``, for
    tests). False where that file does not exist."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and _INT8_DOT_FLAGS & set(value.split()):
            return True
    return False


class _QuantizerAdvice(logging.Filter):
    """Drops the quantiser's advice to pre-process the model (logged on the root logger at
    every call); for this graph the check in :func:`quantize_int8` is what decides."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


def quantize_int8(graph: bytes | str, reference: Any, tokenizer: Any) -> bytes:
    """The float graph (its bytes or the path of its file) with every weight matrix
    quantised to signed 8 bits per output channel; activations are quantised to unsigned
    8 bits per tensor when the graph runs (ONNX Runtime's dynamic quantisation). Only
    products with a constant weight are quantised: attention's query-key and
    weights-value products stay in float. The result is checked against ``reference`` (a
    session on the float graph) on :data:`CHECK_TEXTS`, each text alone, and refused
    below :data:`INT8_MATCH_MIN_COSINE`. Needs onnx and onnxruntime; takes about 3 s."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_from_string(graph) if isinstance(graph, bytes) else onnx.load(graph)
    advice = _QuantizerAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        with tempfile.TemporaryDirectory(prefix="meshnode-int8-") as tmp:
            out = Path(tmp) / "int8.onnx"
            quantize_dynamic(
                model,
                out,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                extra_options={"MatMulConstBOnly": True},
            )
            quantized = out.read_bytes()
    finally:
        root.removeFilter(advice)
    session = open_session(quantized, 1)
    worst = 1.0
    for text in CHECK_TEXTS:
        inputs = feeds([tokenizer.encode(text).ids])
        ours = session.run(None, inputs)[0][0]
        theirs = reference.run(None, inputs)[0][0]
        worst = min(worst, float(np.dot(ours, theirs)))
    if worst < INT8_MATCH_MIN_COSINE:
        raise RuntimeError(
            f"the int8 graph strays too far from the float one (cosine {worst:.4f} < "
            f"{INT8_MATCH_MIN_COSINE}); not using it"
        )
    return quantized
