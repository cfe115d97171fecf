"""The ONNX Runtime backend of MiniLM: the exported graph and the model's fast tokenizer.

Theory of operation
-------------------
The float graph is loaded from the cache (:mod:`meshnode.discovery.graph_cache`) or, the
first time, exported from torch (:mod:`meshnode.discovery.onnx_export`) under the
cross-process export lock and stored; with ``precision="int8"`` its 8-bit copy
(:mod:`meshnode.discovery.quantize`) is made the same way from the float graph. Once the
graphs are cached, this backend never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meshnode.discovery.graph_cache import (
    default_cache_dir,
    export_lock,
    graph_file_name,
    load_cached,
    store_graph,
)
from meshnode.discovery.model import MINILM_DIM, MINILM_MAX_TOKENS
from meshnode.discovery.onnx_export import export_onnx, feeds, open_session
from meshnode.discovery.quantize import quantize_int8

__all__ = ["OnnxBackend"]


class OnnxBackend:
    """The same model as one ONNX graph (encoder, mean pooling, normalisation) run by ONNX
    Runtime, with the model's own fast tokenizer. See :data:`MINILM_BACKEND`; with
    ``precision="int8"``, the 8-bit copy of that graph (:data:`MINILM_PRECISION`)."""

    name = "onnx"

    def __init__(
        self,
        path: Path,
        threads: int | None,
        batch_size: int,
        cache_dir: Path | None,
        precision: str = "fp32",
    ) -> None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=MINILM_MAX_TOKENS)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._threads = threads
        self.precision = precision
        # The int8 graph picks one activation scale per input tensor, so in a padded batch
        # a text's vector would depend on its batch-mates (cosine down to 0.984 measured).
        # One text per forward pass keeps every vector a function of its text alone, and
        # one int8 pass is still faster per text than a float batch (370 against 165/s).
        self._batch_size = 1 if precision == "int8" else batch_size
        cache = cache_dir if cache_dir is not None else default_cache_dir()
        if precision == "int8":
            self._session: Any = self._int8_session(path, cache)
        else:
            self._session, _ = self._float_session(path, cache)
        probe = self.encode(["probe"])
        if probe.shape != (1, MINILM_DIM):
            raise ValueError(f"{path} is not all-MiniLM-L6-v2: output shape {probe.shape}")

    def _float_session(self, path: Path, cache: Path) -> tuple[Any, bytes | str]:
        """A session on the float graph, and that graph: the cached file's path, or the
        serialised graph when it was just exported."""
        cached = cache / graph_file_name(path)
        session = load_cached(cached, self._threads)
        if session is not None:
            return session, str(cached)
        # One export at a time per cache directory: processes started together (the demo's
        # agents, a test's nodes) wait for the first one and load its graph.
        with export_lock(cache):
            session = load_cached(cached, self._threads)
            if session is not None:
                return session, str(cached)
            graph = export_onnx(path)
            store_graph(cached, graph)
            return open_session(graph, self._threads), graph

    def _int8_session(self, path: Path, cache: Path) -> Any:
        """A session on the cached int8 graph, made from the float graph when missing."""
        cached = cache / graph_file_name(path, "int8")
        session = load_cached(cached, self._threads)
        if session is not None:
            return session
        reference, graph = self._float_session(path, cache)
        with export_lock(cache):
            session = load_cached(cached, self._threads)
            if session is None:
                quantized = quantize_int8(graph, reference, self._tokenizer)
                store_graph(cached, quantized)
                session = open_session(quantized, self._threads)
        return session

    def encode(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        out = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        # Similar lengths share a batch, so little of each batch is padding.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            inputs = feeds([encodings[i].ids for i in rows])
            out[rows] = self._session.run(None, inputs)[0]
        return out
