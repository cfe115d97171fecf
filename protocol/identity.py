"""Node identities: Ed25519 keys (PyNaCl) and the text form of node ids.

Theory of operation
-------------------
A node is its Ed25519 key pair. The node id is the 32-byte public key written in
lowercase RFC 4648 base32 without padding (52 characters, ``[a-z2-7]``): it is short enough
to copy, and it is *self-certifying* — anyone holding a node id can recover the public key
from it and check that node's signatures, with no key distribution and no registry.
:func:`short_id` gives the first 10 characters for logs and tables.

On the wire node ids travel as the raw 32 bytes; :func:`node_id_from_public_key` and
:func:`public_key_from_node_id` convert at the codec boundary.

Key files hold the 32-byte seed, hex encoded, and are written with mode 0600. Loading a key
file that other users can read is refused with :class:`~protocol.errors.KeyFileError`.

The sans-I/O cores never import PyNaCl directly: they take a :class:`Signer` (anything with
``node_id``, ``public_key`` and ``sign``) and a :data:`Verifier` callable, so the simulator can
substitute :class:`FastSigner` / :func:`fast_verify` (documented there) for speed.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import nacl.exceptions
import nacl.signing

from protocol.errors import KeyFileError, LocalProtocolError

PUBLIC_KEY_BYTES = 32
"""Length of an Ed25519 public key, and so of a node id on the wire."""
SIGNATURE_BYTES = 64
"""Length of an Ed25519 signature."""
NODE_ID_CHARS = 52
"""Length of the text form of a node id (base32 of 32 bytes, unpadded)."""
SHORT_ID_CHARS = 10
"""Characters kept by :func:`short_id` (50 bits: collisions are negligible for display)."""

Verifier = Callable[[bytes, bytes, bytes], bool]
"""``verify(public_key, data, signature) -> bool``: never raises on bad input."""


class Signer(Protocol):
    """What the cores need from an identity: who it is and how to sign."""

    @property
    def node_id(self) -> str: ...

    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


ID_CACHE_ENTRIES = 65_536
"""Node id ↔ public key conversions remembered (about 10 MB at most). Every signed
message names one or two node ids, so the codec converts the same few ids constantly."""


def node_id_from_public_key(public_key: bytes) -> str:
    """Return the text node id of a 32-byte public key."""
    if not isinstance(public_key, bytes | bytearray) or len(public_key) != PUBLIC_KEY_BYTES:
        raise LocalProtocolError(f"public key must be {PUBLIC_KEY_BYTES} bytes")
    return _encode_id(bytes(public_key))


@functools.lru_cache(maxsize=ID_CACHE_ENTRIES)
def _encode_id(public_key: bytes) -> str:
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def public_key_from_node_id(node_id: str) -> bytes:
    """Return the public key a node id names; raise ``LocalProtocolError`` if it is not one."""
    if not isinstance(node_id, str) or len(node_id) != NODE_ID_CHARS:
        raise LocalProtocolError(f"not a node id: {node_id!r}")
    raw = _decode_id(node_id)
    if raw is None:
        raise LocalProtocolError(f"not a node id: {node_id!r}")
    return raw


@functools.lru_cache(maxsize=ID_CACHE_ENTRIES)
def _decode_id(node_id: str) -> bytes | None:
    try:
        raw = base64.b32decode(node_id.upper() + "====", casefold=False)
    except (ValueError, TypeError):
        return None
    if len(raw) != PUBLIC_KEY_BYTES or _encode_id(raw) != node_id:
        return None
    return raw


def is_node_id(value: object) -> bool:
    """True if ``value`` is the canonical text form of some public key."""
    try:
        public_key_from_node_id(value)  # type: ignore[arg-type]
    except LocalProtocolError:
        return False
    return True


def short_id(node_id: str) -> str:
    """The first characters of a node id, for logs and tables."""
    return node_id[:SHORT_ID_CHARS]


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Check an Ed25519 signature. Returns False (never raises) for any bad input."""
    if (
        not isinstance(public_key, bytes | bytearray)
        or not isinstance(signature, bytes | bytearray)
        or len(public_key) != PUBLIC_KEY_BYTES
        or len(signature) != SIGNATURE_BYTES
    ):
        return False
    try:
        nacl.signing.VerifyKey(bytes(public_key)).verify(bytes(data), bytes(signature))
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError):
        return False
    return True


class Identity:
    """An Ed25519 key pair: the whole of a node's identity."""

    __slots__ = ("_node_id", "_public_key", "_signing_key")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self._public_key = bytes(signing_key.verify_key)
        self._node_id = node_id_from_public_key(self._public_key)

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity (from the OS CSPRNG)."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """A deterministic identity from a 32-byte seed (tests and simulations)."""
        if len(seed) != 32:
            raise LocalProtocolError("an Ed25519 seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached signature of ``data``."""
        return self._signing_key.sign(data).signature

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key to ``path`` with mode 0600, atomically and durably.

        The key goes to ``<path>.tmp``, created with ``O_CREAT | O_EXCL | O_NOFOLLOW``
        (a stale temp file, or a symlink planted in its place, is unlinked first and never
        followed), is fsynced, renamed over ``path``, and the directory is fsynced so the
        rename survives a crash."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(target.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # unlink removes a symlink itself, never its target
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                data = bytes(self._signing_key).hex().encode("ascii") + b"\n"
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key written by :meth:`save`.

        Raises :class:`KeyFileError` if the file is missing, corrupt, or readable or
        writable by group or others (fix with ``chmod 600``).
        """
        source = Path(path)
        try:
            st = source.stat()
        except FileNotFoundError as exc:
            raise KeyFileError(f"no identity key at {source}") from exc
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"identity key {source} is accessible by other users "
                f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {source}"
            )
        text = source.read_text(encoding="ascii", errors="replace").strip()
        try:
            seed = bytes.fromhex(text)
        except ValueError as exc:
            raise KeyFileError(f"identity key {source} is not hex") from exc
        if len(seed) != 32:
            raise KeyFileError(f"identity key {source} does not hold a 32-byte seed")
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the key at ``path``, or generate and save one if there is none."""
        if Path(path).exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity

    def __repr__(self) -> str:
        return f"<Identity {short_id(self._node_id)}>"


class FastSigner:
    """A *non-cryptographic* stand-in for :class:`Identity`, for large simulations only.

    The "signature" is a keyed BLAKE2b MAC of the data under the public key, so anyone can
    forge it. It keeps the byte sizes of real Ed25519 (64-byte signatures, 32-byte keys) so
    packet sizes in simulations stay exact, at roughly 1/50th of the CPU cost. Never use it
    where an adversary exists; :func:`fast_verify` is its verifier.
    """

    __slots__ = ("_node_id", "_public_key")

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise LocalProtocolError("public key must be 32 bytes")
        self._public_key = bytes(public_key)
        self._node_id = node_id_from_public_key(self._public_key)

    @classmethod
    def from_seed(cls, seed: bytes) -> FastSigner:
        return cls(hashlib.blake2b(seed, digest_size=PUBLIC_KEY_BYTES).digest())

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        return hashlib.blake2b(data, key=self._public_key, digest_size=SIGNATURE_BYTES).digest()


def fast_verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Verifier for :class:`FastSigner` signatures (simulation only, not secure)."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    expected = hashlib.blake2b(data, key=public_key, digest_size=SIGNATURE_BYTES).digest()
    return hmac.compare_digest(expected, signature)
