"""Signed HTTP requests between nodes (meshnode/core/request_auth.py): the header form,
freshness, the signature over the request, the bounded replay cache."""

from __future__ import annotations

import random

import pytest

from meshnode.core.config import NodeConfig
from meshnode.core.request_auth import (
    FRESHNESS_S,
    HEADER_NODE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    ReplayCache,
    RequestSignatureError,
    check_signed,
    freshness_problem,
    parse_headers,
    sign_request,
    signer_admitted,
    verify_request,
)
from protocol.identity import Identity

NOW = 1_800_000_000.0
BODY = b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{}}'
CALLEE = Identity.generate().node_id


def signed(identity: Identity, *, body: bytes = BODY, now: float = NOW) -> dict[str, str]:
    return sign_request(
        identity, identity.node_id, CALLEE, "POST", "/a2a", body, now, random.Random(7)
    )


def test_a_signature_covers_method_audience_path_body_and_signer() -> None:
    """Invariant: the signature verifies over the request as signed, and over nothing
    that differs from it in method, the node it is for, path, body or claimed signer."""
    me, other = Identity.generate(), Identity.generate()
    headers = signed(me)
    request = parse_headers(headers)
    assert request is not None and request.node_id == me.node_id
    assert verify_request(request, CALLEE, "POST", "/a2a", BODY)
    assert verify_request(request, CALLEE, "post", "/a2a", BODY)  # the method case-folded
    cases = [
        (CALLEE, "GET", "/a2a", BODY),
        (other.node_id, "POST", "/a2a", BODY),  # replayed at another node
        (CALLEE, "POST", "/a2a?x=1", BODY),
        (CALLEE, "POST", "/a2a", BODY + b" "),
        (CALLEE, "POST", "/a2a", BODY.replace(b"SendMessage", b"CancelTask ")),
    ]
    for audience, method, path, body in cases:
        assert not verify_request(request, audience, method, path, body), (method, path)
    claimed = parse_headers({**headers, HEADER_NODE: other.node_id})
    assert claimed is not None and not verify_request(claimed, CALLEE, "POST", "/a2a", BODY)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({HEADER_SIGNATURE: None}, "needs every header"),
        ({HEADER_NODE: "x" * 52}, "not a node id"),
        ({HEADER_NODE: "a" * 600}, "not a node id"),
        ({HEADER_TIMESTAMP: "-5"}, "digits"),
        ({HEADER_TIMESTAMP: "1" * 40}, "digits"),
        ({HEADER_TIMESTAMP: "1e9"}, "digits"),
        ({HEADER_NONCE: "ABCDEF" + "0" * 26}, "hex"),
        ({HEADER_NONCE: "0" * 31}, "hex"),
        ({HEADER_SIGNATURE: "A" * 85}, "base64url"),
        ({HEADER_SIGNATURE: "+" * 86}, "base64url"),
    ],
)
def test_malformed_headers_are_refused_before_decoding(
    change: dict[str, str | None], problem: str
) -> None:
    """Invariant: a partial or malformed set of signature headers is an error naming the
    header, never a crash nor a request treated as unsigned."""
    headers: dict[str, str | None] = {**signed(Identity.generate()), **change}
    present = {k: v for k, v in headers.items() if v is not None}
    with pytest.raises(RequestSignatureError, match=problem):
        parse_headers(present)


def test_no_signature_headers_is_an_unsigned_request() -> None:
    assert parse_headers({"Authorization": "Bearer x"}) is None


@pytest.mark.parametrize(
    ("age_s", "fresh"),
    [
        (0.0, True),
        (FRESHNESS_S, True),
        (-FRESHNESS_S, True),
        (FRESHNESS_S + 1, False),
        (-(FRESHNESS_S + 1), False),
        (3_600.0, False),
    ],
)
def test_freshness_window(age_s: float, fresh: bool) -> None:
    """Invariant: a timestamp more than ``FRESHNESS_S`` from the clock, either way, is
    refused with a reason."""
    problem = freshness_problem(int(NOW - age_s), NOW)
    assert (problem is None) is fresh, problem


def test_replay_cache_refuses_a_reused_nonce_and_never_forgets_early() -> None:
    """Invariant: a (signer, nonce) pair passes once within twice the window; when the
    cache is full of live pairs a new one is refused (not an old one evicted, which
    would reopen it to replay); expired pairs make room."""
    cache = ReplayCache(capacity=2, window=10.0)
    assert cache.check("a", "n1", NOW) is None
    assert "replayed" in str(cache.check("a", "n1", NOW + 1))
    assert cache.check("b", "n1", NOW + 1) is None  # another signer's nonce
    assert "too many" in str(cache.check("a", "n2", NOW + 2))
    assert "replayed" in str(cache.check("a", "n1", NOW + 19))  # still remembered
    assert cache.check("a", "n2", NOW + 21) is None  # both expired by NOW + 21
    assert len(cache) == 1


def test_check_signed_refuses_a_tampered_body_then_a_replay() -> None:
    """Invariant: the full check (signature, then nonce) accepts the request once and
    refuses a copy, and a changed body never reaches the nonce cache."""
    me = Identity.generate()
    request = parse_headers(signed(me))
    assert request is not None
    cache = ReplayCache()
    tampered = check_signed(request, CALLEE, "POST", "/a2a", BODY + b"x", NOW, cache)
    assert tampered is not None and "does not verify" in tampered
    assert len(cache) == 0
    assert check_signed(request, CALLEE, "POST", "/a2a", BODY, NOW, cache) is None
    again = check_signed(request, CALLEE, "POST", "/a2a", BODY, NOW + 1, cache)
    assert again is not None and "replayed" in again


def test_who_is_an_admitted_signer() -> None:
    """Invariant (``signer_admitted``): under a mesh authority, a node holding a valid
    certificate is admitted until its certificate is revoked or expires, and a node
    without one never is; without an authority, a current member is admitted only when
    the mesh is sealed (keyring, sealed input required); a stranger never is, and neither
    is the callee's own id arriving over HTTP."""
    from protocol.certificate import issue_revocation
    from tests.unit.test_admission import (
        AUTHORITY,
        DAY,
        GOOD,
        NODE,
        OUTSIDER,
        PEER,
        T0,
        _cert,
        _core,
    )

    node = _core(NODE, 7001, GOOD)
    peer_cert = _cert(PEER, serial=2)
    peer = _core(PEER, 7002, peer_cert.signed)
    reply = node.handle_push_pull(PEER.node_id, peer.push_pull_request(True), T0)
    peer.finish_push_pull(NODE.node_id, reply, ("127.0.0.1", 7001), T0)
    stranger = Identity.generate().node_id
    table = [
        (PEER.node_id, T0, True),
        (OUTSIDER.node_id, T0, False),
        (stranger, T0, False),
        (NODE.node_id, T0, False),
        (PEER.node_id, peer_cert.expires_at + 1, False),  # expired
    ]
    for who, when, admitted in table:
        for sealed in (False, True):  # the authority decides, sealed or not
            assert signer_admitted(node, who, when, sealed=sealed) is admitted, (who, when)
    revocation = issue_revocation(
        AUTHORITY, node_id=PEER.node_id, revoked_at=T0 + 1, keep_until=T0 + 40 * DAY
    )
    assert node.revoke(revocation.signed, T0 + 2)
    assert not signer_admitted(node, PEER.node_id, T0 + 2, sealed=True)

    plain = NodeConfig.local()
    a = _core(NODE, 7011, None, config=plain)
    b = _core(PEER, 7012, None, config=plain)
    reply = a.handle_push_pull(PEER.node_id, b.push_pull_request(True), T0)
    b.finish_push_pull(NODE.node_id, reply, ("127.0.0.1", 7011), T0)
    assert a.membership.member(PEER.node_id) is not None
    assert signer_admitted(a, PEER.node_id, T0, sealed=True)
    assert not signer_admitted(a, PEER.node_id, T0, sealed=False)  # open: anyone may join
    assert not signer_admitted(a, stranger, T0, sealed=True)
