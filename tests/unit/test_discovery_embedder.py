"""Embedders without the model: the hashing embedder, the LRU cache and the fallback."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np
import pytest
from structlog.testing import capture_logs

from meshnode.discovery import embedder as embedder_module
from meshnode.discovery.embedder import (
    HASHING_DIM,
    CachedEmbedder,
    Embedder,
    HashingEmbedder,
    load_default_embedder,
)

WAIT_S = 30.0


class CountingEmbedder:
    """A fake embedder that records every batch it is asked for."""

    model_id = "counting-d8"
    dim = 8

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            self.batches.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, len(text) % self.dim] = 1.0
        return out


# --------------------------------------------------------------------------- hashing


def test_hashing_embedder_shape_dtype_norm() -> None:
    """Rows are float32, one per text, of norm 1 (0 for a text with no words)."""
    embedder = HashingEmbedder()
    vectors = embedder.embed(["Translate text", "weather forecast for Oslo", "", "!!!"])
    assert vectors.shape == (4, HASHING_DIM)
    assert vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx([1.0, 1.0, 0.0, 0.0], abs=1e-6)
    assert embedder.embed([]).shape == (0, HASHING_DIM)
    assert embedder.model_id == f"hashing-v1-d{HASHING_DIM}"
    assert isinstance(embedder, Embedder)


def test_hashing_embedder_is_deterministic() -> None:
    """Same text, same vector, across calls and instances; the scheme is pinned by a
    digest so any change to it must bump HASHING_VERSION (and so the model_id)."""
    a = HashingEmbedder().embed(["translate text between languages"])
    b = HashingEmbedder().embed(["translate text between languages"])
    assert np.array_equal(a, b)
    nonzero = np.flatnonzero(a[0])
    signature = ",".join(f"{i}{'+' if a[0, i] > 0 else '-'}" for i in nonzero)
    digest = hashlib.blake2b(signature.encode(), digest_size=8).hexdigest()
    assert (len(nonzero), digest) == PINNED_SIGNATURE


PINNED_SIGNATURE = (34, "807a2773a030a7d5")


def test_hashing_features() -> None:
    """Lowercased words split on non-alphanumerics (underscores too); stop words get no
    unigram; bigrams and padded character trigrams are there; repeats count sublinearly."""
    features = HashingEmbedder().features("Translate_text to text")
    assert {"w:translate", "w:text", "b:translate text", "b:to text", "c:#tr", "c:xt#"} <= set(
        features
    )
    assert "w:to" not in features
    assert features["w:text"] == pytest.approx(1.0 + np.log(2.0))
    assert HashingEmbedder().features("translate_text") == HashingEmbedder().features(
        "Translate Text"
    )


def test_hashing_similarity_follows_shared_words() -> None:
    """Texts sharing words are closer than texts that share none."""
    vectors = HashingEmbedder().embed(
        ["translate text", "translate a text to French", "weather forecast"]
    )
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.4
    assert sims[0, 1] > sims[0, 2] + 0.3


@pytest.mark.parametrize("bad", ["a single string", [b"bytes"], [None]])
def test_embed_refuses_non_text(bad: object) -> None:
    """embed() takes a sequence of str only (a bare str would be split into letters)."""
    with pytest.raises(TypeError):
        HashingEmbedder().embed(bad)  # type: ignore[arg-type]


def test_hashing_dim_is_validated() -> None:
    """A dimension too small to spread features is refused."""
    with pytest.raises(ValueError, match="dim"):
        HashingEmbedder(dim=4)
    assert HashingEmbedder(dim=384).model_id == "hashing-v1-d384"


# --------------------------------------------------------------------------- cache


def test_cache_embeds_only_misses_once_each() -> None:
    """Hits are served from the cache; the misses of one call go to the inner embedder in
    one batch, each distinct text once, and the rows come back in the caller's order."""
    inner = CountingEmbedder()
    cache = CachedEmbedder(inner, max_entries=10)
    first = cache.embed(["a", "bb", "a"])
    assert inner.batches == [["a", "bb"]]
    second = cache.embed(["bb", "ccc", "a"])
    assert inner.batches == [["a", "bb"], ["ccc"]]
    assert np.array_equal(second, inner.embed(["bb", "ccc", "a"]))
    assert np.array_equal(first[0], first[2])
    assert (cache.hits, cache.misses) == (3, 3)
    assert (cache.model_id, cache.dim, cache.inner) == ("counting-d8", 8, inner)


def test_cache_is_bounded_lru() -> None:
    """The cache never holds more than max_entries; the least recently used goes first."""
    inner = CountingEmbedder()
    cache = CachedEmbedder(inner, max_entries=2)
    cache.embed(["a"])
    cache.embed(["b"])
    cache.embed(["a"])  # a is now the most recent
    cache.embed(["c"])  # evicts b
    assert len(cache) == 2
    inner.batches.clear()
    cache.embed(["a", "b", "c"])
    assert inner.batches == [["b"]]
    assert len(cache) == 2


def test_cache_rows_cannot_be_corrupted_by_callers() -> None:
    """Mutating a returned array does not change what the cache serves next."""
    cache = CachedEmbedder(HashingEmbedder(dim=32))
    out = cache.embed(["hello world"])
    expected = out.copy()
    out[:] = 0.0
    assert np.array_equal(cache.embed(["hello world"]), expected)


def test_cache_empty_and_validation() -> None:
    """An empty batch is fine; a capacity below 1 is refused."""
    cache = CachedEmbedder(CountingEmbedder())
    assert cache.embed([]).shape == (0, 8)
    with pytest.raises(ValueError, match="max_entries"):
        CachedEmbedder(CountingEmbedder(), max_entries=0)


def test_cache_is_thread_safe() -> None:
    """Threads embedding overlapping texts all get the right rows and the cache stays
    within its bound."""
    inner = HashingEmbedder(dim=64)
    cache = CachedEmbedder(inner, max_entries=50)
    texts = [f"capability number {i}" for i in range(80)]
    expected = inner.embed(texts)
    errors: list[BaseException] = []
    start = threading.Barrier(6, timeout=WAIT_S)

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            start.wait()
            for _ in range(200):
                picks = rng.integers(0, len(texts), size=int(rng.integers(1, 6)))
                out = cache.embed([texts[i] for i in picks])
                assert np.array_equal(out, expected[picks])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive()
    assert not errors, errors
    assert len(cache) <= 50
    assert cache.hits > 0


# --------------------------------------------------------------------------- fallback


def test_fallback_when_the_model_cannot_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a loadable model the default is the hashing embedder, with exactly one
    warning that says why."""

    def broken(*args: object, **kwargs: object) -> None:
        raise ModuleNotFoundError("No module named 'sentence_transformers'")

    monkeypatch.setattr(embedder_module, "MiniLMEmbedder", broken)
    with capture_logs() as logs:
        embedder = load_default_embedder()
    assert isinstance(embedder, HashingEmbedder)
    assert len(logs) == 1
    (log,) = logs
    assert log["event"] == "semantic_embedder_unavailable"
    assert log["log_level"] == "warning"
    assert "sentence_transformers" in log["reason"]
    assert log["fallback"] == embedder.model_id
