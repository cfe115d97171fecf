"""Identities: node id text form, signatures, and key files (read and written by the
runtime's store; the protocol only turns an identity into its seed and back)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshnode.errors import KeyFileError
from meshnode.runtime.store import (
    MAX_KEY_FILE_BYTES,
    load_identity,
    load_or_create_identity,
    save_identity,
)
from protocol import (
    FastSigner,
    Identity,
    LocalProtocolError,
    fast_verify,
    is_node_id,
    node_id_from_public_key,
    public_key_from_node_id,
    short_id,
    verify,
)


def test_node_id_round_trips_to_public_key() -> None:
    """The node id is self-certifying: it decodes back to the exact public key."""
    ident = Identity.generate()
    assert len(ident.node_id) == 52
    assert ident.node_id == ident.node_id.lower()
    assert public_key_from_node_id(ident.node_id) == ident.public_key
    assert node_id_from_public_key(ident.public_key) == ident.node_id
    assert short_id(ident.node_id) == ident.node_id[:10]


@pytest.mark.parametrize(
    "text",
    ["", "abc", "A" * 52, "1" * 52, "a" * 51, "a" * 53, "a" * 51 + "b", None, 12],
)
def test_non_node_ids_are_refused(text: object) -> None:
    """Anything that is not the canonical base32 form of 32 bytes is refused."""
    assert not is_node_id(text)
    with pytest.raises(LocalProtocolError):
        public_key_from_node_id(text)  # type: ignore[arg-type]


def test_sign_and_verify() -> None:
    """A signature verifies only for the same key and the same bytes."""
    a, b = Identity.generate(), Identity.generate()
    sig = a.sign(b"hello")
    assert len(sig) == 64
    assert verify(a.public_key, b"hello", sig)
    assert not verify(a.public_key, b"hellp", sig)
    assert not verify(b.public_key, b"hello", sig)
    assert not verify(a.public_key, b"hello", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify(b"short", b"hello", sig)
    assert not verify(a.public_key, b"hello", b"x")


def test_from_seed_is_deterministic() -> None:
    assert Identity.from_seed(b"\x01" * 32).node_id == Identity.from_seed(b"\x01" * 32).node_id
    with pytest.raises(LocalProtocolError):
        Identity.from_seed(b"short")


def test_save_writes_0600_and_load_restores(tmp_path: Path) -> None:
    """The key file is private to its owner and restores the same identity."""
    path = tmp_path / "sub" / "node.key"
    ident = Identity.generate()
    save_identity(path, ident)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).node_id == ident.node_id
    assert load_or_create_identity(path).node_id == ident.node_id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o007])
def test_load_refuses_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    """A world- or group-accessible key is refused with a message naming the fix."""
    path = tmp_path / "node.key"
    save_identity(path, Identity.generate())
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(path)


@pytest.mark.parametrize("content", [b"", b"zz", b"00" * 31, b"not hex at all\n"])
def test_load_refuses_corrupt_key(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        load_identity(path)


def test_load_missing_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no identity key"):
        load_identity(tmp_path / "absent.key")


def test_fast_signer_matches_sizes_and_verifies() -> None:
    """The simulation stand-in keeps Ed25519's sizes and rejects altered data."""
    s = FastSigner.from_seed(b"x")
    sig = s.sign(b"data")
    assert len(sig) == 64
    assert len(s.public_key) == 32
    assert fast_verify(s.public_key, b"data", sig)
    assert not fast_verify(s.public_key, b"datb", sig)
    assert is_node_id(s.node_id)


def test_save_never_follows_a_planted_temp_symlink(tmp_path: Path) -> None:
    """A symlink planted at ``node.key.tmp`` is removed, not followed: the file it points
    at is untouched, and the key is a regular 0600 file that loads back.

    On the unfixed code: the key (65 bytes of hex) was written into the symlink's target
    and ``node.key`` became that symlink."""
    victim = tmp_path / "elsewhere" / "precious"
    victim.parent.mkdir()
    victim.write_bytes(b"do not touch\n")
    key = tmp_path / "data" / "node.key"
    key.parent.mkdir()
    (key.parent / "node.key.tmp").symlink_to(victim)
    identity = Identity.generate()
    save_identity(key, identity)
    assert victim.read_bytes() == b"do not touch\n"
    assert not key.is_symlink()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not (key.parent / "node.key.tmp").exists()
    assert not (key.parent / "node.key.tmp").is_symlink()
    assert load_identity(key).node_id == identity.node_id


@pytest.mark.parametrize("stale_mode", [0o600, 0o644, 0o400])
def test_save_replaces_a_stale_temp_file(tmp_path: Path, stale_mode: int) -> None:
    """A temp file left by an interrupted save (any mode) is replaced, and the key is
    0600 whatever the stale file's mode was."""
    key = tmp_path / "node.key"
    stale = tmp_path / "node.key.tmp"
    stale.write_bytes(b"half a key")
    os.chmod(stale, stale_mode)
    identity = Identity.generate()
    save_identity(key, identity)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not stale.exists()
    assert load_identity(key).node_id == identity.node_id


def test_seed_round_trip() -> None:
    """The protocol's pure form of a key: an identity is its 32-byte seed."""
    identity = Identity.generate()
    seed = identity.to_seed()
    assert len(seed) == 32
    assert Identity.from_seed(seed).node_id == identity.node_id
    for bad in (b"", b"\x00" * 33, "00" * 32):
        with pytest.raises(LocalProtocolError):
            Identity.from_seed(bad)  # type: ignore[arg-type]


def test_load_refuses_a_symlinked_key(tmp_path: Path) -> None:
    """A key file that is a symlink is refused, even when it points at a valid 0600 key:
    whoever can plant the link could point it at a key of their choosing (or at a file
    they can later swap), and the node would take that identity without a word.

    On the unfixed code: the symlink was followed and the node loaded the identity of the
    key it pointed at (node id equal to the planted key's)."""
    planted = tmp_path / "attacker" / "their.key"
    theirs = Identity.generate()
    save_identity(planted, theirs)
    key = tmp_path / "data" / "node.key"
    key.parent.mkdir()
    key.symlink_to(planted)
    with pytest.raises(KeyFileError, match="symlink"):
        load_identity(key)
    with pytest.raises(KeyFileError, match="symlink"):
        load_or_create_identity(key)
    assert key.is_symlink()  # refused, not replaced


def test_load_or_create_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    """A symlink planted where no key exists yet is refused rather than written through
    or silently replaced by a new identity; nothing is created at its target.

    On the unfixed code: a new identity was generated and the link replaced by it, so the
    node started under a fresh node id without a word."""
    target = tmp_path / "elsewhere" / "new.key"
    key = tmp_path / "node.key"
    key.symlink_to(target)
    with pytest.raises(KeyFileError, match="symlink"):
        load_or_create_identity(key)
    assert not target.exists()


def test_load_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    """A FIFO (which would block a plain open) or a directory at the key's path is refused
    at once."""
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_identity(fifo)
    folder = tmp_path / "dir.key"
    folder.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_identity(folder)


def test_load_refuses_an_oversized_key(tmp_path: Path) -> None:
    """A key file larger than MAX_KEY_FILE_BYTES is refused after reading at most one byte
    more than the cap (a valid key followed by padding included)."""
    path = tmp_path / "node.key"
    save_identity(path, Identity.generate())
    with path.open("ab") as out:
        out.write(b" " * MAX_KEY_FILE_BYTES)
    with pytest.raises(KeyFileError, match="larger than"):
        load_identity(path)


def test_load_or_create_creates_once(tmp_path: Path) -> None:
    """A missing key is generated (0600, in a 0700 directory it creates) and then kept."""
    key = tmp_path / "new" / "node.key"
    first = load_or_create_identity(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert load_or_create_identity(key).node_id == first.node_id
