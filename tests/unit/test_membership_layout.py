"""Layout of the membership core's process-wide caches: sized for the tables walked.

A push-pull merge checks the address of every ``Alive`` in a peer's table, in table order.
The check is memoized per host; an LRU cache smaller than the table evicts each host just
before the next merge asks for it again.
"""

from __future__ import annotations

from meshnode.core.config import NodeConfig
from meshnode.core.membership import _host_problem, address_problem


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
