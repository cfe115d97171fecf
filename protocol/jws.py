"""Ed25519 JSON Web Signatures over RFC 8785 canonical JSON (A2A agent-card signatures).

Theory of operation
-------------------
An A2A agent card carries ``signatures``: each a JWS in flattened form, ``{"protected":
b64url(header JSON), "signature": b64url(sig)}``, whose payload is left out because it is
the card itself. Signer and verifier agree on the payload bytes by canonicalizing the card:

1. drop ``signatures``;
2. drop every empty value (``""``, ``[]``, ``{}``), recursively, until none is left (an
   A2A card read through its protobuf schema loses empty fields, so a verifier that
   re-serializes the card sees them gone; both sides therefore sign without them);
3. serialize by RFC 8785 (JSON Canonicalization Scheme): object members sorted by the
   UTF-16 code units of their names, no whitespace, strings escaped minimally (``"``,
   ``\\``, and control characters as ``\\b \\f \\n \\r \\t`` or ``\\u00xx``), numbers
   in their shortest round-trip form (ECMAScript ``Number.prototype.toString``).

The JWS signing input is ``b64url(protected) "." b64url(payload)`` (RFC 7515 §5.1), and
the signature is Ed25519 over it (``alg: EdDSA``, RFC 8037). The header names the signing
node in ``kid`` (its node id), from which the verifier derives the public key: a card can
only be signed by the node it claims to describe.

Limits: nesting deeper than :data:`MAX_CANONICAL_DEPTH`, a non-finite number, a lone
surrogate in a string, or a value that is not JSON raise :class:`CanonicalizationError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from protocol.identity import (
    Signer,
    is_node_id,
    public_key_from_node_id,
)
from protocol.identity import (
    verify as ed25519_verify,
)

__all__ = [
    "JWS_ALGORITHM",
    "MAX_CANONICAL_DEPTH",
    "MAX_PROTECTED_HEADER_BYTES",
    "CanonicalizationError",
    "b64url_decode",
    "b64url_encode",
    "canonical_card_payload",
    "canonicalize",
    "drop_empty",
    "jwk_for_node",
    "sign_card",
    "verify_card",
]

JWS_ALGORITHM = "EdDSA"
"""The JWS ``alg`` of an Ed25519 signature (RFC 8037)."""
MAX_CANONICAL_DEPTH = 64
"""Deepest nesting of arrays and objects canonicalized (a card is about 5 deep)."""
MAX_PROTECTED_HEADER_BYTES = 1_024
"""Largest protected header a verifier decodes (ours is about 120 bytes)."""

Verifier = Callable[[bytes, bytes, bytes], bool]
_B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD = str.maketrans("-_", "+/")


class CanonicalizationError(ValueError):
    """The value has no RFC 8785 canonical form (or is nested too deep)."""


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The bytes of unpadded base64url ``text``; ``ValueError`` if it is not that."""
    if not isinstance(text, str) or len(text) % 4 == 1 or text.strip(_B64URL_ALPHABET):
        raise ValueError("not unpadded base64url")
    try:
        return base64.b64decode(
            text.translate(_TO_STANDARD) + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        raise ValueError("not unpadded base64url") from None


def drop_empty(value: Any, depth: int = 0) -> Any:
    """``value`` without empty strings, lists and objects, recursively (None if nothing is
    left of it). Booleans, numbers and ``null`` members are kept."""
    if depth > MAX_CANONICAL_DEPTH:
        raise CanonicalizationError(f"nested deeper than {MAX_CANONICAL_DEPTH}")
    if isinstance(value, Mapping):
        kept = {}
        for key, item in value.items():
            cleaned = drop_empty(item, depth + 1)
            if cleaned is not None:
                kept[key] = cleaned
        return kept or None
    if isinstance(value, list | tuple):
        items = [c for c in (drop_empty(v, depth + 1) for v in value) if c is not None]
        return items or None
    if isinstance(value, str) and not value:
        return None
    return value


def _number(value: int | float) -> str:
    """ECMAScript ``Number.prototype.toString`` of ``value`` (RFC 8785 §3.2.2.3)."""
    if isinstance(value, int):
        if abs(value) >= 2**53:
            value = float(value)  # ECMAScript numbers are doubles
        else:
            return str(value)
    if not math.isfinite(value):
        raise CanonicalizationError("non-finite numbers have no JSON form")
    if value == 0:
        return "0"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    mantissa, _, exponent = repr(abs(value)).lower().partition("e")
    whole, _, frac = mantissa.partition(".")
    raw = whole + frac
    point = len(whole) + (int(exponent) if exponent else 0)
    significant = raw.lstrip("0")
    point -= len(raw) - len(significant)
    significant = significant.rstrip("0")
    k, n = len(significant), point
    sign = "-" if value < 0 else ""
    if k <= n <= 21:
        return sign + significant + "0" * (n - k)
    if 0 < n <= 21:
        return sign + significant[:n] + "." + significant[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + significant
    e = n - 1
    head = significant[0] + ("." + significant[1:] if k > 1 else "")
    return f"{sign}{head}e{'+' if e >= 0 else '-'}{abs(e)}"


def _string(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalizationError("a string holds a lone surrogate") from None
    return json.dumps(value, ensure_ascii=False)


def canonicalize(value: Any) -> str:
    """The RFC 8785 canonical JSON text of ``value`` (dicts, lists, strings, numbers,
    booleans, None), computed without recursion limits beyond :data:`MAX_CANONICAL_DEPTH`."""
    out: list[str] = []
    _emit(value, out, 0)
    return "".join(out)


def _emit(value: Any, out: list[str], depth: int) -> None:
    if depth > MAX_CANONICAL_DEPTH:
        raise CanonicalizationError(f"nested deeper than {MAX_CANONICAL_DEPTH}")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int | float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise CanonicalizationError("object member names must be strings")
        keys = sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))
        out.append("{")
        for i, key in enumerate(keys):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _emit(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _emit(item, out, depth + 1)
        out.append("]")
    else:
        raise CanonicalizationError(f"{type(value).__name__} is not a JSON value")


def canonical_card_payload(card: Mapping[str, Any]) -> bytes:
    """The bytes a card signature covers: the card without ``signatures`` and without
    empty values, in RFC 8785 canonical form, UTF-8."""
    body = {k: v for k, v in card.items() if k != "signatures"}
    return canonicalize(drop_empty(body) or {}).encode("utf-8")


def _signing_input(protected_b64: str, payload: bytes) -> bytes:
    return f"{protected_b64}.{b64url_encode(payload)}".encode("ascii")


def sign_card(card: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """A copy of ``card`` with one Ed25519 JWS signature by ``signer`` (``kid`` = its node
    id), replacing any signatures it had."""
    header = {"alg": JWS_ALGORITHM, "kid": signer.node_id, "typ": "JOSE"}
    protected = b64url_encode(
        json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    )
    signature = signer.sign(_signing_input(protected, canonical_card_payload(card)))
    signed = {k: v for k, v in card.items() if k != "signatures"}
    signed["signatures"] = [{"protected": protected, "signature": b64url_encode(signature)}]
    return signed


def verify_card(
    card: Mapping[str, Any],
    *,
    expected_kid: str | None = None,
    verifier: Verifier = ed25519_verify,
) -> str | None:
    """The node id (``kid``) of the first valid EdDSA signature on ``card``, or None when
    none verifies. With ``expected_kid``, only signatures by that node count."""
    signatures = card.get("signatures")
    if not isinstance(signatures, list):
        return None
    try:
        payload = canonical_card_payload(card)
    except CanonicalizationError:
        return None
    for entry in signatures:
        kid = _check_signature(entry, payload, expected_kid, verifier)
        if kid is not None:
            return kid
    return None


def _check_signature(
    entry: object, payload: bytes, expected_kid: str | None, verifier: Verifier
) -> str | None:
    if not isinstance(entry, Mapping):
        return None
    protected, signature = entry.get("protected"), entry.get("signature")
    if not isinstance(protected, str) or not isinstance(signature, str):
        return None
    if len(protected) > MAX_PROTECTED_HEADER_BYTES * 4 // 3 + 4:
        return None
    try:
        header = json.loads(b64url_decode(protected))
        sig = b64url_decode(signature)
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("alg") != JWS_ALGORITHM:
        return None
    kid = header.get("kid")
    if not is_node_id(kid) or (expected_kid is not None and kid != expected_kid):
        return None
    assert isinstance(kid, str)
    key = public_key_from_node_id(kid)
    return kid if verifier(key, _signing_input(protected, payload), sig) else None


def jwk_for_node(node_id: str) -> dict[str, str]:
    """The public JWK (RFC 8037 OKP, Ed25519) of ``node_id``, for JOSE libraries."""
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url_encode(public_key_from_node_id(node_id)),
        "kid": node_id,
    }
