"""Membership certificates, revocations, the admission store and NodeCore's gate."""

from __future__ import annotations

import dataclasses
import random

import msgpack
import pytest

from meshnode.core.admission import Admission, AdmissionError
from meshnode.core.config import NodeConfig
from meshnode.core.effects import CloseChannels, MemberChanged, MemberEvent, SendPacket, SendTask
from meshnode.core.node import NodeCore
from protocol import (
    Alive,
    Capability,
    Identity,
    LedgerRecord,
    Ping,
    TaskRequest,
    decode,
    encode,
    signing_bytes,
    verify,
)
from protocol.certificate import (
    CERTIFICATE_DOMAIN,
    MAX_CERTIFICATE_LIFETIME,
    MAX_ROLES,
    Certificate,
    CertificateError,
    issue_certificate,
    issue_revocation,
    open_certificate,
    open_revocation,
    open_sealed_to_me,
    seal_to_node,
)
from protocol.errors import LimitExceeded, LocalProtocolError
from protocol.keyring import Keyring
from protocol.messages import CERTIFICATE_BODY_MAX_BYTES, RejoinRequest, SignedCertificate

AUTHORITY = Identity.from_seed(b"\xaa" * 32)
OTHER_AUTHORITY = Identity.from_seed(b"\xbb" * 32)
NODE = Identity.from_seed(b"\x01" * 32)
PEER = Identity.from_seed(b"\x02" * 32)
OUTSIDER = Identity.from_seed(b"\x03" * 32)
T0 = 1_000_000.0
DAY = 86_400.0


def _cert(
    node: Identity = NODE,
    *,
    authority: Identity = AUTHORITY,
    serial: int = 1,
    issued_at: float = T0,
    expires_at: float = T0 + 30 * DAY,
    roles: tuple[str, ...] = ("member",),
) -> Certificate:
    return issue_certificate(
        authority,
        node.node_id,
        roles=roles,
        name="n",
        serial=serial,
        issued_at=issued_at,
        expires_at=expires_at,
    )


def _raw_body(**changes: object) -> bytes:
    """A certificate body as the authority might sign it, with fields overridden (to make
    bodies the issuing helper refuses to build)."""
    fields: dict[str, object] = {
        "domain": CERTIFICATE_DOMAIN,
        "authority": AUTHORITY.public_key,
        "node": NODE.public_key,
        "name": "n",
        "roles": ["member"],
        "serial": 1,
        "issued_at": T0,
        "expires_at": T0 + DAY,
    }
    fields.update(changes)
    return msgpack.packb(list(fields.values()), use_bin_type=True)  # type: ignore[no-any-return]


def _signed(body: bytes, key: Identity = AUTHORITY) -> SignedCertificate:
    return SignedCertificate(body, key.sign(body))


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


GOOD = _cert().signed

# ---------------------------------------------------------------------------- certificates

CERTIFICATE_CASES: list[tuple[str, SignedCertificate, float, str | None]] = [
    ("valid", GOOD, T0 + DAY, None),
    ("valid within the clock skew of its start", GOOD, T0 - 100, None),
    ("expired", GOOD, T0 + 30 * DAY, "certificate has expired"),
    ("not yet valid", GOOD, T0 - 1_000, "certificate is not valid yet"),
    ("wrong authority", _cert(authority=OTHER_AUTHORITY).signed, T0, "does not verify"),
    ("tampered body", SignedCertificate(_flip(GOOD.body, 40), GOOD.signature), T0, "verify"),
    ("tampered signature", SignedCertificate(GOOD.body, _flip(GOOD.signature, 3)), T0, "verify"),
    (
        "names another authority",
        _signed(_raw_body(authority=OTHER_AUTHORITY.public_key)),
        T0,
        "another authority",
    ),
    (
        "too many roles",
        _signed(_raw_body(roles=[f"r{i}" for i in range(MAX_ROLES + 1)])),
        T0,
        "malformed",
    ),
    ("role too long", _signed(_raw_body(roles=["r" * 65])), T0, "role over"),
    ("role with spaces", _signed(_raw_body(roles=["a b"])), T0, "may hold only"),
    ("repeated roles", _signed(_raw_body(roles=["a", "a"])), T0, "repeat"),
    ("name too long", _signed(_raw_body(name="x" * 65)), T0, "name over"),
    ("node key of the wrong size", _signed(_raw_body(node=b"\x01" * 31)), T0, "32 raw bytes"),
    (
        "lifetime over ten years",
        _signed(_raw_body(expires_at=T0 + MAX_CERTIFICATE_LIFETIME + 1)),
        T0,
        "lifetime",
    ),
    ("expires before issued", _signed(_raw_body(expires_at=T0 - 1)), T0, "before it is issued"),
    ("not finite", _signed(_raw_body(expires_at=float("inf"))), T0, "out of range"),
    ("bool serial", _signed(_raw_body(serial=True)), T0, "serial"),
    ("wrong domain", _signed(_raw_body(domain="meshnode-revocation-v1")), T0, "not a"),
    ("not msgpack", _signed(b"\xc1garbage"), T0, "malformed"),
    ("oversized body", _signed(_raw_body(name="x" * (CERTIFICATE_BODY_MAX_BYTES + 1))), T0, "over"),
]


@pytest.mark.parametrize(
    ("case", "signed", "now", "problem"), CERTIFICATE_CASES, ids=[c[0] for c in CERTIFICATE_CASES]
)
def test_certificate_table(
    case: str, signed: SignedCertificate, now: float, problem: str | None
) -> None:
    refused: str | None = None
    try:
        cert: Certificate | None = open_certificate(signed, AUTHORITY.public_key, verify)
    except CertificateError as exc:
        cert, refused = None, str(exc)
    if cert is None:
        assert problem is not None, f"{case}: refused ({refused})"
        assert problem in (refused or ""), f"{case}: {refused}"
        return
    found = cert.problem_at(now, 300.0)
    if problem is None:
        assert found is None, case
    else:
        assert problem in (found or ""), case
    if problem is None:
        assert cert.node_id == NODE.node_id and cert.roles == {"member"} and cert.serial == 1


def test_the_signature_is_checked_before_the_body_is_parsed() -> None:
    """A forged certificate costs one signature check and is refused for that, whatever
    its body holds; the verifier sees the raw body bytes."""
    seen: list[bytes] = []

    def counting(key: bytes, data: bytes, signature: bytes) -> bool:
        seen.append(data)
        return verify(key, data, signature)

    forged = SignedCertificate(b"\xc1not even msgpack", b"\x00" * 64)
    with pytest.raises(CertificateError, match="does not verify"):
        open_certificate(forged, AUTHORITY.public_key, counting)
    assert seen == [forged.body]


def test_an_oversized_certificate_is_refused_at_the_codec() -> None:
    """The wire cap holds at both ends: it cannot be encoded, and raw bytes carrying one
    are refused with LimitExceeded before any certificate code runs."""
    big = SignedCertificate(b"x" * (CERTIFICATE_BODY_MAX_BYTES + 1), b"\x00" * 64)
    with pytest.raises(LocalProtocolError):
        encode([big], PEER)
    raw = msgpack.packb(
        [1, PEER.public_key, [[28, b"x" * (CERTIFICATE_BODY_MAX_BYTES + 1), b"\x00" * 64]]],
        use_bin_type=True,
    )
    with pytest.raises(LimitExceeded):
        decode(raw + b"\xc4\x40" + PEER.sign(raw))


def test_issuing_refuses_what_the_parser_would_refuse() -> None:
    with pytest.raises(CertificateError):
        _cert(roles=tuple(f"r{i}" for i in range(MAX_ROLES + 1)))
    with pytest.raises(CertificateError):
        _cert(expires_at=T0 + MAX_CERTIFICATE_LIFETIME + 1)
    with pytest.raises(CertificateError):
        issue_revocation(AUTHORITY, revoked_at=T0, keep_until=T0 + 1)


# ---------------------------------------------------------------------------- revocations

REVOCATION_CASES: list[tuple[str, dict[str, object], Certificate, bool]] = [
    ("by serial", {"serial": 1}, _cert(), True),
    ("by serial, another serial", {"serial": 2}, _cert(), False),
    ("by node", {"node_id": NODE.node_id}, _cert(), True),
    ("by node, another node", {"node_id": PEER.node_id}, _cert(), False),
    (
        "by node, certificate issued after it",
        {"node_id": NODE.node_id},
        _cert(issued_at=T0 + 2 * DAY),
        False,
    ),
    ("by serial and node", {"serial": 1, "node_id": NODE.node_id}, _cert(), True),
    ("by serial and node, other serial", {"serial": 2, "node_id": NODE.node_id}, _cert(), False),
]


@pytest.mark.parametrize(
    ("case", "names", "cert", "revoked"), REVOCATION_CASES, ids=[c[0] for c in REVOCATION_CASES]
)
def test_revocation_table(
    case: str, names: dict[str, object], cert: Certificate, revoked: bool
) -> None:
    made = issue_revocation(AUTHORITY, revoked_at=T0 + DAY, keep_until=T0 + 40 * DAY, **names)  # type: ignore[arg-type]
    opened = open_revocation(made.signed, AUTHORITY.public_key, verify)
    assert opened == made
    assert opened.revokes(cert) is revoked, case


def test_a_revocation_of_another_authority_or_tampered_is_refused() -> None:
    foreign = issue_revocation(OTHER_AUTHORITY, serial=1, revoked_at=T0, keep_until=T0 + DAY)
    with pytest.raises(CertificateError, match="does not verify"):
        open_revocation(foreign.signed, AUTHORITY.public_key, verify)
    mine = issue_revocation(AUTHORITY, serial=1, revoked_at=T0, keep_until=T0 + DAY).signed
    tampered = dataclasses.replace(mine, body=_flip(mine.body, len(mine.body) - 2))
    with pytest.raises(CertificateError, match="does not verify"):
        open_revocation(tampered, AUTHORITY.public_key, verify)
    # A certificate's signature cannot pass as a revocation's (different domain).
    as_revocation = dataclasses.replace(mine, body=GOOD.body[:200], signature=GOOD.signature)
    with pytest.raises(CertificateError):
        open_revocation(as_revocation, AUTHORITY.public_key, verify)


# ---------------------------------------------------------------------------- admission store


def _store(
    own: SignedCertificate | None = None,
    *,
    max_certificates: int = 100,
    max_revocations: int = 100,
    members: frozenset[str] = frozenset(),
    now: float = T0,
) -> Admission:
    return Admission(
        AUTHORITY.public_key,
        NODE.node_id,
        GOOD if own is None else own,
        verifier=verify,
        now=now,
        max_certificates=max_certificates,
        max_revocations=max_revocations,
        clock_skew=300.0,
        is_member=lambda n: n in members,
    )


OWN_CASES: list[tuple[str, SignedCertificate | None, str]] = [
    ("missing", None, "no certificate"),
    ("foreign authority", _cert(authority=OTHER_AUTHORITY).signed, "does not verify"),
    ("for another node", _cert(PEER).signed, "not this node"),
    ("expired", _cert(expires_at=T0 - 1, issued_at=T0 - DAY).signed, "expired"),
]


@pytest.mark.parametrize(("case", "own", "problem"), OWN_CASES, ids=[c[0] for c in OWN_CASES])
def test_own_certificate_table(case: str, own: SignedCertificate | None, problem: str) -> None:
    """Every unusable own certificate is refused with a message naming the fix."""
    with pytest.raises(AdmissionError, match=problem) as info:
        Admission(
            AUTHORITY.public_key,
            NODE.node_id,
            own,
            verifier=verify,
            now=T0,
            max_certificates=10,
            max_revocations=10,
        )
    assert f"meshnode authority issue --dir AUTHORITY_DIR --node-id {NODE.node_id}" in str(
        info.value
    )


def test_offer_admits_and_checks_each_certificate_once() -> None:
    store = _store()
    peer = _cert(PEER, serial=2, roles=("member", "translator"))
    assert not store.admits(PEER.node_id, T0)
    assert store.roles_of(PEER.node_id, T0) == frozenset()
    assert store.offer(peer.signed, T0) == peer
    assert store.admits(PEER.node_id, T0)
    assert store.roles_of(PEER.node_id, T0) == {"member", "translator"}
    assert store.offer(peer.signed, T0) is None  # already held: no second check
    assert store.counters["certificates_verified"] == 1
    assert not store.admits(PEER.node_id, T0 + 30 * DAY)  # expired


def test_a_newer_certificate_replaces_an_older_one_and_not_the_reverse() -> None:
    store = _store()
    old = _cert(PEER, serial=2)
    new = _cert(PEER, serial=3, expires_at=T0 + 60 * DAY, roles=("admin",))
    assert store.offer(new.signed, T0) == new
    assert store.offer(old.signed, T0) is None
    assert store.roles_of(PEER.node_id, T0) == {"admin"}


@pytest.mark.parametrize(
    ("case", "cert", "counter"),
    [
        (
            "expired",
            _cert(PEER, issued_at=T0 - 2 * DAY, expires_at=T0 - DAY),
            "certificates_out_of_time",
        ),
        ("not yet valid", _cert(PEER, issued_at=T0 + DAY), "certificates_out_of_time"),
        ("other authority", _cert(PEER, authority=OTHER_AUTHORITY), "certificates_invalid"),
    ],
)
def test_refused_offers_table(case: str, cert: Certificate, counter: str) -> None:
    store = _store()
    assert store.offer(cert.signed, T0) is None, case
    assert store.counters[counter] == 1
    assert not store.admits(PEER.node_id, T0)


def test_a_revocation_drops_the_certificate_and_refuses_it_again() -> None:
    store = _store()
    peer = _cert(PEER, serial=2)
    store.offer(peer.signed, T0)
    revocation = issue_revocation(
        AUTHORITY, node_id=PEER.node_id, revoked_at=T0 + 1, keep_until=peer.expires_at
    )
    fresh, revoked = store.revoke(revocation.signed, T0 + 2)
    assert fresh == revocation and revoked == [PEER.node_id]
    assert not store.admits(PEER.node_id, T0 + 2)
    assert store.offer(peer.signed, T0 + 3) is None
    assert store.counters["certificates_revoked"] == 2
    assert store.revoke(revocation.signed, T0 + 3) == (None, [])  # nothing new
    # The authority re-admits the node with a certificate issued after the revocation.
    again = _cert(PEER, serial=9, issued_at=T0 + 10)
    assert store.offer(again.signed, T0 + 20) == again
    assert store.admits(PEER.node_id, T0 + 20)
    # Kept until the revoked certificate would have expired, then forgotten.
    assert store.revocation_count == 1
    store.prune(peer.expires_at)
    assert store.revocation_count == 0


def test_a_revocation_already_held_is_not_checked_again() -> None:
    """Push-pull carries every revocation in every leg: one already held must cost
    nothing. On the unfixed code: each repeat cost a signature check (3 for 3 offers)."""
    store = _store()
    revocation = issue_revocation(AUTHORITY, serial=5, revoked_at=T0, keep_until=T0 + DAY)
    for _ in range(3):
        store.revoke(revocation.signed, T0)
    assert store.counters["revocations_verified"] == 1
    assert store.revocation_count == 1


def test_prune_drops_expired_certificates_but_not_our_own() -> None:
    store = _store()
    store.offer(_cert(PEER, serial=2, expires_at=T0 + DAY).signed, T0)
    assert store.next_expiry() == T0 + DAY
    assert store.prune(T0 + 40 * DAY) == [PEER.node_id]
    assert store.certificate(NODE.node_id) is not None
    assert store.next_expiry() is None


def test_a_full_store_lets_go_of_expired_then_non_members_then_refuses() -> None:
    """Cap 3 (ours included): an expired certificate goes first, then one of a node that
    is not a member; with every holder a member, a new one is refused."""
    a, b, c, d = (Identity.from_seed(bytes([i]) * 32) for i in (10, 11, 12, 13))
    store = _store(max_certificates=3, members=frozenset({a.node_id, c.node_id}))
    store.offer(_cert(a, serial=2).signed, T0)
    store.offer(_cert(b, serial=3, expires_at=T0 + 10).signed, T0)
    assert store.offer(_cert(c, serial=4).signed, T0 + 20) is not None  # b expired: evicted
    assert store.certificate(b.node_id) is None
    assert store.offer(_cert(d, serial=5).signed, T0 + 20) is None  # a and c are members
    assert store.counters["certificates_refused_full"] == 1
    assert len(store) == 3


def test_a_full_revocation_set_forgets_the_soonest_first() -> None:
    store = _store(max_revocations=2)
    for serial, keep in ((11, T0 + 5 * DAY), (12, T0 + DAY), (13, T0 + 9 * DAY)):
        store.revoke(
            issue_revocation(AUTHORITY, serial=serial, revoked_at=T0, keep_until=keep).signed, T0
        )
    kept = {open_revocation(r, AUTHORITY.public_key, verify).serial for r in store.revocations(T0)}
    assert kept == {11, 13}
    assert store.counters["revocations_evicted"] == 1


# ---------------------------------------------------------------------------- NodeCore gate

CONFIG = NodeConfig.local(authority=AUTHORITY.node_id)
ECHO = Capability(name="echo", description="echo the input")


def _core(
    identity: Identity, port: int, cert: SignedCertificate | None, *, config: NodeConfig = CONFIG
) -> NodeCore:
    return NodeCore(
        config,
        identity,
        host="127.0.0.1",
        port=port,
        rng=random.Random(port),
        now=T0,
        capabilities={"echo": ECHO},
        certificate=cert,
    )


def _alive(identity: Identity, port: int) -> Alive:
    alive = Alive(identity.node_id, 1, "127.0.0.1", port, b"\x00" * 64)
    return dataclasses.replace(alive, signature=identity.sign(signing_bytes(alive)))


def _record(observer: Identity, subject: Identity) -> LedgerRecord:
    record = LedgerRecord(observer.node_id, subject.node_id, 0.9, 1, 1, T0 + DAY, b"\x00" * 64)
    return dataclasses.replace(record, signature=observer.sign(signing_bytes(record)))


@pytest.fixture
def mesh() -> tuple[NodeCore, NodeCore, NodeCore]:
    """``node`` and ``peer`` hold certificates and have exchanged state; ``outsider``
    runs without the authority."""
    node = _core(NODE, 7001, GOOD)
    peer = _core(PEER, 7002, _cert(PEER, serial=2).signed)
    outsider = _core(OUTSIDER, 7003, None, config=NodeConfig.local())
    reply = node.handle_push_pull(PEER.node_id, peer.push_pull_request(True), T0)
    peer.finish_push_pull(NODE.node_id, reply, ("127.0.0.1", 7001), T0)
    for core in (node, peer, outsider):
        core.take_effects()
    return node, peer, outsider


def test_certified_nodes_learn_each_other_through_push_pull(
    mesh: tuple[NodeCore, NodeCore, NodeCore],
) -> None:
    node, peer, _ = mesh
    assert node.membership.member(PEER.node_id) is not None
    assert peer.membership.member(NODE.node_id) is not None
    assert node.roles_of(PEER.node_id) == {"member"}
    assert node.roles_of(OUTSIDER.node_id) == frozenset()
    assert (
        NodeCore(
            NodeConfig.local(), OUTSIDER, host="127.0.0.1", port=9, rng=random.Random(1)
        ).roles_of(PEER.node_id)
        is None
    )


def test_a_newcomer_learns_every_certificate_from_its_seeds_reply(
    mesh: tuple[NodeCore, NodeCore, NodeCore],
) -> None:
    """A newcomer joins through ``node``: the reply carries node's certificate first,
    then the rest of the mesh's; once node's own admits it, the others are checked too,
    and the newcomer takes in the members they certify.

    On the code before the rule: only node's certificate was checked (the budget of a
    sender not yet admitted), so news of every other member was dropped (12 such
    messages in a join of the eighth node of a real mesh, which then took 2-8 s)."""
    node, _, _ = mesh
    newcomer = _core(
        Identity.from_seed(b"\x06" * 32),
        7006,
        _cert(Identity.from_seed(b"\x06" * 32), serial=6).signed,
    )
    reply = node.handle_push_pull(newcomer.node_id, newcomer.push_pull_request(True), T0)
    newcomer.finish_push_pull(NODE.node_id, reply, ("127.0.0.1", 7001), T0)
    assert newcomer.admits(PEER.node_id, T0)
    assert newcomer.admission is not None
    assert newcomer.admission.counters["unadmitted_news"] == 0
    assert newcomer.membership.member(NODE.node_id) is not None
    # PEER was named by node (second-hand): it is being verified, not dropped.
    assert newcomer.membership.unverified_count() == 1


def test_an_outsider_can_neither_join_nor_be_heard(
    mesh: tuple[NodeCore, NodeCore, NodeCore],
) -> None:
    node, _, outsider = mesh
    reply = node.handle_push_pull(OUTSIDER.node_id, outsider.push_pull_request(True), T0)
    assert reply.members == () and reply.manifests == () and reply.certificates == ()
    node.receive(
        OUTSIDER.node_id, [_alive(OUTSIDER, 7003), Ping(5, NODE.node_id)], ("127.0.0.1", 7003), T0
    )
    assert node.membership.member(OUTSIDER.node_id) is None
    assert not any(isinstance(e, SendPacket) for e in node.take_effects())  # no ack
    assert node.admission is not None
    assert node.admission.counters["unadmitted_dropped"] == 2


def test_news_about_or_by_an_outsider_is_dropped(mesh: tuple[NodeCore, NodeCore, NodeCore]) -> None:
    node, _, _ = mesh
    node.receive(
        PEER.node_id,
        [
            _alive(OUTSIDER, 7003),
            _record(PEER, OUTSIDER),
            _record(OUTSIDER, PEER),
            _record(PEER, NODE),
        ],
        ("127.0.0.1", 7002),
        T0,
    )
    assert node.membership.member(OUTSIDER.node_id) is None
    assert node.membership.unverified_count() == 0
    observers = {(r.observer, r.subject) for r in node.ledger.records()}
    assert observers == {(PEER.node_id, NODE.node_id)}
    assert node.admission is not None and node.admission.counters["unadmitted_news"] == 3


def test_news_that_outruns_a_certificate_is_taken_in_when_it_arrives(
    mesh: tuple[NodeCore, NodeCore, NodeCore],
) -> None:
    """In a join, a newcomer's Alive and its certificate spread side by side; the Alive
    that arrives first is held, and applied as soon as the certificate comes.

    On the code before the rule: the Alive was dropped, and the newcomer stayed unknown
    after its certificate arrived (until a push-pull carried it again)."""
    node, _, _ = mesh
    newcomer = Identity.from_seed(b"\x04" * 32)
    node.receive(PEER.node_id, [_alive(newcomer, 7004)], ("127.0.0.1", 7002), T0)
    assert node.membership.member(newcomer.node_id) is None
    assert node.membership.unverified_count() == 0
    assert node.admission is not None
    assert node.admission.counters["news_awaiting_certificate"] == 1
    node.receive(PEER.node_id, [_cert(newcomer, serial=4).signed], ("127.0.0.1", 7002), T0)
    # Heard second-hand: it is now being verified (a ping to its address), then a member.
    assert node.membership.unverified_count() == 1


def test_news_held_for_certificates_is_bounded(
    mesh: tuple[NodeCore, NodeCore, NodeCore],
) -> None:
    """News about more made-up nodes than the cap: the oldest are let go, memory stays
    bounded; news about a revoked node is not held at all."""
    from meshnode.core import node as node_module

    node, _, _ = mesh
    cap = 8
    node_module.MAX_NODES_AWAITING_CERTIFICATE, saved = (
        cap,
        node_module.MAX_NODES_AWAITING_CERTIFICATE,
    )
    try:
        fakes = [Identity.from_seed(bytes([0x40 + i]) * 32) for i in range(cap + 3)]
        for i, fake in enumerate(fakes):
            node.receive(PEER.node_id, [_alive(fake, 8000 + i)], ("127.0.0.1", 7002), T0)
        assert len(node._awaiting_certificate) == cap
        assert fakes[0].node_id not in node._awaiting_certificate
        assert node.admission is not None
        assert node.admission.counters["news_awaiting_dropped"] == 3
    finally:
        node_module.MAX_NODES_AWAITING_CERTIFICATE = saved
    revoked = Identity.from_seed(b"\x05" * 32)
    node.revoke(
        issue_revocation(
            AUTHORITY, node_id=revoked.node_id, revoked_at=T0, keep_until=T0 + DAY
        ).signed,
        T0,
    )
    node.receive(PEER.node_id, [_alive(revoked, 7005)], ("127.0.0.1", 7002), T0)
    assert revoked.node_id not in node._awaiting_certificate


def test_an_outsider_cannot_run_tasks(mesh: tuple[NodeCore, NodeCore, NodeCore]) -> None:
    node, _, _ = mesh
    request = TaskRequest("t-1", "echo", {"x": 1}, 5_000, None, "tr")
    node.task_message(OUTSIDER.node_id, request, T0)
    assert node.take_effects() == []
    node.task_message(PEER.node_id, dataclasses.replace(request, task_id="t-2"), T0)
    assert any(isinstance(e, SendTask) and e.node == PEER.node_id for e in node.take_effects())


def test_an_unknown_sender_costs_at_most_one_certificate_check(
    mesh: tuple[NodeCore, NodeCore, NodeCore],
) -> None:
    """Eight forged certificates in one packet from an unknown sender: one is checked, the
    packet is dropped."""
    node, _, _ = mesh
    assert node.admission is not None
    before = node.admission.counters["certificates_verified"]
    forged = [SignedCertificate(GOOD.body + bytes([i]), GOOD.signature) for i in range(8)]
    node.receive(OUTSIDER.node_id, [*forged, Ping(1, NODE.node_id)], ("127.0.0.1", 7003), T0)
    assert node.admission.counters["certificates_verified"] - before == 1
    assert node.membership.member(OUTSIDER.node_id) is None


def test_a_certificate_in_the_same_packet_admits_its_sender(
    mesh: tuple[NodeCore, NodeCore, NodeCore],
) -> None:
    node, _, _ = mesh
    third = Identity.from_seed(b"\x04" * 32)
    cert = _cert(third, serial=4).signed
    node.receive(third.node_id, [cert, _alive(third, 7004)], ("127.0.0.1", 7004), T0)
    assert node.membership.member(third.node_id) is not None
    assert cert in node.push_pull_request(False).certificates  # passed on with the state


def test_a_revoked_member_is_expelled_and_cut_off(
    mesh: tuple[NodeCore, NodeCore, NodeCore],
) -> None:
    node, peer, _ = mesh
    revocation = issue_revocation(AUTHORITY, serial=2, revoked_at=T0, keep_until=T0 + 30 * DAY)
    assert node.revoke(revocation.signed, T0 + 1)
    effects = node.take_effects()
    assert CloseChannels(PEER.node_id, "certificate revoked") in effects
    assert any(
        isinstance(e, MemberChanged) and e.kind is MemberEvent.LEFT and e.node_id == PEER.node_id
        for e in effects
    )
    assert node.membership.member(PEER.node_id) is None
    reply = node.handle_push_pull(PEER.node_id, peer.push_pull_request(False), T0 + 2)
    assert reply.members == ()
    assert node.membership.member(PEER.node_id) is None
    # The revocation travels in push-pull state, so a node that was away learns it.
    assert revocation.signed in node.push_pull_request(False).revocations
    assert not node.revoke(revocation.signed, T0 + 3)  # not news twice


# ---------------------------------------------------------------------------- rejoin

SKEW = 60.0


def _rejoin(
    cert: SignedCertificate = GOOD, *, at: float = T0 + 10, nonce: bytes = b"\x01" * 16
) -> RejoinRequest:
    return RejoinRequest(cert, at, nonce)


REJOIN_CASES: list[tuple[str, str, RejoinRequest, str | None]] = [
    ("valid", NODE.node_id, _rejoin(), None),
    ("timestamp too old", NODE.node_id, _rejoin(at=T0 + 10 - SKEW - 1), "clock skew"),
    ("timestamp ahead", NODE.node_id, _rejoin(at=T0 + 10 + SKEW + 1), "clock skew"),
    ("someone else's certificate", OUTSIDER.node_id, _rejoin(), "not the sender's"),
    (
        "certificate of another authority",
        NODE.node_id,
        _rejoin(_cert(authority=OTHER_AUTHORITY).signed),
        "does not verify",
    ),
    (
        "expired certificate",
        PEER.node_id,
        _rejoin(_cert(PEER, serial=2, issued_at=T0 - 9 * DAY, expires_at=T0 + 5).signed),
        "expired",
    ),
    ("revoked certificate", PEER.node_id, _rejoin(_cert(PEER, serial=3).signed), "revoked"),
]


@pytest.mark.parametrize(
    ("case", "sender", "request_", "problem"), REJOIN_CASES, ids=[c[0] for c in REJOIN_CASES]
)
def test_rejoin_table(case: str, sender: str, request_: RejoinRequest, problem: str | None) -> None:
    store = _store()
    store.revoke(
        issue_revocation(AUTHORITY, serial=3, revoked_at=T0, keep_until=T0 + 30 * DAY).signed, T0
    )
    found = store.rejoin_problem(sender, request_, T0 + 10, SKEW)
    if problem is None:
        assert found is None, case
    else:
        assert found is not None and problem in found, (case, found)


def test_a_replayed_rejoin_request_is_refused_until_its_window_passed() -> None:
    store = _store()
    request = _rejoin(at=T0 + 10)
    assert store.rejoin_problem(NODE.node_id, request, T0 + 10, SKEW) is None
    assert store.rejoin_problem(NODE.node_id, request, T0 + 11, SKEW) == "replayed request"
    fresh = _rejoin(at=T0 + 11, nonce=b"\x02" * 16)
    assert store.rejoin_problem(NODE.node_id, fresh, T0 + 11, SKEW) is None
    assert store.counters["rejoins_answered"] == 2 and store.counters["rejoins_refused"] == 1


def test_a_core_without_authority_refuses_every_rejoin() -> None:
    core = NodeCore(NodeConfig.local(), NODE, host="127.0.0.1", port=9, rng=random.Random(1))
    assert (
        core.rejoin_problem(NODE.node_id, _rejoin(), T0)
        == "this node runs without a mesh authority"
    )


def test_a_keyring_sealed_to_a_node_opens_only_with_its_key() -> None:
    ring = Keyring.new("prod")
    sealed = seal_to_node(NODE.node_id, ring.encode())
    assert Keyring.decode(open_sealed_to_me(NODE.to_seed(), sealed)) == ring
    with pytest.raises(CertificateError):
        open_sealed_to_me(PEER.to_seed(), sealed)
    with pytest.raises(CertificateError):
        open_sealed_to_me(NODE.to_seed(), _flip(sealed, 40))


def test_a_member_whose_certificate_expires_is_expelled_at_the_next_tick() -> None:
    node = _core(NODE, 7001, GOOD)
    third = Identity.from_seed(b"\x05" * 32)
    short = _cert(third, serial=6, expires_at=T0 + 100).signed
    node.receive(third.node_id, [short, _alive(third, 7005)], ("127.0.0.1", 7005), T0)
    assert node.membership.member(third.node_id) is not None
    node.tick(T0 + 50)
    assert node.membership.member(third.node_id) is not None
    node.take_effects()
    node.tick(T0 + 101)
    assert node.membership.member(third.node_id) is None
    assert CloseChannels(third.node_id, "certificate expired") in node.take_effects()


def test_the_next_expiry_follows_replacements_and_prunes() -> None:
    store = _store()
    store.offer(_cert(PEER, serial=2, expires_at=T0 + 10).signed, T0)
    assert store.next_expiry() == T0 + 10
    store.offer(_cert(PEER, serial=3, expires_at=T0 + 20).signed, T0)  # renewed
    assert store.next_expiry() == T0 + 20
    assert store.prune(T0 + 20) == [PEER.node_id]
    assert store.next_expiry() is None


def test_own_problem_names_a_revoked_or_expired_own_certificate() -> None:
    """The node's own certificate is good until the authority revokes it (by node id or
    by serial) or it expires; each is named, so the node's health can say so."""
    store = _store()
    assert store.own_problem(T0) is None
    assert store.own_problem(store.own.expires_at) == "this node's certificate has expired"
    by_serial = issue_revocation(
        AUTHORITY, serial=store.own.serial, revoked_at=T0 + 1, keep_until=store.own.expires_at
    )
    store.revoke(by_serial.signed, T0 + 2)
    assert store.own_problem(T0 + 2) == "this node's certificate is revoked by the mesh authority"
    other = _store()
    by_node = issue_revocation(
        AUTHORITY, node_id=NODE.node_id, revoked_at=T0 + 1, keep_until=other.own.expires_at
    )
    other.revoke(by_node.signed, T0 + 2)
    assert other.own_problem(T0 + 2) == "this node's certificate is revoked by the mesh authority"
