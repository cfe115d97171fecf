"""Reputation over real sockets: delegations turn into signed opinions that gossip into one
ledger, and the ledger ranks good providers above a bad one everywhere.

Five in-process nodes on 127.0.0.1: two requesters, two good providers and one bad provider
of the same capability (its output fails the capability's output schema, or it raises).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshnode.runtime.node import MeshNode, wait_for
from protocol import LedgerRecord, LocalProtocolError, signing_bytes
from tests.integration.agents import Cap, LocalMesh

DELEGATIONS = 200
GRADE = "grade"
GRADE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["grade"],
    "properties": {"grade": {"type": "integer"}},
}
AIMED_AT_BAD = 3
"""Delegations each requester first aims at the bad provider (then routes by discovery)."""


@pytest.fixture
async def mesh() -> AsyncIterator[LocalMesh]:
    local = LocalMesh()
    try:
        yield local
    finally:
        await local.close()


async def good_grade(payload: Any) -> Any:
    return {"grade": int(payload["n"]) % 5}


async def bad_grade(payload: Any) -> Any:
    if int(payload["n"]) % 2:
        raise RuntimeError("bad provider failing on purpose")
    return {"grade": "not a number"}


def cap(handler: Any) -> Cap:
    return Cap(GRADE, handler, None, GRADE_SCHEMA, description="grade a piece of work")


def records(node: MeshNode) -> list[LedgerRecord]:
    return node.core.ledger.records()


async def test_ledgers_converge_and_rank_good_above_bad(mesh: LocalMesh) -> None:
    """After 200 delegations from four requesters (the two plain nodes and the two good
    providers), every node's ledger is identical once gossip settles, and at every node
    both good providers rank above the bad one in trust_view() and in discover()."""
    r1 = await mesh.node("requester-1")
    r2 = await mesh.node("requester-2")
    g1 = await mesh.node("good-1", [cap(good_grade)])
    g2 = await mesh.node("good-2", [cap(good_grade)])
    bad = await mesh.node("bad", [cap(bad_grade)])
    await mesh.ready()
    good = {g1.node_id, g2.node_id}
    requesters = [r1, r2, g1, g2]
    for node in requesters:  # each requester judges by what it expects, not by the provider
        node.expect(GRADE, schema=GRADE_SCHEMA)
    per_requester = DELEGATIONS // len(requesters)
    providers_used: dict[str, int] = {}

    async def run(node: MeshNode) -> None:
        for i in range(per_requester):
            if i < AIMED_AT_BAD:
                others = sorted(good - {node.node_id})
                result = await node.tasks.delegate(
                    GRADE, {"n": i}, [bad.node_id, *others], deadline_s=5, max_cost_usd=None
                )
            else:
                result = await node.delegate(GRADE, {"n": i}, deadline_s=5)
            providers_used[result.provider] = providers_used.get(result.provider, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(run(n) for n in requesters))
    elapsed = time.monotonic() - started

    # Every delegation was delivered by a good provider; the bad one only failed.
    assert sum(providers_used.values()) == DELEGATIONS
    assert set(providers_used) <= good
    assert elapsed < 60, f"{DELEGATIONS} delegations took {elapsed:.1f} s"
    for node in requesters:
        score, outcomes = node.opinion(bad.node_id)
        assert outcomes == AIMED_AT_BAD and score < 0.5

    # Every opinion gets signed, and gossip (SWIM piggyback + push-pull) settles every
    # replica on the same state: exactly the records the requesters signed.
    nodes = mesh.nodes

    def own(node: MeshNode) -> list[LedgerRecord]:
        return [r for r in records(node) if r.observer == node.node_id]

    def settled() -> bool:
        signed = all(
            node.opinion(r.subject)[1] == r.outcomes for node in requesters for r in own(node)
        )
        expected = sorted(
            (r for node in requesters for r in own(node)), key=lambda r: (r.observer, r.subject)
        )
        return signed and all(records(n) == expected for n in nodes)

    await wait_for(settled, 30)
    for node in nodes[1:]:
        assert node.core.ledger == nodes[0].core.ledger
    for node in requesters:
        for subject in (*good, bad.node_id):
            if subject != node.node_id and node.opinion(subject)[1] > 0:
                signed = node.core.ledger.get(node.node_id, subject)
                assert signed is not None
                assert (signed.score, signed.outcomes) == node.opinion(subject)

    for node in nodes:
        if node is bad:
            continue  # a node's own view and discovery never include itself
        view = node.trust_view()
        for provider in good - {node.node_id}:
            assert view[provider] > view[bad.node_id], (node.config.name, view)
        ranked = [c.node_id for c in await node.discover(capability_name=GRADE, top_k=5)]
        assert ranked[-1] == bad.node_id, (node.config.name, ranked)
        assert set(ranked[:-1]) == good - {node.node_id}
        described = [c.node_id for c in await node.discover("grade a piece of work", top_k=5)]
        assert described[-1] == bad.node_id and set(described[:-1]) == set(ranked[:-1])


async def test_self_rating_gains_nothing(mesh: LocalMesh) -> None:
    """A provider cannot rate itself: the ledger refuses to sign a self-rating, and a
    self-rating it signs by hand is refused by every replica, so no trust view changes."""
    requester = await mesh.node("requester")
    provider = await mesh.node("provider", [cap(good_grade)])
    other = await mesh.node("other", [cap(good_grade)])
    await mesh.ready()
    requester.expect(GRADE, schema=GRADE_SCHEMA)
    for i in range(3):
        await requester.tasks.delegate(
            GRADE, {"n": i}, [provider.node_id], deadline_s=5, max_cost_usd=None
        )
        await requester.tasks.delegate(
            GRADE, {"n": i}, [other.node_id], deadline_s=5, max_cost_usd=None
        )
    await wait_for(lambda: all(len(n.core.ledger) == 2 for n in mesh.nodes), 15)
    before = {n.node_id: n.trust_view() for n in mesh.nodes}
    ledgers_before = {n.node_id: records(n) for n in mesh.nodes}

    identity = provider.identity
    now = time.time()
    with pytest.raises(LocalProtocolError):
        provider.core.ledger.record_opinion(identity, identity.node_id, 1.0, 30, now)

    unsigned = LedgerRecord(
        observer=identity.node_id,
        subject=identity.node_id,
        score=1.0,
        outcomes=30,
        seq=provider.core.ledger.next_seq(identity.node_id),
        expires_at=now + 3600,
        signature=b"\x00" * 64,
    )
    forged = dataclasses.replace(unsigned, signature=identity.sign(signing_bytes(unsigned)))
    for node in mesh.nodes:
        assert node.core.ledger.apply(forged, now) is False
        assert node.handle_records([forged]) == 0  # the push-pull path refuses it too
    provider.record_outcome(provider.node_id, 1.0)  # the runtime ignores a self-outcome

    for node in mesh.nodes:
        assert records(node) == ledgers_before[node.node_id]
        assert node.trust_view() == before[node.node_id]
    assert requester.trust_view()[provider.node_id] == before[requester.node_id][provider.node_id]
