"""Ed25519 JWS over RFC 8785 canonical JSON: our signer against the a2a-sdk's verifier,
tampering, and the canonical form itself."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict

from protocol import Identity
from protocol.jws import (
    MAX_CANONICAL_DEPTH,
    CanonicalizationError,
    b64url_decode,
    b64url_encode,
    canonicalize,
    drop_empty,
    jwk_for_node,
    sign_card,
    verify_card,
)

jwt = pytest.importorskip("jwt")
signing = pytest.importorskip("a2a.utils.signing")
a2a_pb2 = pytest.importorskip("a2a.types.a2a_pb2")

CARD: dict[str, Any] = {
    "name": "n1",
    "description": "a card with non-ASCII text: café ☕ and an emoji 🚀",
    "supportedInterfaces": [
        {"url": "http://127.0.0.1:1/a2a", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
    ],
    "version": "3",
    "capabilities": {"streaming": True, "pushNotifications": False},
    "defaultInputModes": ["application/json"],
    "defaultOutputModes": ["application/json"],
    "skills": [{"id": "echo", "name": "echo", "description": "echo", "tags": ["t"]}],
    "securitySchemes": {"bearer": {"httpAuthSecurityScheme": {"scheme": "Bearer"}}},
    "securityRequirements": [{"schemes": {"bearer": {"list": []}}}],
}


def sdk_verify(card: dict[str, Any]) -> None:
    """The a2a-sdk's own verifier, with the key derived from the ``kid`` (node id)."""
    verifier = signing.create_signature_verifier(
        lambda kid, jku: jwt.PyJWK(jwk_for_node(kid)), ["EdDSA"]
    )
    verifier(ParseDict(card, a2a_pb2.AgentCard(), ignore_unknown_fields=True))


def test_the_sdk_verifier_accepts_our_signature() -> None:
    identity = Identity.generate()
    signed = sign_card(CARD, identity)
    sdk_verify(signed)  # raises if not accepted
    assert verify_card(signed) == identity.node_id
    header = json.loads(b64url_decode(signed["signatures"][0]["protected"]))
    assert header == {"alg": "EdDSA", "kid": identity.node_id, "typ": "JOSE"}


@pytest.mark.parametrize(
    ("what", "tamper"),
    [
        ("description", lambda c: c.update(description="evil")),
        ("skill added", lambda c: c["skills"].append({"id": "x", "name": "x", "description": "x"})),
        ("url", lambda c: c["supportedInterfaces"][0].update(url="http://evil/a2a")),
        ("version", lambda c: c.update(version="4")),
    ],
)
def test_a_tampered_card_fails_both_verifiers(what: str, tamper: Any) -> None:
    signed = sign_card(CARD, Identity.generate())
    bad = copy.deepcopy(signed)
    tamper(bad)
    assert verify_card(bad) is None, what
    with pytest.raises(signing.SignatureVerificationError):
        sdk_verify(bad)


def test_a_signature_by_another_key_under_our_kid_fails() -> None:
    ours, theirs = Identity.generate(), Identity.generate()
    forged = sign_card(CARD, theirs)
    forged["signatures"][0]["protected"] = sign_card(CARD, ours)["signatures"][0]["protected"]
    assert verify_card(forged) is None
    assert verify_card(sign_card(CARD, theirs), expected_kid=ours.node_id) is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"b": 1, "a": [True, False, None]}, '{"a":[true,false,null],"b":1}'),
        ({"é": 1, "z": 2, "\u20ac": 3}, '{"z":2,"é":1,"€":3}'),
        ('line\nquote"back\\ctl\u0001', '"line\\nquote\\"back\\\\ctl\\u0001"'),
        (1.5e-7, "1.5e-7"),
        (1e21, "1e+21"),
        (123456789012.0, "123456789012"),
        (0.000001, "0.000001"),
        (-0.0, "0"),
        (333333333.33333329, "333333333.3333333"),
        ([1, 2.5, "x"], '[1,2.5,"x"]'),
    ],
)
def test_canonical_form(value: Any, text: str) -> None:
    assert canonicalize(value) == text


def test_canonical_form_sorts_by_utf16_code_units() -> None:
    # U+1F600 (surrogates D83D DE00) sorts before U+FB01 in UTF-16, after it in code points.
    assert canonicalize({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), "\ud800", {1: "x"}, b"bytes", {"a": object()}],
)
def test_values_without_canonical_form_are_refused(bad: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize(bad)


def test_depth_is_bounded() -> None:
    deep: Any = "x"
    for _ in range(MAX_CANONICAL_DEPTH + 2):
        deep = [deep]
    with pytest.raises(CanonicalizationError):
        canonicalize(deep)
    with pytest.raises(CanonicalizationError):
        drop_empty(deep)


def test_drop_empty_keeps_false_and_zero() -> None:
    assert drop_empty({"a": "", "b": [], "c": {"d": {}}, "e": False, "f": 0, "g": ["", "x"]}) == {
        "e": False,
        "f": 0,
        "g": ["x"],
    }


def test_b64url_round_trip_and_refusals() -> None:
    for data in (b"", b"\x00", b"\xff\xfe\xfd", bytes(range(64))):
        assert b64url_decode(b64url_encode(data)) == data
    for bad in ("a=", "!!!!", "a"):
        with pytest.raises(ValueError):
            b64url_decode(bad)
