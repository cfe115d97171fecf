"""A table-driven :class:`~meshnode.core.authorization.RequesterFacts` for unit tests of
the provider: who is a member, which roles each holds, how much we trust each."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshnode.core.router import DEFAULT_TRUST


@dataclass
class Facts:
    """``members`` None: every requester is a current member (the provider tests that are
    about slots, not authorization); ``roles`` None: no mesh authority (roles unknown)."""

    members: set[str] | None = None
    roles: dict[str, frozenset[str]] | None = None
    trust: dict[str, float] = field(default_factory=dict)
    trust_asked: int = 0

    @classmethod
    def of(
        cls,
        members: Iterable[str] | None = None,
        roles: Mapping[str, Iterable[str]] | None = None,
        trust: Mapping[str, float] | None = None,
    ) -> Facts:
        return cls(
            None if members is None else set(members),
            None if roles is None else {k: frozenset(v) for k, v in roles.items()},
            dict(trust or {}),
        )

    def is_member(self, node_id: str) -> bool:
        return self.members is None or node_id in self.members

    def roles_of(self, node_id: str) -> frozenset[str] | None:
        if self.roles is None:
            return None
        return self.roles.get(node_id, frozenset())

    def trust_of(self, node_id: str, now: float) -> float:
        self.trust_asked += 1
        return self.trust.get(node_id, DEFAULT_TRUST)


EVERYONE = Facts()
"""Every requester is a current member, with no roles known."""
