"""The keyring file (meshnode/runtime/store.py): written 0600, atomically, never through a
symlink; read only from a private regular file of bounded size holding a valid keyring.

Invariants: every refusal raises :class:`KeyringFileError` with a message naming the
problem, reads nothing it should not (a FIFO never blocks, a symlink is never followed),
and leaves the file as it was.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshnode.errors import KeyringFileError
from meshnode.runtime.store import MAX_KEYRING_FILE_BYTES, load_keyring, save_keyring
from protocol.keyring import KEY_BYTES, Keyring, format_key

K1, K2 = (bytes([i]) * KEY_BYTES for i in (1, 2))


def test_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ring.json"
    ring = Keyring((K1, K2), "prod")
    save_keyring(path, ring)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring(path) == ring
    assert format_key(K1) in path.read_text()
    save_keyring(path, ring.use(K2))  # replaced in place
    assert load_keyring(path).primary == K2
    assert not (tmp_path / "sub" / "ring.json.tmp").exists()


def test_save_never_writes_through_a_symlink(tmp_path: Path) -> None:
    """A symlink planted at the path or at its temp file is replaced, and its target is
    left untouched."""
    target = tmp_path / "victim"
    target.write_text("precious")
    path = tmp_path / "ring.json"
    path.symlink_to(target)
    (tmp_path / "ring.json.tmp").symlink_to(target)
    save_keyring(path, Keyring((K1,)))
    assert target.read_text() == "precious"
    assert not path.is_symlink()
    assert load_keyring(path).keys == (K1,)


def _symlink(tmp_path: Path) -> Path:
    real = tmp_path / "real.json"
    save_keyring(real, Keyring((K1,)))
    link = tmp_path / "ring.json"
    link.symlink_to(real)
    return link


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "ring.json"
    os.mkfifo(path, 0o600)
    return path


def _world_readable(tmp_path: Path) -> Path:
    path = tmp_path / "ring.json"
    save_keyring(path, Keyring((K1,)))
    path.chmod(0o644)
    return path


def _oversized(tmp_path: Path) -> Path:
    path = tmp_path / "ring.json"
    path.write_bytes(b" " * (MAX_KEYRING_FILE_BYTES + 1))
    path.chmod(0o600)
    return path


def _written(text: str) -> object:
    def make(tmp_path: Path) -> Path:
        path = tmp_path / "ring.json"
        path.write_text(text)
        path.chmod(0o600)
        return path

    return make


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp_path: tmp_path / "missing.json", "no keyring"),
        (_symlink, "symlink"),
        (_fifo, "not a regular file"),
        (lambda tmp_path: tmp_path, "not a regular file"),  # a directory
        (_world_readable, "accessible by other users"),
        (_oversized, "larger than"),
        (_written("not json"), "not valid JSON"),
        (_written('{"keys": []}'), "non-empty"),
        (_written('{"keys": ["AAAA"]}'), "32 bytes"),
        (_written('{"keys": ["' + format_key(K1) + '"], "label": "' + "x" * 200 + '"}'), "cap"),
    ],
    ids=[
        "missing",
        "symlink",
        "fifo",
        "directory",
        "world-readable",
        "oversized",
        "not-json",
        "no-keys",
        "short-key",
        "long-label",
    ],
)
def test_load_refuses(tmp_path: Path, make: object, says: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    before = os.lstat(path) if os.path.lexists(path) else None
    with pytest.raises(KeyringFileError, match=says):
        load_keyring(path)
    if before is not None:
        after = os.lstat(path)
        assert (after.st_mode, after.st_size, after.st_mtime_ns) == (
            before.st_mode,
            before.st_size,
            before.st_mtime_ns,
        )
