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

This module is pure: an identity goes to and from its 32-byte seed (:meth:`Identity.to_seed`,
:meth:`Identity.from_seed`); reading and writing key files is the runtime's job
(``meshnode.runtime.store``: mode 0600, written atomically, never through a symlink).

The sans-I/O cores never import PyNaCl directly: they take a :class:`Signer` (anything with
``node_id``, ``public_key`` and ``sign``) and a :data:`Verifier` callable, so the simulator can
substitute :class:`FastSigner` / :func:`fast_verify` (documented there) for speed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import Protocol

import nacl.exceptions
import nacl.signing

from protocol.errors import LocalProtocolError

PUBLIC_KEY_BYTES = 32
"""Length of an Ed25519 public key, and so of a node id on the wire."""
SIGNATURE_BYTES = 64
"""Length of an Ed25519 signature."""
SEED_BYTES = 32
"""Length of an Ed25519 private seed (what a key file holds)."""
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
        """The identity of a 32-byte seed (a key file's content, or a fixed seed in tests
        and simulations)."""
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
            raise LocalProtocolError("an Ed25519 seed is 32 bytes")
        return cls(nacl.signing.SigningKey(bytes(seed)))

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        """The 64-byte detached signature of ``data``."""
        return self._signing_key.sign(data).signature

    def to_seed(self) -> bytes:
        """The 32-byte private seed, for the key file (:meth:`from_seed` reads it back).
        Secret: whoever holds it is this node."""
        return bytes(self._signing_key)

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
