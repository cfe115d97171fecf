"""A node's data dir survives restarts, and a corrupt row is skipped, not trusted.

Invariants: after a restart with the same data dir a node has the same id, a higher
incarnation, its own ledger records (and continues their sequence, never re-using one),
and the manifests it had learned; a store row that fails to decode is skipped.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from meshnode import MeshNode, NodeConfig, capability
from meshnode.runtime.node import wait_for
from meshnode.runtime.store import DB_FILE, NodeStore
from protocol import Alive, Identity


class Echo(MeshNode):
    @capability(name="echo", description="Echo the payload back")
    async def echo(self, payload: dict[str, Any]) -> dict[str, Any]:
        return payload


def _config(name: str, data_dir: Path | None, seeds: tuple[str, ...] = ()) -> NodeConfig:
    return NodeConfig.local(
        name=name,
        port=0,
        seeds=seeds,
        embedder="hashing",
        data_dir=None if data_dir is None else str(data_dir),
    )


async def test_restart_keeps_identity_ledger_and_manifests(tmp_path: Path) -> None:
    provider = Echo(_config("provider", None))
    await provider.start()
    seed = (f"127.0.0.1:{provider.address[1]}",)
    node = MeshNode(_config("requester", tmp_path / "r", seed))
    await node.start()
    try:
        first_id, first_incarnation = node.node_id, node.core.membership.incarnation
        await wait_for(lambda: node.core.manifests.get(provider.node_id) is not None, 10)
        await node.discovery.settled()
        for _ in range(3):
            result = await node.delegate("echo", {"x": 1}, expect={"type": "object"})
            assert result.provider == provider.node_id
        own = node.core.ledger.get(node.node_id, provider.node_id)
        assert own is not None
        assert own.outcomes == 3
    finally:
        await node.aclose()

    restarted = MeshNode(_config("requester", tmp_path / "r", seed))
    await restarted.start()
    try:
        assert restarted.node_id == first_id
        assert restarted.core.membership.incarnation > first_incarnation
        held = restarted.core.ledger.get(first_id, provider.node_id)
        assert held == own
        assert restarted.core.manifests.get(provider.node_id) is not None
        await restarted.discovery.settled()
        await wait_for(
            lambda: (
                provider.core.membership.member(first_id) is not None
                and provider.core.membership.member(first_id).incarnation  # type: ignore[union-attr]
                > first_incarnation
            ),
            10,
        )
        await restarted.delegate("echo", {"x": 2}, expect={"type": "object"})
        after = restarted.core.ledger.get(first_id, provider.node_id)
        assert after is not None
        assert after.seq == own.seq + 1
        assert after.outcomes == 4
        # The provider holds the new record, and no equivocation was ever seen.
        await wait_for(lambda: provider.core.ledger.get(first_id, provider.node_id) == after, 10)
        assert provider.core.ledger.equivocators() == []
    finally:
        await restarted.aclose()
        await provider.aclose()


def test_corrupt_rows_are_skipped(tmp_path: Path) -> None:
    store = NodeStore(tmp_path)
    identity = store.load_identity()
    assert store.load_identity().node_id == identity.node_id
    store.set_incarnation(7)
    store.close()
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute("INSERT INTO manifests(node_id, manifest) VALUES ('x', x'c1c1')")
    db.execute("INSERT INTO ledger(observer, subject, record) VALUES ('a', 'b', x'00')")
    db.execute("INSERT INTO members(node_id, rumor) VALUES ('m', x'93')")
    db.commit()
    db.close()
    reopened = NodeStore(tmp_path)
    try:
        assert reopened.incarnation() == 7
        assert reopened.load_manifests() == []
        assert reopened.load_records() == []
        assert reopened.load_members() == []
    finally:
        reopened.close()
        reopened.close()  # closing twice is safe


def _alive(seed: int, incarnation: int) -> Alive:
    node_id = Identity.from_seed(bytes([seed]) * 32).node_id
    return Alive(
        node=node_id,
        incarnation=incarnation,
        host="127.0.0.1",
        port=7000 + seed,
        signature=b"\x01" * 64,
    )


def test_member_rows_are_updated_one_by_one_or_replaced_whole(tmp_path: Path) -> None:
    store = NodeStore(tmp_path)
    try:
        a, b, c = _alive(1, 1), _alive(2, 1), _alive(3, 1)
        store.save_members([a, b])
        store.update_members([_alive(2, 5), c], forget=[a.node])
        store.commit()
        assert sorted(store.load_members(), key=lambda r: r.node) == sorted(
            [_alive(2, 5), c], key=lambda r: r.node
        )
        store.save_members([a])
        assert store.load_members() == [a]
    finally:
        store.close()


async def test_a_flush_writes_the_members_that_changed(tmp_path: Path) -> None:
    """Between two flushes only changed members are written: a peer that joins is added and
    the row of a peer that did not change is left as it was (here, a marker row)."""
    first = MeshNode(_config("first", None))
    await first.start()
    seed = (f"127.0.0.1:{first.address[1]}",)
    node = MeshNode(_config("keeper", tmp_path / "k", seed))
    await node.start()
    second = MeshNode(_config("second", None, seed))
    try:
        await wait_for(lambda: node.core.membership.member(first.node_id) is not None, 10)
        node._flush()
        # The running node holds the data dir's lock: read its rows through its own store.
        stored = node._store
        assert stored is not None
        assert first.node_id in {r.node for r in stored.load_members()}
        marker = Alive(
            node=first.node_id,
            incarnation=999,
            host="127.0.0.1",
            port=1,
            signature=b"\x01" * 64,
        )
        stored.update_members([marker])
        stored.commit()
        await second.start()
        await wait_for(lambda: node.core.membership.member(second.node_id) is not None, 10)
        node._flush()
        rows = {r.node: r for r in stored.load_members()}
        assert second.node_id in rows
        assert rows[first.node_id] == marker
    finally:
        await second.aclose()
        await node.aclose()
        await first.aclose()


async def test_records_the_ledger_drops_are_deleted_from_the_data_dir(tmp_path: Path) -> None:
    """The stored ledger is as bounded as the one in memory: records the ledger evicts at
    its cap are deleted from SQLite by a later flush. Without the compaction every record
    ever applied stayed in the file (here 3 rows for a ledger of 2), so a flood by members
    grew the data dir without bound."""
    config = NodeConfig.local(
        name="victim",
        port=0,
        embedder="hashing",
        data_dir=str(tmp_path / "v"),
        max_ledger_records=2,
    )
    victim = MeshNode(config)
    await victim.start()
    seed = (f"127.0.0.1:{victim.address[1]}",)
    others = [MeshNode(_config(f"n{i}", None, seed)) for i in range(3)]
    try:
        for other in others:
            await other.start()
        ids = [o.node_id for o in others]
        await wait_for(lambda: all(victim.core.membership.member(i) for i in ids), 10)
        others[0].record_outcome(ids[1], 1.0)
        others[1].record_outcome(ids[2], 1.0)
        await wait_for(lambda: len(victim.core.ledger) == 2, 10)
        store = victim._store
        assert store is not None
        await wait_for(lambda: len(store.record_keys()) == 2, 15)
        victim.record_outcome(ids[0], 1.0)  # our own record evicts a member's at the cap
        assert len(victim.core.ledger) == 2
        assert victim.core.counters["records_evicted"] == 1

        def stored_as_held() -> bool:
            # A gossiped copy of an evicted record may come back and win its place again
            # (its observer now ranks higher: we rated it); the store follows either way.
            held = {(r.observer, r.subject) for r in victim.core.ledger.records()}
            return store.record_keys() == held

        await wait_for(stored_as_held, 15)
        assert len(store.record_keys()) == 2
    finally:
        for other in others:
            await other.aclose()
        await victim.aclose()
