"""The on-disk cache of derived ONNX graphs, and its cross-process export lock.

Theory of operation
-------------------
Exporting the float graph takes torch and tens of seconds; quantising it takes seconds
more. Both are done once per weights, recipe and quantiser and kept in a cache directory
(:func:`default_cache_dir`) under a file name that digests all three
(:func:`graph_file_name`), so a changed input never reuses an old graph. A graph is
written atomically (:func:`store_graph`: a private temporary file renamed over the final
name), so a reader sees all of it or nothing; a file ONNX Runtime cannot load is treated as
missing (:func:`load_cached`) and made again.

Processes started together (the demo's agents, a test's nodes) must not all export at once:
:func:`export_lock` holds an exclusive ``filelock`` on ``<cache>/.export.lock`` while one of
them exports; the others wait, then find the graph in the cache. The operating system
releases the lock when its holder dies. A waiter gives up after
:data:`EXPORT_LOCK_TIMEOUT_S` with :class:`~meshnode.errors.ExportLockTimeout`, which names
the lock file (a holder that hangs that long is stuck, not slow). Without a writable cache
directory there is nothing to share and no lock is taken.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from meshnode.discovery.onnx_export import ONNX_EXPORT_VERSION, open_session
from meshnode.discovery.quantize import INT8_QUANTIZE_VERSION
from meshnode.errors import ExportLockTimeout
from meshnode.logs import get_logger

__all__ = [
    "EXPORT_LOCK_FILE",
    "EXPORT_LOCK_TIMEOUT_S",
    "default_cache_dir",
    "export_lock",
    "graph_file_name",
    "load_cached",
    "store_graph",
]

EXPORT_LOCK_FILE = ".export.lock"
"""Name of the export lock's file inside the cache directory."""

EXPORT_LOCK_TIMEOUT_S = 600.0
"""Seconds a process waits for another one's export before it gives up with
:class:`~meshnode.errors.ExportLockTimeout`. Measured on a 2-core machine with other
processes busy: exporting the float graph takes 10-40 s and quantising it about 4 s more,
so ten minutes is only reached by a holder that is stuck (a dead one releases the lock at
once). Shorter would fail slow machines; longer would hide a hung holder."""

_log = get_logger("meshnode.discovery")


def default_cache_dir() -> Path:
    """Where the exported ONNX graph is kept: ``$MESHNODE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/meshnode``, else ``~/.cache/meshnode``."""
    explicit = os.environ.get("MESHNODE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "meshnode"


def graph_file_name(path: Path, precision: str = "fp32") -> str:
    """File name of the exported graph for the weights under ``path``: a digest of the
    weights, the model config and ``ONNX_EXPORT_VERSION`` (and, for the int8 graph,
    ``INT8_QUANTIZE_VERSION`` and ONNX Runtime's version), so new weights, a new recipe or
    a new quantiser never reuse an old graph."""
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


@contextlib.contextmanager
def export_lock(cache: Path, timeout: float = EXPORT_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive export lock of ``cache`` for the ``with`` block.

    Waits at most ``timeout`` seconds, then raises
    :class:`~meshnode.errors.ExportLockTimeout`. Without a writable cache directory, no
    lock (there is no cache to share either)."""
    path = cache / EXPORT_LOCK_FILE
    held: filelock.BaseFileLock | None = None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(path, timeout=timeout, thread_local=False)
        lock.acquire()
        held = lock
    except filelock.Timeout:
        raise ExportLockTimeout(
            f"waited {timeout:g} s for another process to finish exporting the MiniLM "
            f"graph into {cache}; the holder of {path} seems stuck (stop it, or remove "
            f"{cache} to start afresh)"
        ) from None
    except OSError as exc:  # an unwritable cache directory: nothing to share, no lock
        _log.info("minilm_export_unlocked", path=str(path), reason=str(exc))
    try:
        yield
    finally:
        if held is not None:
            held.release()


def load_cached(cached: Path, threads: int | None) -> Any:
    """A session on the cached graph, or None when there is none (or it is damaged)."""
    if not cached.is_file():
        return None
    try:
        # By path: ONNX Runtime reads the file itself, with no second copy in Python.
        return open_session(str(cached), threads)
    except Exception as exc:  # a damaged or foreign file: export a fresh one
        _log.warning("minilm_onnx_cache_invalid", path=str(cached), reason=str(exc))
        return None


def store_graph(cached: Path, graph: bytes) -> None:
    """Write the graph atomically (a concurrent reader sees all of it or nothing)."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        partial.write_bytes(graph)
        os.replace(partial, cached)
        _log.info("minilm_onnx_exported", path=str(cached), bytes=len(graph))
    except OSError as exc:  # a read-only home: keep the graph in memory only
        _log.info("minilm_onnx_not_cached", path=str(cached), reason=str(exc))
