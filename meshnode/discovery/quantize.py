"""The int8 copy of the ONNX graph: weight matrices quantised to 8 bits.

Theory of operation
-------------------
:func:`quantize_int8` makes, from the float graph, a graph whose constant weight matrices
are signed 8-bit per output channel (activations are quantised per tensor as the graph
runs: ONNX Runtime's dynamic quantisation), checks it against the float graph and refuses
it below :data:`INT8_MATCH_MIN_COSINE`. :func:`int8_dot_product_cpu` tells whether this CPU
has the 8-bit dot-product instructions that make it worth it (see
:data:`~meshnode.discovery.MINILM_PRECISION`).

One activation scale per tensor is what costs most: a few channels of BERT's LayerNorm
outputs (and of the GELU output) are many times larger than the rest, so they set the
scale and the others keep only a few levels. Before quantising, :func:`smooth_activations`
divides each such input, channel by channel, by a factor and multiplies the matching rows
of the weight matrix by it (SmoothQuant: Xiao et al., 2023), which leaves the float
graph's output unchanged and moves part of the outliers into the weights, quantised per
output channel. The factors come from the float graph's activations on
:data:`~meshnode.discovery.model.CHECK_TEXTS`. ``python -m benchmarks.int8_recipes``
measures the recipes that were tried.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshnode.discovery.model import CHECK_TEXTS
from meshnode.discovery.onnx_export import feeds, open_session

__all__ = [
    "INT8_MATCH_MIN_COSINE",
    "INT8_QUANTIZE_VERSION",
    "SMOOTH_ALPHA",
    "int8_dot_product_cpu",
    "quantize_int8",
    "smooth_activations",
]

INT8_QUANTIZE_VERSION = 2
"""Version of the quantisation recipe in :func:`quantize_int8`; part of the int8 graph's
file name, with ONNX Runtime's version (its quantiser makes the graph). 2: activations
smoothed before quantising (:func:`smooth_activations`); 1 quantised the graph as
exported."""

INT8_MATCH_MIN_COSINE = 0.97
"""An int8 graph is used only if, on :data:`~meshnode.discovery.model.CHECK_TEXTS`, every
vector it gives has at least this cosine with the float graph's (measured with recipe 2:
0.9945 for the empty text, 0.998 and above for the others; recipe 1 gave 0.980 for the
empty text, 0.992 and above for the others). Left lenient: it was measured on one CPU,
and ONNX Runtime's 8-bit kernels differ between CPUs (on x86 without VNNI the 8-bit
products can saturate)."""

SMOOTH_ALPHA = 0.7
"""Migration strength of :func:`smooth_activations`: input channel ``j`` is divided by
``s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)`` and weight row ``j`` multiplied by
it. Chosen on the cosine with the float graph over 94 texts that are not retrieval test
data (``python -m benchmarks.int8_recipes``, ``docs/benchmarks/int8-recipes.json``): mean /
least cosine 0.9959 / 0.9904 at 0.5, 0.9978 / 0.9891 at 0.6, 0.9973 / 0.9905 at 0.7,
0.9959 / 0.9840 at 0.8, against 0.9937 / 0.9737 unsmoothed. The smoothing adds one
elementwise ``Mul`` per smoothed input (18) and no measurable time: 3.3x the float
graph's speed, one text per pass on one thread, against 3.2x unsmoothed in the same
run."""

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


def _smoothed_inputs(model: Any, context: bool = False) -> dict[str, list[Any]]:
    """The inputs that :func:`smooth_activations` smooths, each with the MatMul nodes
    reading it with a constant weight: every such input except, unless ``context``,
    attention's context (the input of the attention output projection, made by a
    Reshape; smoothing it too changed nothing measurable). Inputs whose weights another
    node also reads are left alone, since scaling the weight would change that node."""
    weights = {init.name for init in model.graph.initializer}
    readers: dict[str, int] = {}
    producers: dict[str, str] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
        for name in node.output:
            producers[name] = node.op_type
    groups: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            groups.setdefault(node.input[0], []).append(node)
    return {
        name: nodes
        for name, nodes in groups.items()
        if (context or producers.get(name) != "Reshape")
        and all(readers[node.input[1]] == 1 for node in nodes)
    }


def smooth_activations(
    model: Any,
    tokenizer: Any,
    alpha: float = SMOOTH_ALPHA,
    texts: Sequence[str] = CHECK_TEXTS,
    context: bool = False,
) -> Any:
    """A copy of ``model`` (an ONNX ``ModelProto`` of the float graph) that computes the
    same function with smaller activation outliers at the inputs of its weight matrices
    (see :func:`_smoothed_inputs`): a ``Mul`` by ``1 / s`` per input channel before the
    products, and weight row ``j`` multiplied by ``s_j`` (:data:`SMOOTH_ALPHA`). ``max|X_j|``
    is the largest magnitude of channel ``j`` over ``texts``, each run alone through the
    float graph. Float output unchanged to rounding (cosine above 0.99999 measured)."""
    import onnx
    from onnx import helper, numpy_helper

    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    groups = _smoothed_inputs(smoothed, context)
    probe = onnx.ModelProto()
    probe.CopyFrom(smoothed)
    for name in groups:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = open_session(probe.SerializeToString(), 1)
    names = [output.name for output in session.get_outputs()]
    largest: dict[str, np.ndarray] = {}
    for text in texts:
        outputs = session.run(None, feeds([tokenizer.encode(text).ids]))
        for name, value in zip(names, outputs, strict=True):
            if name in groups:
                channel_max = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
                largest[name] = np.maximum(largest.get(name, channel_max), channel_max)
    weights = {init.name: init for init in smoothed.graph.initializer}
    muls = {}
    for name, nodes in groups.items():
        matrices = [numpy_helper.to_array(weights[node.input[1]]) for node in nodes]
        row_max = np.max([np.abs(matrix).max(axis=1) for matrix in matrices], axis=0)
        scale = np.maximum(largest[name], 1e-5) ** alpha / np.maximum(row_max, 1e-5) ** (1 - alpha)
        scale = scale.astype(np.float32)
        inverse = numpy_helper.from_array((1 / scale).astype(np.float32), f"{name}_smooth")
        smoothed.graph.initializer.append(inverse)
        muls[name] = helper.make_node(
            "Mul", [name, inverse.name], [f"{name}_smoothed"], name=f"{name}_Smooth"
        )
        for node, matrix in zip(nodes, matrices, strict=True):
            node.input[0] = f"{name}_smoothed"
            weights[node.input[1]].CopyFrom(
                numpy_helper.from_array((matrix * scale[:, None]).astype(np.float32), node.input[1])
            )
    # Each Mul goes right after the node making its input (first if a graph input), so
    # the graph stays sorted.
    made = {output for node in smoothed.graph.node for output in node.output}
    ordered = [mul for name, mul in muls.items() if name not in made]
    for node in smoothed.graph.node:
        ordered.append(node)
        ordered.extend(muls[output] for output in node.output if output in muls)
    del smoothed.graph.node[:]
    smoothed.graph.node.extend(ordered)
    return smoothed


def quantize_int8(graph: bytes | str, reference: Any, tokenizer: Any) -> bytes:
    """The float graph (its bytes or the path of its file), its activations smoothed
    (:func:`smooth_activations`), with every weight matrix quantised to signed 8 bits per
    output channel; activations are quantised to unsigned 8 bits per tensor when the
    graph runs (ONNX Runtime's dynamic quantisation). Only products with a constant
    weight are quantised: attention's query-key and weights-value products stay in float.
    The result is checked against ``reference`` (a session on the float graph) on
    :data:`CHECK_TEXTS`, each text alone, and refused below
    :data:`INT8_MATCH_MIN_COSINE`. Needs onnx and onnxruntime; takes about 4 s."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_from_string(graph) if isinstance(graph, bytes) else onnx.load(graph)
    model = smooth_activations(model, tokenizer)
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
