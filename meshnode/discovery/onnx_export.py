"""The ONNX graph of all-MiniLM-L6-v2: exported once from torch, run by ONNX Runtime.

Theory of operation
-------------------
:func:`export_onnx` traces the model together with its mean pooling and L2 normalisation
into one graph with three inputs (token ids, attention mask, token types: see
:func:`feeds`) and one output (the unit vectors). The export is checked against torch on
:data:`~meshnode.discovery.model.CHECK_TEXTS`, in one padded batch and each text alone, and
refused below :data:`ONNX_MATCH_MIN_COSINE`. It needs torch, transformers and onnx; running
the graph (:func:`open_session`) needs only ONNX Runtime.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshnode.discovery.model import CHECK_TEXTS, HF_OFFLINE_ENV, MINILM_MAX_TOKENS

__all__ = [
    "ONNX_EXPORT_VERSION",
    "ONNX_MATCH_MIN_COSINE",
    "ONNX_OPSET",
    "export_onnx",
    "feeds",
    "open_session",
]

ONNX_EXPORT_VERSION = 1
"""Version of the export recipe in :func:`export_onnx`; part of the cached graph's file
name, so a changed recipe never reuses an old graph."""

ONNX_OPSET = 17
"""ONNX opset of the exported graph."""

ONNX_MATCH_MIN_COSINE = 0.9999
"""An exported graph is used only if, on :data:`~meshnode.discovery.model.CHECK_TEXTS`,
every vector it gives has at least this cosine with torch's (measured: 0.9999999)."""


def export_onnx(path: Path) -> bytes:
    """Export the model with its mean pooling and normalisation as one ONNX graph, check it
    against torch on texts of several lengths (one batch, so padding is exercised), and
    return the serialised graph. Needs torch, transformers and onnx."""
    os.environ.update(HF_OFFLINE_ENV)
    import io
    import warnings

    import onnxruntime as ort
    import torch
    from transformers import AutoModel, AutoTokenizer

    class Pooled(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            hidden = self.model(
                input_ids=ids, attention_mask=mask, token_type_ids=types
            ).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * weights).sum(dim=1)
            pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, and
    # a wrapper left in training mode would switch dropout on in the model it holds.
    model = Pooled(AutoModel.from_pretrained(str(path), local_files_only=True)).eval()
    batch = tokenizer(
        list(CHECK_TEXTS),
        padding=True,
        truncation=True,
        max_length=MINILM_MAX_TOKENS,
        return_tensors="pt",
    )
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    axes = {"batch": 0, "tokens": 1}
    dynamic = {name: {v: k for k, v in axes.items()} for name in ("ids", "mask", "types")}
    with torch.no_grad():
        expected = model(*inputs).numpy()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that the trace fixed
        # some shape-dependent branches; the numerical check below is what decides.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            inputs,
            buffer,  # type: ignore[arg-type]  # file-like objects are accepted
            input_names=["ids", "mask", "types"],
            output_names=["embedding"],
            dynamic_axes={**dynamic, "embedding": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    graph = buffer.getvalue()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    arrays = [tensor.numpy() for tensor in inputs]
    got = session.run(None, dict(zip(("ids", "mask", "types"), arrays, strict=True)))[0]
    worst = float(np.min(np.sum(got * expected, axis=1)))
    # Each text alone as well: shorter sequences than the traced ones, and no padding.
    for row in range(len(CHECK_TEXTS)):
        length = int(arrays[1][row].sum())
        alone = {
            name: array[row : row + 1, :length]
            for name, array in zip(("ids", "mask", "types"), arrays, strict=True)
        }
        single = session.run(None, alone)[0][0]
        worst = min(worst, float(np.dot(single, expected[row])))
    if worst < ONNX_MATCH_MIN_COSINE:
        raise RuntimeError(
            f"the exported ONNX graph disagrees with torch (cosine {worst:.6f} < "
            f"{ONNX_MATCH_MIN_COSINE}); not using it"
        )
    return graph


def feeds(rows: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """The graph's inputs for token id rows, padded with zeros to the longest row."""
    width = max(len(tokens) for tokens in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, tokens in enumerate(rows):
        ids[r, : len(tokens)] = tokens
        mask[r, : len(tokens)] = 1
    return {"ids": ids, "mask": mask, "types": np.zeros_like(ids)}


def open_session(graph: bytes | str, threads: int | None) -> Any:
    """A session on ``graph`` (the serialised graph, or the path of its file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads if threads is not None else 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: no per-session chatter on stderr
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
