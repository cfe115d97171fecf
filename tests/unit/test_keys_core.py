"""Keyring decisions of meshnode/core/keys.py: the inbound/outbound rule, a receiver's
handling of a cluster-wide key operation, the replay log, the fan-out targets and the
summary the operator sees.

Invariants: plaintext is accepted only with no keyring or with ``encrypt_incoming`` off;
sealed input with no keyring is refused; an operation from a non-member, out of the
window or replayed changes nothing; the keyring's own rules decide the rest; a summary
counts every member asked exactly once (acked, refused or unreachable).
"""

from __future__ import annotations

import pytest

from meshnode.core.keys import (
    MAX_REMEMBERED_OPS,
    Action,
    Inbound,
    KeyOpLog,
    handle_key_op,
    inbound_rule,
    is_member,
    key_op_targets,
    seal_outgoing,
    summarize,
)
from meshnode.core.member import Member, MemberState
from protocol import Alive
from protocol.keyring import KEY_BYTES, Keyring, fingerprint
from protocol.messages import KeyOp, KeyOpReply

K1, K2, K3 = (bytes([i]) * KEY_BYTES for i in (1, 2, 3))
NOW = 1_000_000.0
WINDOW = 120.0


@pytest.mark.parametrize(
    ("sealed", "have", "require", "expected"),
    [
        (True, True, True, Inbound.OPEN),
        (True, True, False, Inbound.OPEN),
        (True, False, True, Inbound.REFUSE_SEALED),
        (True, False, False, Inbound.REFUSE_SEALED),
        (False, True, True, Inbound.REFUSE_PLAIN),
        (False, True, False, Inbound.PLAIN),  # mid-upgrade
        (False, False, True, Inbound.PLAIN),  # no keyring: switches do not apply
        (False, False, False, Inbound.PLAIN),
    ],
)
def test_inbound_rule(sealed: bool, have: bool, require: bool, expected: Inbound) -> None:
    assert inbound_rule(sealed=sealed, have_keyring=have, require_sealed=require) is expected


@pytest.mark.parametrize(
    ("have", "outgoing", "expected"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_seal_outgoing(have: bool, outgoing: bool, expected: bool) -> None:
    assert seal_outgoing(have_keyring=have, encrypt_outgoing=outgoing) is expected


def op(action: Action, key: bytes = b"", *, n: int = 1, at: float = NOW) -> KeyOp:
    return KeyOp(bytes([n]) * 16, int(action), key, at)


@pytest.mark.parametrize(
    ("start", "operation", "member", "after", "ok", "error"),
    [
        ((K1,), op(Action.INSTALL, K2), True, (K1, K2), True, ""),
        ((K1, K2), op(Action.INSTALL, K2), True, None, True, ""),  # idempotent
        ((K1, K2), op(Action.USE, K2), True, (K2, K1), True, ""),
        ((K1,), op(Action.USE, K2), True, None, False, "not installed"),
        ((K1, K2), op(Action.REMOVE, K1), True, None, False, "primary"),
        ((K1, K2), op(Action.REMOVE, K2), True, (K1,), True, ""),
        ((K1,), op(Action.REMOVE, K3), True, None, True, ""),  # absent: nothing to do
        ((K1,), op(Action.LIST), True, None, True, ""),
        ((K1,), op(Action.INSTALL, K2), False, None, False, "not a member"),
        ((K1,), op(Action.INSTALL, b"short"), True, None, False, "32 bytes"),
        ((K1,), op(Action.INSTALL, K2, at=NOW - WINDOW - 1), True, None, False, "older"),
        ((K1,), op(Action.INSTALL, K2, at=NOW + WINDOW + 1), True, None, False, "future"),
    ],
)
def test_handle_key_op(
    start: tuple[bytes, ...],
    operation: KeyOp,
    member: bool,
    after: tuple[bytes, ...] | None,
    ok: bool,
    error: str,
) -> None:
    ring = Keyring(start, "lab")
    new, reply = handle_key_op(
        ring, operation, sender_is_member=member, log=KeyOpLog(WINDOW), now=NOW
    )
    assert (new.keys if new is not None else None) == after
    assert reply.ok is ok
    assert error in reply.error
    held = new if new is not None else ring
    assert reply.fingerprints == tuple(held.fingerprints())
    assert reply.op_id == operation.op_id
    if new is not None:
        assert new.label == "lab"


def test_a_replayed_operation_is_refused() -> None:
    """Installing K2, removing it, then replaying the install: the replay changes
    nothing (its id was seen)."""
    log = KeyOpLog(WINDOW)
    ring = Keyring((K1,))
    install = op(Action.INSTALL, K2, n=1)
    ring2, _ = handle_key_op(ring, install, sender_is_member=True, log=log, now=NOW)
    assert ring2 is not None
    ring3, _ = handle_key_op(
        ring2, op(Action.REMOVE, K2, n=2), sender_is_member=True, log=log, now=NOW + 1
    )
    assert ring3 is not None and ring3.keys == (K1,)
    again, reply = handle_key_op(ring3, install, sender_is_member=True, log=log, now=NOW + 2)
    assert again is None
    assert "replay" in reply.error


def test_list_is_not_remembered_and_the_log_is_bounded() -> None:
    log = KeyOpLog(WINDOW, capacity=3)
    for n in range(10):
        assert log.refusal(bytes([n]) * 16, NOW, NOW) is None
    assert len(log) == 3
    assert MAX_REMEMBERED_OPS >= 1_000
    # Entries older than twice the window are forgotten as time passes.
    assert log.refusal(b"\xaa" * 16, NOW + 10 * WINDOW, NOW + 10 * WINDOW) is None
    assert len(log) == 1
    ring = Keyring((K1,))
    listing = op(Action.LIST, n=7)
    for _ in range(3):
        _, reply = handle_key_op(ring, listing, sender_is_member=True, log=log, now=NOW)
        assert reply.ok


def _member(node: str, state: MemberState) -> Member:
    alive = Alive(node, 1, "10.0.0.1", 7946, bytes(64))
    return Member(node, "10.0.0.1", 7946, 1, state, 0.0, alive, alive)


def test_targets_and_membership() -> None:
    members = [
        _member("c" * 52, MemberState.ALIVE),
        _member("a" * 52, MemberState.SUSPECT),
        _member("b" * 52, MemberState.DEAD),
        _member("d" * 52, MemberState.LEFT),
        _member("e" * 52, MemberState.ALIVE),
    ]
    assert [n for n, _ in key_op_targets(members, "e" * 52)] == ["a" * 52, "c" * 52]
    assert is_member(members[0]) and is_member(members[1])
    assert not is_member(members[2]) and not is_member(members[3]) and not is_member(None)


def test_summary_counts_every_member_once() -> None:
    f1, f2 = fingerprint(K1), fingerprint(K2)
    answers: dict[str, KeyOpReply | None] = {
        "n1": KeyOpReply(b"\x01" * 16, True, "", (f2, f1)),
        "n2": KeyOpReply(b"\x01" * 16, True, "", (f2, f1)),
        "n3": KeyOpReply(b"\x01" * 16, False, "key is the primary", (f1, f2)),
        "n4": None,
    }
    s = summarize(Action.USE, K2, answers)
    assert (s.members, s.acked, s.failed, s.unreachable) == (
        4,
        2,
        {"n3": "key is the primary"},
        ["n4"],
    )
    assert s.key_counts == {f1: 3, f2: 3}
    assert s.primary_counts == {f2: 2, f1: 1}
    out = s.to_json()
    assert out["action"] == "use" and out["key"] == f2
    assert {k["fingerprint"]: (k["members"], k["primary_of"]) for k in out["keys"]} == {
        f1: (3, 1),
        f2: (3, 2),
    }
    assert summarize(Action.LIST, b"", {}).to_json()["key"] == ""


@pytest.mark.parametrize(
    "overrides",
    [
        {"keyring_file": ""},
        {"keyring_file": 5},
        {"encrypt_outgoing": "yes"},
        {"encrypt_incoming": 1},
        {"key_op_window": 0.0},
        {"key_op_timeout": -1.0},
        {"keyring_file": "ring.json", "max_packet_bytes": 65_507},
    ],
)
def test_keyring_config_is_validated(overrides: dict[str, object]) -> None:
    from meshnode import ConfigError, NodeConfig

    with pytest.raises(ConfigError):
        NodeConfig(**overrides)  # type: ignore[arg-type]


def test_keyring_config_defaults() -> None:
    from meshnode import NodeConfig

    cfg = NodeConfig(keyring_file="ring.json", max_packet_bytes=65_507 - 42)
    assert (cfg.encrypt_outgoing, cfg.encrypt_incoming) == (True, True)
    assert NodeConfig().keyring_file is None
