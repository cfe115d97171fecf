"""Embedders without the model: the hashing embedder, the LRU cache, the fallback and the
cross-process lock of the graph cache."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from meshnode.discovery import (
    HASHING_DIM,
    CachedEmbedder,
    Embedder,
    HashingEmbedder,
    load_default_embedder,
)
from meshnode.discovery import minilm as minilm_module
from meshnode.discovery.graph_cache import export_lock
from meshnode.errors import ExportLockTimeout, MeshError

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

    monkeypatch.setattr(minilm_module, "MiniLMEmbedder", broken)
    with capture_logs() as logs:
        embedder = load_default_embedder()
    assert isinstance(embedder, HashingEmbedder)
    assert len(logs) == 1
    (log,) = logs
    assert log["event"] == "semantic_embedder_unavailable"
    assert log["log_level"] == "warning"
    assert "sentence_transformers" in log["reason"]
    assert log["fallback"] == embedder.model_id


# --------------------------------------------------------------------------- export lock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from meshnode.discovery.graph_cache import export_lock
cache, log, hold = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
with export_lock(cache):
    with log.open("a") as out:
        out.write(f"in {time.monotonic()}\\n")
    print("locked", flush=True)
    time.sleep(hold)
    with log.open("a") as out:
        out.write(f"out {time.monotonic()}\\n")
"""


def hold_lock(cache: Path, log: Path, hold_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(cache), str(log), str(hold_s)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_export_lock_excludes_other_processes(tmp_path: Path) -> None:
    """Two processes taking the export lock at once hold it one after the other: their
    intervals inside the lock never overlap (the lock is cross-process, not per thread)."""
    log = tmp_path / "log"
    procs = [hold_lock(tmp_path / "cache", log, 0.5) for _ in range(2)]
    for proc in procs:
        proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0
    events = [line.split() for line in log.read_text().splitlines()]
    assert [kind for kind, _ in events] == ["in", "out", "in", "out"]
    assert float(events[1][1]) <= float(events[2][1])


def test_export_lock_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    """While another process holds the lock, a waiter gives up after its timeout with an
    ExportLockTimeout (a MeshError and a TimeoutError) naming the cache; once the holder
    dies, the lock is free at once."""
    cache = tmp_path / "cache"
    holder = hold_lock(cache, tmp_path / "log", 120.0)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExportLockTimeout, match="seems stuck") as caught:  # noqa: SIM117
            with export_lock(cache, timeout=0.2):
                pytest.fail("took a lock another process holds")
        assert isinstance(caught.value, MeshError)
        assert isinstance(caught.value, TimeoutError)
        assert str(cache) in str(caught.value)
    finally:
        holder.kill()
        holder.communicate(timeout=WAIT_S)
    with export_lock(cache, timeout=WAIT_S):
        pass


def test_export_lock_without_a_writable_cache_is_no_lock(tmp_path: Path) -> None:
    """A cache directory that cannot be created (a file is in the way) means no cache to
    share and no lock: the block still runs."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    ran = False
    with export_lock(blocker / "cache", timeout=0.1):
        ran = True
    assert ran
