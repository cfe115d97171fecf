"""One valid instance of every message type, shared by codec tests."""

from __future__ import annotations

from protocol import (
    Ack,
    Alive,
    Capability,
    Dead,
    Identity,
    Leave,
    LedgerDigest,
    LedgerRecord,
    Manifest,
    ManifestRumor,
    Message,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    TaskCancel,
    TaskConfirm,
    TaskRequest,
    TaskResponse,
    TaskResult,
    signing_bytes,
)
from protocol.certificate import issue_certificate, issue_revocation
from protocol.messages import (
    ChannelAuth,
    ChannelFrame,
    ChannelHello,
    ChannelPing,
    ChannelPong,
    KeyOp,
    KeyOpReply,
    Pressure,
    RejoinReply,
    RejoinRequest,
)

ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)


def signed(message: Message, signer: Identity) -> Message:
    import dataclasses

    return dataclasses.replace(message, signature=signer.sign(signing_bytes(message)))  # type: ignore[type-var]


def one_of_each() -> list[Message]:
    """A valid, correctly signed instance of every registered message type."""
    zero = b"\x00" * 64
    alive = signed(Alive(ALICE.node_id, 3, "127.0.0.1", 7946, zero), ALICE)
    suspect = signed(Suspect(ALICE.node_id, 3, BOB.node_id, zero), BOB)
    dead = signed(Dead(ALICE.node_id, 3, BOB.node_id, zero), BOB)
    leave = signed(Leave(ALICE.node_id, 4, zero), ALICE)
    rumor = ManifestRumor(ALICE.node_id, 2, b"\x07" * 32)
    record = signed(LedgerRecord(BOB.node_id, ALICE.node_id, 0.75, 12, 9, 1.7e9, zero), BOB)
    digest = LedgerDigest(BOB.node_id, 9, b"\x05" * 32)
    manifest = Manifest.create(
        ALICE,
        name="translator",
        endpoint="127.0.0.1:7946",
        capabilities=[
            Capability(
                name="translate_text",
                description="Translate text between languages",
                input_schema={"type": "object", "properties": {"text": {"type": "string"}}},
                avg_latency_ms=1200,
                cost_per_call_usd=0.001,
                tags=("nlp",),
            )
        ],
        tags=["demo"],
        version=2,
    )
    result = signed(
        TaskResult("t-1", BOB.node_id, ALICE.node_id, True, {"text": "hola"}, "", 12.5, zero),
        ALICE,
    )
    cert = issue_certificate(
        BOB, ALICE.node_id, roles=("member",), name="a", serial=5, issued_at=1.0, expires_at=9.0
    )
    revocation = issue_revocation(BOB, serial=5, revoked_at=2.0, keep_until=9.0)
    return [
        Ping(1, ALICE.node_id),
        PingReq(2, ALICE.node_id, "10.0.0.1", 7946),
        Ack(1, 4),
        Nack(2),
        alive,
        suspect,
        dead,
        leave,
        rumor,
        record,
        digest,
        PushPull(True, (alive, suspect, dead, leave), (rumor,), (digest,), (record,)),
        TaskRequest(
            "t-1", "translate_text", {"text": "hi", "n": [1, 2.5, None]}, 30_000, 0.01, "tr"
        ),
        TaskResponse("t-1", 3, "at capacity", 1200.0, 45_000),
        TaskConfirm("t-1", True),
        result,
        TaskCancel("t-1", "caller cancelled"),
        manifest,
        ChannelHello(b"\x01" * 32, BOB.node_id),
        ChannelAuth(b"\x02" * 32, b"\x01" * 32, BOB.node_id, ALICE.node_id),
        ChannelFrame(b"\x03" * 16, ALICE.node_id, 7),
        ChannelPing(9),
        ChannelPong(9),
        cert.signed,
        revocation.signed,
        RejoinRequest(cert.signed, 1.7e9, b"\x06" * 16),
        RejoinReply(cert.signed, b"\x07" * 80),
        Pressure(42, 87),
        KeyOp(b"\x04" * 16, 1, b"\x05" * 32, 1_700_000_000.0),
        KeyOpReply(b"\x04" * 16, True, "", ("0123456789abcdef",)),
    ]
