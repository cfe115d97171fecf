"""The keyring's rules: sealing, opening, rotation and encodings (protocol/keyring.py).

Invariants: a sealed message opens under the same keys and label and under nothing else;
a changed byte anywhere (header, nonce, ciphertext, tag) or a truncation is refused with
:class:`SealRejected`; opening tries each installed key once, primary first; install is
idempotent and capped; use needs an installed key; the primary cannot be removed; the
binary and text encodings round-trip and refuse anything else.
"""

from __future__ import annotations

import itertools

import pytest

from protocol.errors import KeyringError, MeshError, RemoteProtocolError, SealRejected
from protocol.keyring import (
    FINGERPRINT_CHARS,
    KEY_BYTES,
    MAX_KEYS,
    MAX_LABEL_BYTES,
    SEAL_MAGIC,
    SEAL_OVERHEAD,
    Keyring,
    fingerprint,
    format_key,
    generate_key,
    install_key,
    is_sealed,
    parse_key,
    remove_key,
    use_key,
)
from protocol.limits import SEAL_OVERHEAD_BYTES

K1, K2, K3 = (bytes([i]) * KEY_BYTES for i in (1, 2, 3))


def test_seal_round_trip_and_overhead() -> None:
    ring = Keyring((K1,), "prod")
    for size in (0, 1, 1400, 70_000):
        plain = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        sealed = ring.seal(plain)
        assert len(sealed) == len(plain) + SEAL_OVERHEAD == len(plain) + SEAL_OVERHEAD_BYTES
        assert sealed[0] == SEAL_MAGIC and is_sealed(sealed)
        assert ring.open(sealed) == plain


def test_nonces_differ_between_seals() -> None:
    ring = Keyring((K1,))
    assert ring.seal(b"same") != ring.seal(b"same")


@pytest.mark.parametrize(
    ("sender", "receiver", "opens"),
    [
        (Keyring((K1,), "a"), Keyring((K1,), "a"), True),
        (Keyring((K1,), "a"), Keyring((K1,), "b"), False),  # same key, other label
        (Keyring((K1,), ""), Keyring((K1,), "a"), False),
        (Keyring((K1,), "a"), Keyring((K2,), "a"), False),  # wrong key
        (Keyring((K2,), "a"), Keyring((K1, K2), "a"), True),  # a secondary key opens
        (Keyring((K1, K2), "a"), Keyring((K2,), "a"), False),  # sealed under primary K1
        (Keyring((K3,), "a"), Keyring((K1, K2), "a"), False),
    ],
)
def test_open_by_key_and_label(sender: Keyring, receiver: Keyring, opens: bool) -> None:
    sealed = sender.seal(b"payload")
    if opens:
        assert receiver.open(sealed) == b"payload"
    else:
        with pytest.raises(SealRejected):
            receiver.open(sealed)


def test_open_reports_which_key_opened() -> None:
    ring = Keyring((K1, K2, K3))
    assert ring.open_with_index(Keyring((K3,)).seal(b"x")) == (b"x", 2)
    assert ring.open_with_index(Keyring((K1,)).seal(b"x")) == (b"x", 0)


def test_every_tampered_byte_and_truncation_is_refused() -> None:
    ring = Keyring((K1,), "lab")
    sealed = ring.seal(b"attack at dawn")
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(SealRejected):
            ring.open(bytes(tampered))
    for cut in range(len(sealed)):
        with pytest.raises(SealRejected):
            ring.open(sealed[:cut])
    with pytest.raises(SealRejected):
        ring.open(sealed + b"\x00")


@pytest.mark.parametrize(
    "junk", [b"", b"\xc1", b"\x93\x01\xc4" + b"\x00" * 100, bytes([SEAL_MAGIC, 2]) + b"\0" * 60]
)
def test_junk_and_plaintext_are_refused(junk: bytes) -> None:
    with pytest.raises(SealRejected):
        Keyring((K1,)).open(junk)


def test_open_costs_one_attempt_per_key() -> None:
    """A message no key opens costs exactly one AEAD attempt per installed key."""
    import nacl.bindings

    calls = 0
    real = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt

    def counting(*args: object) -> bytes:
        nonlocal calls
        calls += 1
        return real(*args)  # type: ignore[arg-type]

    ring = Keyring(tuple(bytes([i]) * KEY_BYTES for i in range(1, MAX_KEYS + 1)))
    sealed = Keyring((b"\xee" * KEY_BYTES,)).seal(b"x" * 1000)
    nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt = counting  # type: ignore[assignment]
    try:
        with pytest.raises(SealRejected):
            ring.open(sealed)
    finally:
        nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt = real
    assert calls == MAX_KEYS


def test_errors_sit_under_the_roots() -> None:
    assert issubclass(SealRejected, RemoteProtocolError)
    assert issubclass(SealRejected, KeyringError)
    assert issubclass(KeyringError, MeshError)


@pytest.mark.parametrize(
    ("keys", "label"),
    [
        ((), ""),
        ((b"short",), ""),
        ((K1, K1), ""),
        (tuple(bytes([i]) * KEY_BYTES for i in range(MAX_KEYS + 1)), ""),
        ((K1,), "x" * (MAX_LABEL_BYTES + 1)),
        ((K1,), 5),
    ],
)
def test_invalid_keyrings_are_refused(keys: tuple[bytes, ...], label: object) -> None:
    with pytest.raises(KeyringError):
        Keyring(keys, label)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- operations

OPS = {"install": install_key, "use": use_key, "remove": remove_key}


@pytest.mark.parametrize(
    ("start", "op", "key", "result"),
    [
        ((K1,), "install", K2, (K1, K2)),
        ((K1, K2), "install", K2, (K1, K2)),  # idempotent
        ((K1, K2), "install", K1, (K1, K2)),
        ((K1, K2), "use", K2, (K2, K1)),
        ((K2, K1), "use", K2, (K2, K1)),  # idempotent
        ((K1, K2, K3), "use", K3, (K3, K1, K2)),
        ((K1,), "use", K2, KeyringError),  # not installed
        ((K1, K2), "remove", K2, (K1,)),
        ((K1,), "remove", K2, (K1,)),  # idempotent
        ((K1, K2), "remove", K1, KeyringError),  # the primary
        ((K1,), "remove", K1, KeyringError),
        (
            tuple(bytes([i]) * KEY_BYTES for i in range(1, MAX_KEYS + 1)),
            "install",
            b"\xff" * 32,
            KeyringError,
        ),  # full
        ((K1,), "install", b"short", KeyringError),
    ],
)
def test_key_operations(start: tuple[bytes, ...], op: str, key: bytes, result: object) -> None:
    ring = Keyring(start, "lab")
    if result is KeyringError:
        with pytest.raises(KeyringError):
            OPS[op](ring, key)
        return
    after = OPS[op](ring, key)
    assert after.keys == result
    assert after.label == "lab"
    assert ring.keys == start  # the original is unchanged


def test_rotation_keeps_every_member_able_to_read() -> None:
    """Install, use, remove, with members at every step of the rotation: any two members
    at adjacent steps read each other."""
    steps = [Keyring((K1,))]
    steps.append(steps[-1].install(K2))
    steps.append(steps[-1].use(K2))
    steps.append(steps[-1].remove(K1))
    for a, b in itertools.pairwise(steps):
        assert b.open(a.seal(b"m")) == b"m"
        assert a.open(b.seal(b"m")) == b"m"


# ----------------------------------------------------------------------------- encodings


def test_binary_and_text_round_trip() -> None:
    ring = Keyring((K1, K2, K3), "prod-é")
    assert Keyring.decode(ring.encode()) == ring
    assert Keyring.from_text(ring.to_text()) == ring
    assert Keyring.from_text(ring.to_text().encode()) == ring


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x00\x01" + K1,  # version
        b"\x01\x00\x01" + K1[:-1],  # short key
        b"\x01\x00\x01" + K1 + b"\x00",  # trailing byte
        b"\x01\x00\x00",  # no key
        b"\x01\x00\x02" + K1,  # count says two
        b"\x01\x05ab",  # label runs off the end
        b"\x01\x02\xff\xfe\x01" + K1,  # label not UTF-8
        b"\x01\x00" + bytes([MAX_KEYS + 1]) + K1 * (MAX_KEYS + 1),
    ],
)
def test_binary_decode_refuses(data: bytes) -> None:
    with pytest.raises(KeyringError):
        Keyring.decode(data)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"keys": []}',
        '{"keys": [5]}',
        '{"keys": ["not base64!"]}',
        '{"keys": ["' + format_key(K1)[:-4] + '"]}',
        '{"keys": ["' + format_key(K1) + '"], "version": 9}',
        '{"keys": ["' + format_key(K1) + '"], "label": 3}',
        '{"keys": ["' + format_key(K1) + '", "' + format_key(K1) + '"]}',
        " " * 70_000,
    ],
)
def test_text_decode_refuses(text: str) -> None:
    with pytest.raises(KeyringError):
        Keyring.from_text(text)


def test_key_text_form_and_fingerprints() -> None:
    key = generate_key()
    assert len(key) == KEY_BYTES
    assert parse_key(format_key(key)) == key
    assert len(fingerprint(key)) == FINGERPRINT_CHARS
    assert fingerprint(K1) != fingerprint(K2)
    assert Keyring((K1, K2)).fingerprints() == [fingerprint(K1), fingerprint(K2)]
    assert fingerprint(K1) in repr(Keyring((K1,)))
    assert format_key(K1) not in repr(Keyring((K1,)))
    for bad in ("", "abc", format_key(K1) + "AAAA", "é" * 44, b"\xff"):
        with pytest.raises(KeyringError):
            parse_key(bad)
