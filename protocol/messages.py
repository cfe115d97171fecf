"""Every message meshnode sends, one frozen, slotted dataclass each.

Type tags live in :class:`MessageType`. **The enum is append-only**: a tag, once released, is
never renumbered, reused or removed, and new fields are only ever appended to a message
(older decoders ignore trailing fields they do not know).

Signed messages carry a ``signature`` field over :func:`protocol.schema.signing_bytes`:

* :class:`Alive` and :class:`Leave` are signed by their subject (only a node can say it is
  alive at an incarnation, or that it leaves);
* :class:`Suspect` and :class:`Dead` are signed by their accuser;
* :class:`LedgerRecord` is signed by its observer; :class:`TaskResult` by its provider.

The envelope around a batch of messages is signed by its sender (see :mod:`protocol.codec`).
Cores verify the inner signatures themselves with an injected verifier, so an object built
in memory is checked exactly like one that came off the wire.
"""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar

from protocol.schema import (
    Appended,
    Digest,
    FixedLen,
    JsonValue,
    MaxItems,
    MaxLen,
    NodeId,
    Range,
    Signature,
    UInt,
    wire_struct,
)

Host = Annotated[str, MaxLen(253, 1)]
"""A host name or IP literal (DNS names are at most 253 characters)."""
Port = Annotated[int, Range(0, 65_535)]
TaskId = Annotated[str, MaxLen(64, 1)]
TraceId = Annotated[str, MaxLen(64)]
Reason = Annotated[str, MaxLen(512)]
CapabilityName = Annotated[str, MaxLen(128, 1)]
Score = Annotated[float, Range(0.0, 1.0)]
Seconds = Annotated[float, Range(0.0, 1e12)]


class MessageType(enum.IntEnum):
    """Wire type tags. APPEND-ONLY: never renumber, reuse or delete a tag."""

    PING = 1
    PING_REQ = 2
    ACK = 3
    NACK = 4
    ALIVE = 5
    SUSPECT = 6
    DEAD = 7
    LEAVE = 8
    MANIFEST_RUMOR = 9
    LEDGER_RECORD = 10
    PUSH_PULL = 11
    TASK_REQUEST = 12
    TASK_RESPONSE = 13
    TASK_RESULT = 14
    TASK_CANCEL = 15
    TASK_CONFIRM = 16
    MANIFEST = 17
    LEDGER_DIGEST = 18
    CHANNEL_HELLO = 19
    CHANNEL_AUTH = 20
    CHANNEL_FRAME = 21
    CHANNEL_PING = 22
    CHANNEL_PONG = 23
    KEY_OP = 24
    KEY_OP_REPLY = 25
    SIGNED_CERTIFICATE = 28
    SIGNED_REVOCATION = 29
    REJOIN_REQUEST = 30
    REJOIN_REPLY = 31
    PRESSURE = 32


class Message:
    """Base of all messages; each subclass sets ``TAG``."""

    __slots__ = ()
    TAG: ClassVar[MessageType]


# ---------------------------------------------------------------------------- SWIM probes


@wire_struct
class Ping(Message):
    """Direct probe. ``target`` guards against a different node now owning the address."""

    TAG: ClassVar[MessageType] = MessageType.PING
    seq: UInt
    target: NodeId


@wire_struct
class PingReq(Message):
    """Ask the receiver to probe ``target`` for us and relay the ack (or a nack)."""

    TAG: ClassVar[MessageType] = MessageType.PING_REQ
    seq: UInt
    target: NodeId
    host: Host
    port: Port


MAX_COORDINATE_DIMENSIONS = 16
"""Most vector components a coordinate may carry on the wire (the core uses 8; the rest is
room for a later change, and a cap on what a datagram can make us decode)."""


@wire_struct
class NetworkCoordinate:
    """A Vivaldi coordinate on the wire: ``vec`` and ``adjustment``/``height`` in seconds,
    ``error`` relative. The codec only checks the types and that floats are finite; the
    core checks dimension and bounds."""

    vec: Annotated[tuple[float, ...], MaxItems(MAX_COORDINATE_DIMENSIONS)]
    error: float
    adjustment: float
    height: float


@wire_struct
class Ack(Message):
    """Answer to a ping; ``load`` is the sender's tasks in flight (0 when it runs none);
    ``members`` is the size of the sender's view (members alive or suspect, itself
    included; 0: not reported), so a prober that holds fewer can catch up."""

    TAG: ClassVar[MessageType] = MessageType.ACK
    seq: UInt
    load: Annotated[int, Range(0, 1_000_000)] = 0
    members: Annotated[int, Range(0, 4_294_967_295)] = 0
    coordinate: Annotated[NetworkCoordinate | None, Appended()] = None
    """The sender's Vivaldi coordinate (None: not reported). Appended: an ack without it
    encodes exactly as before, and older decoders ignore it. Its bounds are checked by the
    receiving core (meshnode.core.coordinates), which ignores an unusable one."""


@wire_struct
class Nack(Message):
    """An intermediary could not reach the target of a ping-req in time."""

    TAG: ClassVar[MessageType] = MessageType.NACK
    seq: UInt


# ---------------------------------------------------------------------------- membership


@wire_struct
class Alive(Message):
    """``node`` is alive at ``incarnation`` and reachable at host:port. Signed by ``node``."""

    TAG: ClassVar[MessageType] = MessageType.ALIVE
    node: NodeId
    incarnation: UInt
    host: Host
    port: Port
    signature: Signature


@wire_struct
class Suspect(Message):
    """``accuser`` suspects ``node`` at ``incarnation``. Signed by ``accuser``."""

    TAG: ClassVar[MessageType] = MessageType.SUSPECT
    node: NodeId
    incarnation: UInt
    accuser: NodeId
    signature: Signature


@wire_struct
class Dead(Message):
    """``accuser`` declares ``node`` dead at ``incarnation``. Signed by ``accuser``."""

    TAG: ClassVar[MessageType] = MessageType.DEAD
    node: NodeId
    incarnation: UInt
    accuser: NodeId
    signature: Signature


@wire_struct
class Leave(Message):
    """``node`` leaves the mesh gracefully at ``incarnation``. Signed by ``node``."""

    TAG: ClassVar[MessageType] = MessageType.LEAVE
    node: NodeId
    incarnation: UInt
    signature: Signature


MemberRumor = Alive | Suspect | Dead | Leave
"""The signed statements that make up a member's state."""


@wire_struct
class ManifestRumor(Message):
    """``node`` has manifest ``version`` with ``digest``; fetch it over TCP if newer."""

    TAG: ClassVar[MessageType] = MessageType.MANIFEST_RUMOR
    node: NodeId
    version: UInt
    digest: Digest


@wire_struct
class LedgerRecord(Message):
    """One signed opinion: ``observer`` rates ``subject`` at ``score`` after ``outcomes``.

    ``seq`` is the observer's own counter, increasing across all its records; ``expires_at``
    is in seconds on the mesh clock (UNIX time in the runtime, virtual in simulations).
    """

    TAG: ClassVar[MessageType] = MessageType.LEDGER_RECORD
    observer: NodeId
    subject: NodeId
    score: Score
    outcomes: UInt
    seq: UInt
    expires_at: Seconds
    signature: Signature


@wire_struct
class LedgerDigest(Message):
    """Summary of one observer's records for anti-entropy: its top seq and a content hash."""

    TAG: ClassVar[MessageType] = MessageType.LEDGER_DIGEST
    observer: NodeId
    max_seq: UInt
    digest: Digest


@wire_struct
class PushPull(Message):
    """Anti-entropy state exchange over TCP (both directions use this message).

    ``members`` holds the latest signed statement per member; ``manifests`` one rumor per
    known manifest; ``ledger`` one digest per observer; ``records`` the ledger records the
    *other* side is missing (empty on the first leg).
    """

    TAG: ClassVar[MessageType] = MessageType.PUSH_PULL
    join: bool
    members: Annotated[tuple[Alive | Suspect | Dead | Leave, ...], MaxItems(100_000)]
    manifests: Annotated[tuple[ManifestRumor, ...], MaxItems(100_000)]
    ledger: Annotated[tuple[LedgerDigest, ...], MaxItems(100_000)]
    records: Annotated[tuple[LedgerRecord, ...], MaxItems(200_000)] = ()
    certificates: Annotated[tuple[SignedCertificate, ...], MaxItems(MAX_STATE_CERTIFICATES)] = ()
    revocations: Annotated[tuple[SignedRevocation, ...], MaxItems(MAX_STATE_REVOCATIONS)] = ()


# ---------------------------------------------------------------------------- mesh authority

CERTIFICATE_BODY_MAX_BYTES = 1_024
"""Largest body of a membership certificate: 32-byte authority and node keys, a name of
at most 64 bytes, at most 16 roles of at most 64 bytes, serial and two times come to under
1,300 bytes in the worst case of msgpack overhead; 1 KiB keeps a certificate with a 64-byte
signature well inside one UDP packet next to a few rumors (the parser in
:mod:`protocol.certificate` enforces the field caps)."""
REVOCATION_BODY_MAX_BYTES = 256
"""Largest body of a revocation (authority key, serial, node key, two times: about 110
bytes)."""
MAX_STATE_CERTIFICATES = 100_000
"""Most certificates in one push-pull leg (ten times the 10,000 members meshnode is sized
for; the admission store holds ``NodeConfig.authority_max_certificates``)."""
MAX_STATE_REVOCATIONS = 100_000
"""Most revocations in one push-pull leg."""


@wire_struct
class SignedCertificate(Message):
    """A membership certificate: ``body`` (canonical msgpack, see
    :mod:`protocol.certificate`) signed by the mesh authority's Ed25519 key. The signature
    covers the raw body bytes, and is checked before the body is parsed."""

    TAG: ClassVar[MessageType] = MessageType.SIGNED_CERTIFICATE
    body: Annotated[bytes, MaxLen(CERTIFICATE_BODY_MAX_BYTES, 1)]
    signature: Signature


@wire_struct
class SignedRevocation(Message):
    """A revocation of certificates (by serial and/or node id) signed by the mesh
    authority over the raw ``body`` bytes (see :mod:`protocol.certificate`)."""

    TAG: ClassVar[MessageType] = MessageType.SIGNED_REVOCATION
    body: Annotated[bytes, MaxLen(REVOCATION_BODY_MAX_BYTES, 1)]
    signature: Signature


REJOIN_NONCE_BYTES = 16
"""Random bytes of a rejoin request's nonce (128 bits: never repeats by chance)."""
SEALED_KEYRING_MAX_BYTES = 512
"""Largest keyring sealed to a node in a rejoin reply: an encoded keyring is at most
``3 + 128 + 8 × 32 = 387`` bytes, and a sealed box adds 48 (ephemeral key and tag)."""


@wire_struct
class RejoinRequest(Message):
    """A node whose keyring is stale asks a member for the current one (``POST
    /v1/wire/rejoin``, unsealed). Alone in an envelope its sender signs: ``certificate``
    must be the sender's; ``timestamp`` (seconds, mesh clock) and the random ``nonce``
    make a replay detectable."""

    TAG: ClassVar[MessageType] = MessageType.REJOIN_REQUEST
    certificate: SignedCertificate
    timestamp: Seconds
    nonce: Annotated[bytes, FixedLen(REJOIN_NONCE_BYTES)]


@wire_struct
class RejoinReply(Message):
    """The member's answer: its own ``certificate`` (so the node knows it asked a member)
    and the current keyring (``protocol.keyring.Keyring.encode``) sealed to the node's key
    (Ed25519 converted to Curve25519, a libsodium sealed box)."""

    TAG: ClassVar[MessageType] = MessageType.REJOIN_REPLY
    certificate: SignedCertificate
    sealed_keyring: Annotated[bytes, MaxLen(SEALED_KEYRING_MAX_BYTES, 1)]


# ---------------------------------------------------------------------------- tasks


class TaskStatus(enum.IntEnum):
    """Provider's answer to a task request. APPEND-ONLY."""

    ACCEPTED = 1
    REJECTED = 2
    COUNTERED = 3


@wire_struct
class TaskRequest(Message):
    """Ask the receiver to run ``capability`` on ``input`` within ``deadline_ms``.

    Deadlines travel as a remaining budget in milliseconds, not a wall-clock instant, so
    they need no synchronised clocks.
    """

    TAG: ClassVar[MessageType] = MessageType.TASK_REQUEST
    task_id: TaskId
    capability: CapabilityName
    input: JsonValue
    deadline_ms: Annotated[int, Range(1, 86_400_000)]
    budget_usd: Annotated[float, Range(0.0, 1e9)] | None
    trace_id: TraceId


@wire_struct
class TaskResponse(Message):
    """``status`` is a :class:`TaskStatus`; a counter names a deadline it can meet."""

    TAG: ClassVar[MessageType] = MessageType.TASK_RESPONSE
    task_id: TaskId
    status: Annotated[int, Range(1, 255)]
    reason: Reason
    estimated_latency_ms: Annotated[float, Range(0.0, 1e9)] | None
    counter_deadline_ms: Annotated[int, Range(1, 86_400_000)] | None


@wire_struct
class TaskConfirm(Message):
    """Requester takes (``accept``) or declines a countered deadline."""

    TAG: ClassVar[MessageType] = MessageType.TASK_CONFIRM
    task_id: TaskId
    accept: bool


@wire_struct
class TaskResult(Message):
    """The outcome of a task, signed by ``provider`` for ``requester``."""

    TAG: ClassVar[MessageType] = MessageType.TASK_RESULT
    task_id: TaskId
    requester: NodeId
    provider: NodeId
    ok: bool
    output: JsonValue
    error: Reason
    elapsed_ms: Annotated[float, Range(0.0, 1e9)]
    signature: Signature


@wire_struct
class TaskCancel(Message):
    """The requester gave up on ``task_id``; the provider stops work on it."""

    TAG: ClassVar[MessageType] = MessageType.TASK_CANCEL
    task_id: TaskId
    reason: Reason


# ---------------------------------------------------------------------------- task channels

ChannelNonce = Annotated[bytes, FixedLen(32)]
"""A fresh random value chosen by one side of a task channel for one handshake."""
ChannelId = Annotated[bytes, FixedLen(16)]
"""A task channel's id, derived from both handshake nonces."""


@wire_struct
class ChannelHello(Message):
    """Opens a task channel: the opener's fresh ``nonce`` and the node it means to reach.
    Alone in its envelope, which the opener signs (a replayed hello binds nothing)."""

    TAG: ClassVar[MessageType] = MessageType.CHANNEL_HELLO
    nonce: ChannelNonce
    recipient: NodeId


@wire_struct
class ChannelAuth(Message):
    """Binds a task channel: ``sender`` (who signs the envelope) answers the other side's
    fresh ``peer_nonce`` with its own ``nonce``, naming itself and the ``recipient``. The
    listener sends it in answer to a hello, the opener in answer to the listener's."""

    TAG: ClassVar[MessageType] = MessageType.CHANNEL_AUTH
    nonce: ChannelNonce
    peer_nonce: ChannelNonce
    sender: NodeId
    recipient: NodeId


@wire_struct
class ChannelFrame(Message):
    """First message of every envelope on an open task channel: the channel it belongs to,
    its recipient and its sequence number in that direction (1, 2, 3, ...)."""

    TAG: ClassVar[MessageType] = MessageType.CHANNEL_FRAME
    channel: ChannelId
    recipient: NodeId
    seq: UInt


@wire_struct
class ChannelPing(Message):
    """Is the other side of this task channel still there? Answered by a ChannelPong with
    the same ``token``; travels inside a framed envelope."""

    TAG: ClassVar[MessageType] = MessageType.CHANNEL_PING
    token: UInt


@wire_struct
class ChannelPong(Message):
    """Answer to a :class:`ChannelPing`."""

    TAG: ClassVar[MessageType] = MessageType.CHANNEL_PONG
    token: UInt


# ---------------------------------------------------------------------------- keyring

KeyOpId = Annotated[bytes, FixedLen(16)]
"""A cluster-wide key operation's random id (receivers apply each id once)."""
KeyFingerprint = Annotated[str, MaxLen(16, 1)]
"""A keyring key's fingerprint (``protocol.keyring.fingerprint``)."""


@wire_struct
class KeyOp(Message):
    """A cluster-wide keyring operation, fanned out by the member that received it from
    an operator: ``action`` 0 list, 1 install, 2 use, 3 remove; ``key`` the 32-byte key
    (empty for list). Travels only sealed under a key the receiver holds, in an envelope
    signed by a member; ``issued_at`` bounds how long a captured copy could be replayed."""

    TAG: ClassVar[MessageType] = MessageType.KEY_OP
    op_id: KeyOpId
    action: Annotated[int, Range(0, 3)]
    key: Annotated[bytes, MaxLen(32)]
    issued_at: Seconds


@wire_struct
class KeyOpReply(Message):
    """A member's answer to a :class:`KeyOp`: whether it applied (``error`` says why
    not) and the fingerprints of the keys it holds afterwards, primary first."""

    TAG: ClassVar[MessageType] = MessageType.KEY_OP_REPLY
    op_id: KeyOpId
    ok: bool
    error: Reason
    fingerprints: Annotated[tuple[KeyFingerprint, ...], MaxItems(8)]


MESSAGE_CLASSES: dict[int, type[Message]] = {}


def register(cls: type[Message]) -> type[Message]:
    """Add a message class to the decoder's table (tags must be unique)."""
    if cls.TAG in MESSAGE_CLASSES and MESSAGE_CLASSES[cls.TAG] is not cls:
        raise RuntimeError(f"duplicate message tag {cls.TAG!r}")
    MESSAGE_CLASSES[int(cls.TAG)] = cls
    return cls


for _cls in (
    Ping,
    PingReq,
    Ack,
    Nack,
    Alive,
    Suspect,
    Dead,
    Leave,
    ManifestRumor,
    LedgerRecord,
    LedgerDigest,
    PushPull,
    TaskRequest,
    TaskResponse,
    TaskConfirm,
    TaskResult,
    TaskCancel,
    ChannelHello,
    ChannelAuth,
    ChannelFrame,
    ChannelPing,
    ChannelPong,
    SignedCertificate,
    SignedRevocation,
    KeyOp,
    KeyOpReply,
    RejoinRequest,
    RejoinReply,
):
    register(_cls)


# ---------------------------------------------------------------------------- machine load


PRESSURE_MAX = 100
"""Largest value of either part of a :class:`Pressure` (percent)."""


@wire_struct
class Pressure(Message):
    """The sender's machine pressure, sent beside its ``Ack`` to a direct ping: ``cpu``
    is its one-minute load average per CPU and ``memory`` the share of its memory in use
    (``1 − MemAvailable / MemTotal``), each in percent, clamped to 0..100 by the sender.
    Speaks only for the envelope's signer (a relay never forwards one)."""

    TAG: ClassVar[MessageType] = MessageType.PRESSURE
    cpu: Annotated[int, Range(0, PRESSURE_MAX)] = 0
    memory: Annotated[int, Range(0, PRESSURE_MAX)] = 0


register(Pressure)
