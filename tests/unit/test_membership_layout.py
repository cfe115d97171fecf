"""Layout of the membership core's process-wide caches: sized for the tables walked.

A push-pull merge checks the address of every ``Alive`` in a peer's table, in table order.
The check is memoized per host; an LRU cache smaller than the table evicts each host just
before the next merge asks for it again.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from meshnode.core import membership
from meshnode.core.config import NodeConfig
from meshnode.core.membership import Membership, _host_problem, address_problem
from protocol import Alive, FastSigner, fast_verify, signing_bytes


def test_address_checks_of_a_full_table_stay_cached_between_merges() -> None:
    """Two passes over the hosts of a full default table (``max_members``): the second
    pass is answered from the cache entirely.

    On the unfixed code (a 4,096-entry cache): 0 of the 20,000 second-pass checks hit."""
    members = NodeConfig().max_members
    hosts = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1, members + 1)]
    _host_problem.cache_clear()
    for host in hosts:
        assert address_problem(host, 7946, 4) is None
    before = _host_problem.cache_info().hits
    for host in hosts:
        assert address_problem(host, 7946, 4) is None
    assert _host_problem.cache_info().hits - before == members


def test_hosts_known_good_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A merge remembers the hosts that passed the check (a set, cheaper than the LRU
    call), never more than ``_HOST_CHECK_CACHE`` of them, and answers as the check does
    with the set full, emptied or holding the host already."""
    monkeypatch.setattr(membership, "_HOST_CHECK_CACHE", 4)
    membership._GOOD_HOSTS[4].clear()
    m = Membership(
        NodeConfig(),
        FastSigner.from_seed(b"layout"),
        host="10.9.9.9",
        port=7946,
        rng=random.Random(1),
        verifier=fast_verify,
        detect_stalls=False,
    )
    peers = [FastSigner.from_seed(f"host-{i}".encode()) for i in range(10)]
    alives = [
        dataclasses.replace(
            Alive(p.node_id, 0, f"10.3.0.{i + 1}", 7946, bytes(64)),
            signature=p.sign(
                signing_bytes(Alive(p.node_id, 0, f"10.3.0.{i + 1}", 7946, bytes(64)))
            ),
        )
        for i, p in enumerate(peers)
    ]
    for alive in alives:
        m.receive(alive.node, [alive], (alive.host, alive.port), 0.0)
    assert all(m.member(a.node) is not None for a in alives)
    for rounds in range(1, 4):
        # Equal copies, as a peer's table arrives off the wire (the held rumors themselves
        # are taken as stale without an address check).
        copies = [dataclasses.replace(a) for a in alives]
        assert m.merge_state(copies, float(rounds)) == 0
        assert m.counters["rumors_stale"] == 10 * rounds
        assert 0 < len(membership._GOOD_HOSTS[4]) <= 4
    assert m.merge_state(alives, 4.0) == 0  # the held rumors themselves
    assert m.counters["rumors_stale"] == 40
    bad = dataclasses.replace(alives[0], host="0.0.0.0")
    assert m.merge_state([bad], 5.0) == 0
    assert m.counters["addresses_invalid"] == 1
    assert "0.0.0.0" not in membership._GOOD_HOSTS[4]
