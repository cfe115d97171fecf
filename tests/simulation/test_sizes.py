"""The size model counts exactly the bytes the real codec produces.

Invariant: for any message, packet or push-pull frame the simulator can count,
``SizeModel`` returns ``len(protocol.encode(...))`` (envelopes) or ``protocol.wire_size``
(single messages), whatever the field values.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    Ack,
    Alive,
    Capability,
    Dead,
    FastSigner,
    Leave,
    LedgerDigest,
    LedgerRecord,
    Manifest,
    ManifestRumor,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    encode,
    pack,
    wire_size,
)
from simulations.sizes import SizeModel, array_header_bytes, envelope_size

SIGNERS = [FastSigner.from_seed(bytes([i]) * 32) for i in range(4)]
IDS = [s.node_id for s in SIGNERS]
SIG = bytes(64)

uint = st.one_of(st.integers(0, 300), st.integers(0, 2**32), st.integers(0, 2**64 - 1))
node_id = st.sampled_from(IDS)
host = st.text(alphabet="abcdefghij0123456789.-é", min_size=1, max_size=60)
port = st.integers(0, 65_535)

probe = st.one_of(
    st.builds(Ping, uint, node_id),
    st.builds(Ack, uint, st.integers(0, 1_000_000)),
    st.builds(Nack, uint),
    st.builds(PingReq, uint, node_id, host, port),
)
rumor = st.one_of(
    st.builds(Alive, node_id, uint, host, port, st.just(SIG)),
    st.builds(Suspect, node_id, uint, node_id, st.just(SIG)),
    st.builds(Dead, node_id, uint, node_id, st.just(SIG)),
    st.builds(Leave, node_id, uint, st.just(SIG)),
    st.builds(ManifestRumor, node_id, uint, st.just(bytes(32))),
)
record = st.builds(
    LedgerRecord,
    node_id,
    node_id,
    st.floats(0.0, 1.0),
    uint,
    uint,
    st.floats(0.0, 1e12),
    st.just(SIG),
)


@settings(max_examples=200)
@given(st.lists(st.one_of(probe, rumor, record), min_size=1, max_size=40))
def test_packet_size_is_exact(messages: list) -> None:  # type: ignore[type-arg]
    """A packet's size equals the length of its real signed envelope."""
    model = SizeModel()
    for m in messages:
        assert model.message(m) == wire_size(m)
    assert model.packet(messages) == len(encode(messages, SIGNERS[0]))
    # Cached answers stay exact.
    assert model.packet(messages) == len(encode(messages, SIGNERS[0]))


@settings(max_examples=100)
@given(
    st.booleans(),
    st.lists(rumor.filter(lambda m: not isinstance(m, ManifestRumor)), max_size=40),
    st.lists(st.builds(ManifestRumor, node_id, uint, st.just(bytes(32))), max_size=20),
    st.lists(st.builds(LedgerDigest, node_id, uint, st.just(bytes(32))), max_size=20),
    st.lists(record, max_size=20),
)
def test_push_pull_size_is_exact(
    join: bool,
    members: list,  # type: ignore[type-arg]
    manifests: list,  # type: ignore[type-arg]
    digests: list,  # type: ignore[type-arg]
    records: list,  # type: ignore[type-arg]
) -> None:
    """A push-pull frame is measured item by item, exactly."""
    message = PushPull(join, tuple(members), tuple(manifests), tuple(digests), tuple(records))
    model = SizeModel()
    assert model.push_pull(message) == wire_size(message)
    assert model.frame([message]) == len(encode([message], SIGNERS[1]))


@settings(max_examples=50)
@given(
    st.lists(
        st.one_of(
            st.builds(Alive, node_id, uint, host, port, st.just(SIG)),
            st.builds(Suspect, node_id, uint, node_id, st.just(SIG)),
        ),
        min_size=65,
        max_size=200,
    ),
    st.integers(0, 200),
)
def test_long_tables_are_exact_cached_or_not(members: list, cached: int) -> None:  # type: ignore[type-arg]
    """A long table is exact with none, some (the first ``cached``) or all of its rumors
    in the identity cache, and with the same rumor object several times."""
    members = members + members[:3]
    message = PushPull(False, tuple(members), (), (), ())
    model = SizeModel()
    for m in members[:cached]:
        model.message(m)
    assert model.push_pull(message) == wire_size(message)
    assert model.push_pull(message) == wire_size(message)  # now all cached


def test_large_push_pull_array_headers() -> None:
    """Arrays past 15 and 65,535 items change their header size; the model follows."""
    assert [array_header_bytes(n) for n in (0, 15, 16, 65_535, 65_536)] == [1, 1, 3, 3, 5]
    alive = Alive(IDS[0], 1, "10.0.0.1", 7946, SIG)
    message = PushPull(False, (alive,) * 70_000, (), (), ())
    assert SizeModel().push_pull(message) == wire_size(message)
    assert envelope_size(1, wire_size(message)) == len(encode([message], SIGNERS[0]))


def test_manifest_size() -> None:
    manifest = Manifest.create(
        SIGNERS[2],
        name="agent",
        endpoint="10.0.0.3:7946",
        capabilities=[Capability(name="summarize", description="Summarize a text")],
    )
    assert SizeModel().manifest(manifest) == len(pack(manifest))
