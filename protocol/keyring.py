"""The mesh keyring: symmetric keys that seal every byte one member sends another.

Theory of operation
-------------------
A :class:`Keyring` is an ordered tuple of 32-byte keys (the first is the *primary*) and a
cluster *label*. :meth:`Keyring.seal` encrypts under the primary with XChaCha20-Poly1305
(IETF AEAD, PyNaCl), a fresh random 24-byte nonce per call, and the label as associated
data, so two meshes that share a key but not a label cannot read each other. Sealed
bytes are laid out as::

    SEAL_MAGIC (0xc1) || SEAL_VERSION (1) || nonce (24) || ciphertext || tag (16)

``0xc1`` is the one byte msgpack never uses, and every plaintext frame of meshnode is a
msgpack array, so a receiver that still accepts plaintext (during an upgrade) tells the
two apart from the first byte alone. The associated data is the magic, the version and
the label, so neither can be altered without the tag failing.

:meth:`Keyring.open` checks the length and the two header bytes, then tries each installed
key, primary first: at most :data:`MAX_KEYS` AEAD attempts, each a single pass over the
bytes, and nothing is decoded before one succeeds. Junk therefore costs a receiver a
bounded amount of work. Any failure raises :class:`~protocol.errors.SealRejected` (a
:class:`~protocol.errors.KeyringError` and a
:class:`~protocol.errors.RemoteProtocolError`), so a shell that drops every remote
protocol error drops it too.

Rotation without downtime (as Serf's ``keys``): *install* a new key everywhere (every
member still seals with the old primary but can open the new key), *use* it (members
start sealing with it; the others can already open it), then *remove* the old one. The
pure functions :func:`install_key`, :func:`use_key` and :func:`remove_key` carry the
rules: install is idempotent and capped at :data:`MAX_KEYS`; use of a key not installed
is refused; removing the primary is refused; removing an absent key changes nothing.

A keyring travels as bytes (:meth:`Keyring.encode` / :meth:`Keyring.decode`, a small
fixed binary layout, for sealing it to a node that missed a rotation) and as text
(:meth:`Keyring.to_text` / :meth:`Keyring.from_text`, JSON with base64 keys, the key
file). This module does no file I/O; the runtime's store reads and writes the file.

Nonces come from the operating system's CSPRNG by default (``nacl.utils.random``); a
nonce source can be injected for tests. Randomness here is a cryptographic requirement,
so it is never taken from a seeded ``random.Random``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable

import nacl.bindings
import nacl.exceptions
import nacl.utils

from protocol.errors import KeyringError, SealRejected
from protocol.limits import SEAL_OVERHEAD_BYTES

KEY_BYTES = 32
"""Length of one keyring key (XChaCha20-Poly1305 key size)."""

NONCE_BYTES = 24
"""Length of the random nonce of each sealed message (XChaCha20: safe to draw at random
for any number of messages under one key)."""

TAG_BYTES = 16
"""Length of the Poly1305 authentication tag."""

SEAL_MAGIC = 0xC1
"""First byte of every sealed message: the one byte value msgpack never emits, so sealed
and plaintext frames are told apart from their first byte."""

SEAL_VERSION = 1
"""Second byte of every sealed message. Version 1: XChaCha20-Poly1305 IETF, 24-byte
random nonce, associated data = magic || version || label (UTF-8)."""

SEAL_HEADER_BYTES = 2 + NONCE_BYTES
"""Bytes before the ciphertext: magic, version and nonce."""

SEAL_OVERHEAD = SEAL_HEADER_BYTES + TAG_BYTES
"""Bytes a seal adds to a message (42): every size limit on sealed traffic adds this
(``protocol.limits.SEAL_OVERHEAD_BYTES`` is the same figure)."""
assert SEAL_OVERHEAD == SEAL_OVERHEAD_BYTES

MAX_KEYS = 8
"""Most keys a keyring may hold. Opening a message costs at most one AEAD attempt per
installed key, so this caps what a junk datagram costs a receiver (8 attempts over at
most one datagram). A rotation needs two keys at once; 8 leaves room for overlapping
rotations by hand."""

MAX_LABEL_BYTES = 128
"""Longest cluster label (UTF-8 bytes). It is associated data on every message, so it is
short by design."""

FINGERPRINT_CHARS = 16
"""Hex characters of a key fingerprint (the first 8 bytes of SHA-256 of the key): enough
to tell keys apart in a list, useless for recovering the key."""

ENCODING_VERSION = 1
"""First byte of :meth:`Keyring.encode`'s layout."""

MAX_ENCODED_BYTES = 3 + MAX_LABEL_BYTES + MAX_KEYS * KEY_BYTES
"""Largest valid :meth:`Keyring.encode` output (bytes)."""

MAX_TEXT_BYTES = 64 * 1024
"""Largest key file text accepted by :meth:`Keyring.from_text` (bytes)."""

NonceSource = Callable[[int], bytes]
"""``nonce_source(n) -> n random bytes``."""


def _aad(label: bytes) -> bytes:
    return bytes((SEAL_MAGIC, SEAL_VERSION)) + label


def fingerprint(key: bytes) -> str:
    """A short, stable, non-secret name for ``key`` (hex, :data:`FINGERPRINT_CHARS`)."""
    return hashlib.sha256(bytes(key)).hexdigest()[:FINGERPRINT_CHARS]


def generate_key() -> bytes:
    """A fresh random key from the operating system's CSPRNG."""
    return nacl.utils.random(KEY_BYTES)


def format_key(key: bytes) -> str:
    """The text form of a key: standard base64 (44 characters), as Serf writes keys."""
    return base64.b64encode(_check_key(key)).decode("ascii")


def parse_key(text: str | bytes) -> bytes:
    """Read a key from its base64 text form; :class:`KeyringError` if it is not exactly
    :data:`KEY_BYTES` bytes of valid base64."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise KeyringError("a key must be base64 text") from None
    if not isinstance(text, str) or len(text) > 4 * KEY_BYTES:
        raise KeyringError("a key must be base64 text of 32 bytes")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError("a key must be valid base64") from None
    return _check_key(raw)


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise KeyringError(f"a key must be exactly {KEY_BYTES} bytes")
    return bytes(key)


def _check_label(label: object) -> str:
    if not isinstance(label, str):
        raise KeyringError("the label must be a string")
    try:
        size = len(label.encode("utf-8"))
    except UnicodeEncodeError:
        raise KeyringError("the label must be valid UTF-8 text") from None
    if size > MAX_LABEL_BYTES:
        raise KeyringError(f"the label is {size} bytes, over the {MAX_LABEL_BYTES}-byte cap")
    return label


@dataclasses.dataclass(frozen=True, slots=True)
class Keyring:
    """An ordered, immutable set of keys (first = primary) and the cluster label.

    Construction validates: 1 to :data:`MAX_KEYS` distinct 32-byte keys, a label of at
    most :data:`MAX_LABEL_BYTES` UTF-8 bytes. Operations return a new keyring."""

    keys: tuple[bytes, ...]
    label: str = ""
    nonce_source: NonceSource = dataclasses.field(
        default=nacl.utils.random, compare=False, repr=False
    )
    _aad: bytes = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        keys = tuple(_check_key(k) for k in self.keys)
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        if len(keys) > MAX_KEYS:
            raise KeyringError(f"a keyring holds at most {MAX_KEYS} keys, not {len(keys)}")
        if len(set(keys)) != len(keys):
            raise KeyringError("a keyring may not hold the same key twice")
        label = _check_label(self.label)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "_aad", _aad(label.encode("utf-8")))

    @classmethod
    def new(cls, label: str = "") -> Keyring:
        """A keyring holding one fresh random key."""
        return cls((generate_key(),), label)

    @property
    def primary(self) -> bytes:
        """The key every message is sealed with."""
        return self.keys[0]

    def fingerprints(self) -> list[str]:
        """The fingerprint of every key, primary first."""
        return [fingerprint(k) for k in self.keys]

    def __contains__(self, key: object) -> bool:
        return key in self.keys

    def __repr__(self) -> str:
        return f"Keyring(label={self.label!r}, keys={self.fingerprints()!r})"

    # sealing ----------------------------------------------------------------------------

    def seal(self, plaintext: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` under the primary key."""
        nonce = self.nonce_source(NONCE_BYTES)
        if len(nonce) != NONCE_BYTES:
            raise KeyringError(f"the nonce source gave {len(nonce)} bytes, not {NONCE_BYTES}")
        body = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            bytes(plaintext), self._aad, nonce, self.keys[0]
        )
        return self._aad[:2] + nonce + body

    def open(self, sealed: bytes) -> bytes:
        """Authenticate and decrypt ``sealed``, trying each key (primary first).

        Raises :class:`SealRejected` when the bytes are too short, carry the wrong magic
        or version, or open under no installed key with this label (at most
        ``len(self.keys)`` AEAD attempts)."""
        return self.open_with_index(sealed)[0]

    def open_with_index(self, sealed: bytes) -> tuple[bytes, int]:
        """As :meth:`open`, also returning the index of the key that opened it (0 when
        the sender uses our primary)."""
        if len(sealed) < SEAL_OVERHEAD:
            raise SealRejected(f"sealed message of {len(sealed)} bytes is too short")
        if sealed[0] != SEAL_MAGIC:
            raise SealRejected("not a sealed message (first byte)")
        if sealed[1] != SEAL_VERSION:
            raise SealRejected(f"unsupported seal version {sealed[1]}")
        nonce = bytes(sealed[2:SEAL_HEADER_BYTES])
        body = bytes(sealed[SEAL_HEADER_BYTES:])
        for index, key in enumerate(self.keys):
            try:
                plain = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    body, self._aad, nonce, key
                )
            except nacl.exceptions.CryptoError:
                continue
            return plain, index
        raise SealRejected("no installed key opens the message (wrong key or label)")

    # key operations ---------------------------------------------------------------------

    def install(self, key: bytes) -> Keyring:
        """See :func:`install_key`."""
        return install_key(self, key)

    def use(self, key: bytes) -> Keyring:
        """See :func:`use_key`."""
        return use_key(self, key)

    def remove(self, key: bytes) -> Keyring:
        """See :func:`remove_key`."""
        return remove_key(self, key)

    def _with_keys(self, keys: Iterable[bytes]) -> Keyring:
        return Keyring(tuple(keys), self.label, self.nonce_source)

    # encodings --------------------------------------------------------------------------

    def encode(self) -> bytes:
        """A compact binary form: ``ENCODING_VERSION || label length (1) || label ||
        key count (1) || keys``. Secret: seal it before it leaves the node."""
        label = self.label.encode("utf-8")
        return (
            bytes((ENCODING_VERSION, len(label)))
            + label
            + bytes((len(self.keys),))
            + b"".join(self.keys)
        )

    @classmethod
    def decode(cls, data: bytes) -> Keyring:
        """Read :meth:`encode`'s form back; :class:`KeyringError` on any deviation (size
        checked before anything is read, no trailing bytes)."""
        if not isinstance(data, bytes | bytearray):
            raise KeyringError("an encoded keyring is bytes")
        data = bytes(data)
        if len(data) > MAX_ENCODED_BYTES:
            raise KeyringError(f"an encoded keyring is at most {MAX_ENCODED_BYTES} bytes")
        if len(data) < 3 or data[0] != ENCODING_VERSION:
            raise KeyringError("not an encoded keyring (version)")
        label_len = data[1]
        if label_len > MAX_LABEL_BYTES or len(data) < 3 + label_len:
            raise KeyringError("encoded keyring label length is wrong")
        try:
            label = data[2 : 2 + label_len].decode("utf-8")
        except UnicodeDecodeError:
            raise KeyringError("encoded keyring label is not UTF-8") from None
        count = data[2 + label_len]
        start = 3 + label_len
        if count < 1 or count > MAX_KEYS or len(data) != start + count * KEY_BYTES:
            raise KeyringError("encoded keyring key count does not match its length")
        keys = tuple(
            data[start + i * KEY_BYTES : start + (i + 1) * KEY_BYTES] for i in range(count)
        )
        return cls(keys, label)

    def to_text(self) -> str:
        """The key file form: JSON ``{"version": 1, "label": ..., "keys": [base64, ...]}``,
        primary first."""
        doc = {
            "version": ENCODING_VERSION,
            "label": self.label,
            "keys": [format_key(k) for k in self.keys],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str | bytes) -> Keyring:
        """Read :meth:`to_text`'s form back; :class:`KeyringError` naming what is wrong."""
        if len(text) > MAX_TEXT_BYTES:
            raise KeyringError(f"keyring text is over {MAX_TEXT_BYTES} bytes")
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise KeyringError(f"keyring is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise KeyringError("keyring must be a JSON object")
        if doc.get("version", ENCODING_VERSION) != ENCODING_VERSION:
            raise KeyringError(f"unsupported keyring version {doc.get('version')!r}")
        keys = doc.get("keys")
        if not isinstance(keys, list) or not keys:
            raise KeyringError('keyring needs a non-empty "keys" list')
        if len(keys) > MAX_KEYS:
            raise KeyringError(f"a keyring holds at most {MAX_KEYS} keys, not {len(keys)}")
        if not all(isinstance(k, str) for k in keys):
            raise KeyringError("every key must be a base64 string")
        return cls(tuple(parse_key(k) for k in keys), _check_label(doc.get("label", "")))


# ------------------------------------------------------------------------ key operations


def install_key(ring: Keyring, key: bytes) -> Keyring:
    """Add ``key`` as a secondary key (opened, not yet sealed with). Idempotent: a key
    already installed leaves the ring unchanged. Refused at :data:`MAX_KEYS`."""
    key = _check_key(key)
    if key in ring.keys:
        return ring
    if len(ring.keys) >= MAX_KEYS:
        raise KeyringError(f"the keyring is full ({MAX_KEYS} keys): remove a key first")
    return ring._with_keys((*ring.keys, key))


def use_key(ring: Keyring, key: bytes) -> Keyring:
    """Make the installed ``key`` the primary (the old primary stays installed).
    Refused for a key not installed; using the primary again changes nothing."""
    key = _check_key(key)
    if key not in ring.keys:
        raise KeyringError(f"key {fingerprint(key)} is not installed: install it first")
    if ring.keys[0] == key:
        return ring
    return ring._with_keys((key, *(k for k in ring.keys if k != key)))


def remove_key(ring: Keyring, key: bytes) -> Keyring:
    """Remove a secondary key. Refused for the primary (use another key first);
    removing a key not installed changes nothing."""
    key = _check_key(key)
    if ring.keys[0] == key:
        raise KeyringError(
            f"key {fingerprint(key)} is the primary: use another key before removing it"
        )
    if key not in ring.keys:
        return ring
    return ring._with_keys(k for k in ring.keys if k != key)


def is_sealed(data: bytes) -> bool:
    """Whether ``data`` looks sealed (its first byte is :data:`SEAL_MAGIC`). Plaintext
    meshnode frames are msgpack and never start with it."""
    return len(data) > 0 and data[0] == SEAL_MAGIC
