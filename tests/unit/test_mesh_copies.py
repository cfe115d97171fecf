"""Copies of held ledger records in a packet (``MeshCore.receive``,
``ReputationLedger.split_copies``).

Most records in the packets of a busy mesh are records every node already holds. The mesh
takes them out before membership's dispatch and only counts them; when nothing else is in
the packet it reports that the packet changed nothing but counters, so the shells skip
their effect and deadline pass. These tests hold the shortcut to what the whole path does:
the same ledger, counters and effects for any packet, with or without full caps, and False
only when copies are all there is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from crdt import ReputationLedger
from meshnode.core import NodeConfig
from meshnode.core.mesh import MeshCore
from protocol import Alive, LedgerRecord, signing_bytes
from tests.unit.test_mesh_caps import ADDR, IDS, NOW, SIGNERS, core, record


def state(mesh: MeshCore) -> tuple[object, ...]:
    """Everything a packet could change that the tests compare."""
    return (
        sorted((r.observer, r.subject, r.seq, r.score) for r in mesh.ledger.records()),
        mesh.ledger.version,
        dict(mesh.counters),
        dict(mesh.membership.counters),
        mesh.next_deadline(),
        [m.rumor for m in mesh.membership.members()],
    )


class _WholeWay(ReputationLedger):
    """A ledger that never takes copies out: every packet goes the whole way."""

    __slots__ = ()

    def split_copies(
        self, messages: Iterable[object], observers: Container[str]
    ) -> tuple[int, list[object] | None]:
        return 0, None


def full_path(mesh: MeshCore) -> MeshCore:
    """``mesh`` with the shortcut turned off."""
    mesh.ledger.__class__ = _WholeWay
    return mesh


def seeded(records: Sequence[LedgerRecord], config: NodeConfig | None = None) -> MeshCore:
    mesh = core(config, members=5)
    assert mesh.apply_records(records, NOW) == len(records)
    mesh.take_effects()
    return mesh


HELD = [record(1, 2), record(2, 3), record(3, 1), record(0, 4)]


def test_a_packet_of_held_copies_changes_nothing_but_counters() -> None:
    mesh = seeded(HELD)
    before = state(mesh)
    equal_copy = dataclasses.replace(HELD[1])  # equal, not the same object (wire mode)
    assert equal_copy is not HELD[1]
    packet = [HELD[0], equal_copy, HELD[3]]
    assert mesh.receive(IDS[2], packet, ADDR, NOW + 1) is False
    assert mesh.take_effects() == []
    after = state(mesh)
    assert after[:2] == before[:2]  # same records, same version
    assert after[2]["records_rejected"] == before[2]["records_rejected"] + 3  # type: ignore[index]
    assert after[3]["recv_ledgerrecord"] == before[3].get("recv_ledgerrecord", 0) + 3  # type: ignore[index, union-attr]
    assert after[3]["packets_received"] == before[3]["packets_received"] + 1  # type: ignore[index]


def test_a_new_or_newer_record_sends_the_packet_the_whole_way() -> None:
    mesh = seeded(HELD)
    newer = record(1, 2, seq=2)
    assert mesh.receive(IDS[2], [HELD[0], newer, HELD[2]], ADDR, NOW + 1) is True
    assert mesh.ledger.get(IDS[1], IDS[2]) == newer
    assert mesh.counters["records_applied"] == len(HELD) + 1


def test_a_copy_from_a_sender_being_verified_still_verifies_it() -> None:
    """Any signed packet from a member heard of second-hand, at its advertised address,
    verifies it: a packet of copies too."""
    mesh = seeded(HELD)
    other = core(members=6)
    newcomer = other.membership.member(IDS[5])
    assert newcomer is not None
    mesh.membership.merge_state([newcomer.rumor], NOW, source=IDS[1])
    assert mesh.membership.is_unverified(IDS[5])
    address = (newcomer.rumor.host, newcomer.rumor.port)
    assert mesh.receive(IDS[5], [HELD[0]], address, NOW + 1) is True
    assert not mesh.membership.is_unverified(IDS[5])
    member = mesh.membership.member(IDS[5])
    assert member is not None


def alive(i: int, incarnation: int) -> Alive:
    unsigned = Alive(IDS[i], incarnation, f"10.0.0.{i + 1}", 7946, b"\x00" * 64)
    return dataclasses.replace(unsigned, signature=SIGNERS[i].sign(signing_bytes(unsigned)))


# Held copies, records that are new or newer or older, a stranger's record, an equal copy,
# and membership rumors (a refutation with a higher incarnation and a stale one).
POOL: list[object] = [
    *HELD,
    dataclasses.replace(HELD[2]),
    record(1, 2, seq=2),
    record(2, 4),
    record(4, 1),
    record(8, 1),  # a stranger's
    alive(3, 1),
    alive(4, 0),
]


@settings(max_examples=300, deadline=None)
@given(
    packets=st.lists(
        st.tuples(
            st.lists(st.sampled_from(POOL), min_size=1, max_size=6),
            st.sampled_from([1, 2, 3, 4]),
        ),
        min_size=1,
        max_size=5,
    ),
    caps=st.sampled_from(
        [
            {},
            {"max_ledger_records": 5},  # one more key fits; a second evicts
            {"max_ledger_records": 4},  # full: every new key evicts
            {"max_ledger_observers": 4},  # every observer of HELD: no room for a fifth
        ]
    ),
)
def test_the_shortcut_ends_where_the_whole_way_ends(
    packets: list[tuple[list[object], int]], caps: dict[str, int]
) -> None:
    """For any sequence of packets, the mesh with the shortcut and the mesh without it end
    with the same ledger, counters, member table and deadline, and emit the same effects,
    also when the packet's new records meet a cap and evict held ones."""
    fast = seeded(HELD, NodeConfig.lan(**caps))  # type: ignore[arg-type]
    slow = full_path(seeded(HELD, NodeConfig.lan(**caps)))  # type: ignore[arg-type]
    for step, (messages, sender) in enumerate(packets):
        now = NOW + 1 + step
        changed = fast.receive(IDS[sender], messages, ADDR, now)
        slow.receive(IDS[sender], messages, ADDR, now)
        fast_effects, slow_effects = fast.take_effects(), slow.take_effects()
        assert fast_effects == slow_effects
        if not changed:
            assert fast_effects == []
        assert state(fast) == state(slow)
