"""Keyring decisions: what to do with sealed and plaintext input, and cluster-wide key
operations (install, use, remove, list) through any node.

Theory of operation
-------------------
Input from peers (a datagram, an HTTP body, a task frame) is classified by
:func:`inbound_rule` before anything is decoded: sealed input is opened with the
keyring; plaintext input is accepted only when there is no keyring or
``NodeConfig.encrypt_incoming`` is off (the middle step of upgrading a running plaintext
mesh); sealed input reaching a node with no keyring is refused. Output is sealed when
there is a keyring and ``encrypt_outgoing`` is on (:func:`seal_outgoing`).

A key operation is asked of one node by an operator (its HTTP route: loopback or the API
token). That node applies it to itself, then sends a :class:`~protocol.messages.KeyOp`
to every other alive or suspect member at once (at most :data:`KEY_OP_FANOUT` in
flight), each in a signed envelope sealed under its primary key, and counts the answers
(:func:`summarize`). A receiver (:func:`handle_key_op`) refuses an operation that is not
from a current member, is outside ``NodeConfig.key_op_window`` of its clock, or whose id
it has already seen (:class:`KeyOpLog`, a replay); otherwise it applies the operation
with the keyring's own rules (install idempotent and capped, use of an unknown key
refused, removing the primary refused; see :mod:`protocol.keyring`) and answers with the
fingerprints it then holds. Applying the same operation twice changes nothing, so an
operator simply repeats one whose summary shows unreachable members.

Only a member can issue an operation: the exchange must open under a key already in the
receiver's ring and be signed by a node the receiver's membership holds alive or suspect.
This module decides; the runtime only carries the bytes and persists the keyring.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshnode.core.member import Member, MemberState
from protocol.errors import KeyringError
from protocol.keyring import KEY_BYTES, Keyring, fingerprint, install_key, remove_key, use_key
from protocol.messages import KeyOp, KeyOpReply

KEY_OP_FANOUT = 64
"""Most members asked at once during one key operation: bounds the sockets and memory a
fan-out takes while keeping a 10,000-member mesh to about 160 rounds of ``key_op_timeout``
at worst (a round trip each when members answer)."""

MAX_REMEMBERED_OPS = 4_096
"""Operation ids a node remembers to refuse replays (16 bytes and a time each). An
operator issues a handful per rotation; when full, the oldest is forgotten (its
``issued_at`` is then outside the window soon anyway)."""

MAX_CONCURRENT_KEY_OPS = 1
"""Operations one node fans out at once; a second request while one runs gets HTTP 409
(two rotations racing through two nodes are the operator's to order, not ours)."""


class Action(enum.IntEnum):
    """What a :class:`~protocol.messages.KeyOp` asks (its ``action`` field)."""

    LIST = 0
    INSTALL = 1
    USE = 2
    REMOVE = 3


class Inbound(enum.Enum):
    """What to do with input from a peer, decided before it is decoded."""

    OPEN = "open"
    """Sealed: open it with the keyring, then decode the plaintext."""
    PLAIN = "plain"
    """Plaintext, and plaintext is accepted here: decode it as it is."""
    REFUSE_PLAIN = "plaintext_refused"
    """Plaintext while sealed input is required: drop it and count it."""
    REFUSE_SEALED = "sealed_without_keyring"
    """Sealed, but this node has no keyring: drop it and count it."""


def inbound_rule(*, sealed: bool, have_keyring: bool, require_sealed: bool) -> Inbound:
    """The rule for one piece of peer input (see the module docstring)."""
    if sealed:
        return Inbound.OPEN if have_keyring else Inbound.REFUSE_SEALED
    if have_keyring and require_sealed:
        return Inbound.REFUSE_PLAIN
    return Inbound.PLAIN


def seal_outgoing(*, have_keyring: bool, encrypt_outgoing: bool) -> bool:
    """Whether output is sealed."""
    return have_keyring and encrypt_outgoing


def apply_action(ring: Keyring, action: Action, key: bytes) -> Keyring:
    """``ring`` after ``action`` with ``key`` (list returns it unchanged). Raises
    :class:`~protocol.errors.KeyringError` when the keyring's rules refuse it."""
    if action is Action.LIST:
        return ring
    if len(key) != KEY_BYTES:
        raise KeyringError(f"a key must be exactly {KEY_BYTES} bytes")
    if action is Action.INSTALL:
        return install_key(ring, key)
    if action is Action.USE:
        return use_key(ring, key)
    return remove_key(ring, key)


MEMBER_STATES = frozenset({MemberState.ALIVE, MemberState.SUSPECT})
"""States in which a node counts as a member for key operations: it may issue one, and
is asked when one is fanned out (a suspect may well be alive; dead and left are not)."""


def is_member(member: Member | None) -> bool:
    """Whether ``member`` (our membership's entry for a sender) may issue key operations."""
    return member is not None and member.state in MEMBER_STATES


def key_op_targets(members: list[Member], self_id: str) -> list[tuple[str, tuple[str, int]]]:
    """Who is asked when this node fans an operation out: every other member in
    :data:`MEMBER_STATES`, by node id, with its address."""
    return [
        (m.node_id, (m.host, m.port))
        for m in sorted(members, key=lambda m: m.node_id)
        if m.node_id != self_id and m.state in MEMBER_STATES
    ]


@dataclass
class KeyOpLog:
    """Operation ids seen within the window, to refuse replays (bounded by
    :data:`MAX_REMEMBERED_OPS`, oldest forgotten first)."""

    window: float
    capacity: int = MAX_REMEMBERED_OPS
    _seen: dict[bytes, float] = field(default_factory=dict)

    def refusal(self, op_id: bytes, issued_at: float, now: float) -> str | None:
        """Why an operation must be refused (stale, from the future, replayed), or None
        after remembering it as seen."""
        if issued_at < now - self.window:
            return "operation is older than the key operation window"
        if issued_at > now + self.window:
            return "operation is dated in the future beyond the key operation window"
        for old, seen_at in list(self._seen.items()):  # oldest first (insertion order)
            if seen_at >= now - 2 * self.window:
                break
            del self._seen[old]
        if op_id in self._seen:
            return "operation already applied (replay)"
        while len(self._seen) >= self.capacity:
            del self._seen[next(iter(self._seen))]
        self._seen[op_id] = now
        return None

    def __len__(self) -> int:
        return len(self._seen)


def handle_key_op(
    ring: Keyring,
    op: KeyOp,
    *,
    sender_is_member: bool,
    log: KeyOpLog,
    now: float,
) -> tuple[Keyring | None, KeyOpReply]:
    """A receiver's decision on ``op``: the new keyring (None when unchanged) and the
    reply to send."""

    def reply(error: str, held: Keyring) -> KeyOpReply:
        return KeyOpReply(op.op_id, not error, error, tuple(held.fingerprints()))

    if not sender_is_member:
        return None, reply("the sender is not a member", ring)
    try:
        action = Action(op.action)
    except ValueError:
        return None, reply(f"unknown key action {op.action}", ring)
    if action is not Action.LIST:
        why = log.refusal(op.op_id, op.issued_at, now)
        if why is not None:
            return None, reply(why, ring)
    try:
        after = apply_action(ring, action, op.key)
    except KeyringError as exc:
        return None, reply(str(exc), ring)
    return (None if after == ring else after), reply("", after)


@dataclass(frozen=True)
class KeyOpSummary:
    """How a cluster-wide operation went, as the node that fanned it out counts it."""

    action: Action
    key_fingerprint: str
    members: int
    """Members asked, this node included."""
    acked: int
    failed: dict[str, str]
    """Node id -> the error it answered."""
    unreachable: list[str]
    """Node ids that did not answer within ``key_op_timeout``."""
    key_counts: dict[str, int]
    """Fingerprint -> members that hold it, among those that answered."""
    primary_counts: dict[str, int]
    """Fingerprint -> members that seal with it, among those that answered."""

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action.name.lower(),
            "key": self.key_fingerprint,
            "members": self.members,
            "acked": self.acked,
            "failed": dict(sorted(self.failed.items())),
            "unreachable": sorted(self.unreachable),
            "keys": [
                {
                    "fingerprint": fp,
                    "members": count,
                    "primary_of": self.primary_counts.get(fp, 0),
                }
                for fp, count in sorted(self.key_counts.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        }


def summarize(action: Action, key: bytes, answers: Mapping[str, KeyOpReply | None]) -> KeyOpSummary:
    """Count the answers (``None``: no answer) of every member asked, this node's own
    included."""
    failed: dict[str, str] = {}
    unreachable: list[str] = []
    key_counts: dict[str, int] = {}
    primary_counts: dict[str, int] = {}
    acked = 0
    for node in sorted(answers):
        got = answers[node]
        if got is None:
            unreachable.append(node)
            continue
        if got.ok:
            acked += 1
        else:
            failed[node] = got.error
        for fp in got.fingerprints:
            key_counts[fp] = key_counts.get(fp, 0) + 1
        if got.fingerprints:
            first = got.fingerprints[0]
            primary_counts[first] = primary_counts.get(first, 0) + 1
    return KeyOpSummary(
        action=action,
        key_fingerprint=fingerprint(key) if len(key) == KEY_BYTES else "",
        members=len(answers),
        acked=acked,
        failed=failed,
        unreachable=unreachable,
        key_counts=key_counts,
        primary_counts=primary_counts,
    )
