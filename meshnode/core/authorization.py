"""Who may call a capability, and how much: the provider's authorization rules, sans I/O.

Theory of operation
-------------------
Every capability a node offers carries a :class:`CapabilityPolicy`: an :class:`Allow`
rule (who may call it) and a :class:`Quota` (how much one requester may use it). The
provider decides both in :class:`~meshnode.core.provider.ProviderCore`, right after it
knows the capability exists and before anything else about the request is looked at, so a
caller that may not use a capability learns nothing more and costs nothing more than a
dictionary lookup or two. The requester is the verified sender of the task channel (its
Ed25519 key), never a field of the request.

:class:`Allow` combines, all of which must hold:

* **members only** (``members=True``, the default): the requester is a current member of
  this node's membership view, alive or suspect. A fresh key that never joined, or a
  member this node holds dead or departed, is refused. A capability that must serve
  strangers says so with ``Allow.anyone()``; nothing else turns the membership check off
  without naming who is let in instead (``members=False`` needs ``nodes`` or ``roles``).
* **who** (``nodes`` and ``roles``; when either is given, one must match): the requester's
  node id is listed in ``nodes``, or it holds one of ``roles`` according to its membership
  certificate (:meth:`RequesterFacts.roles_of`). Roles are ``None`` when the mesh has no
  authority issuing certificates (or this node has none for the requester): a role rule is
  then unsatisfiable — it refuses rather than guesses — while ``nodes`` still works.
* **minimum trust** (``min_trust`` > 0): this node's trust view of the requester (the one
  routing uses; a peer nobody rated has :data:`~meshnode.core.router.DEFAULT_TRUST`) is at
  least ``min_trust``. Cheap rules first: trust is looked up last, only when every other
  rule passed.

``Allow.anyone()`` admits every requester, member or not, and cannot be combined with the
other rules: a deliberately public capability is one explicit word in the code.

A refusal is ``rejected: forbidden``. It says which rule failed (not the list of who is
allowed) and is *not* the provider's failure: the requester's breaker and opinion count it
as an honest refusal (an ABANDONED attempt, scored nothing) and move on to the next
candidate. The policy stays on the provider: the signed manifest says nothing about it, so
the allow list (node ids, roles) never travels. A requester that is refused pays one round
trip and tries the next candidate; marking capabilities "restricted" in manifests would
save that round trip only for callers who are refused anyway, while telling everyone
which capabilities are worth attacking.

:class:`Quota` bounds one requester's use of one capability: ``max_concurrent`` running and
reserved tasks at once (None: only the node-wide fair share applies, see
:mod:`meshnode.core.provider`) and ``per_minute`` requests (a token bucket of that many
tokens refilled at ``per_minute / 60`` a second; None: no rate limit). A request over
either is ``rejected: quota``, which is not the provider's failure either. The defaults
(both None) leave the existing fair-share rule as the only per-requester bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "DEFAULT_POLICY",
    "MAX_ALLOW_ENTRIES",
    "MAX_QUOTA_CONCURRENT",
    "MAX_QUOTA_PER_MINUTE",
    "Allow",
    "CapabilityPolicy",
    "Quota",
    "RequesterFacts",
    "forbidden_reason",
]

MAX_ALLOW_ENTRIES = 100_000
"""Most node ids or roles one :class:`Allow` may list. The lists live in the provider's
memory only (never on the wire); the bound catches a mistake (an iterator of every known
id), not an attack."""

MAX_QUOTA_CONCURRENT = 10_000
"""Largest :attr:`Quota.max_concurrent` (the same ceiling as
``NodeConfig.max_concurrent_tasks``)."""

MAX_QUOTA_PER_MINUTE = 1_000_000
"""Largest :attr:`Quota.per_minute`."""


class RequesterFacts(Protocol):
    """What the provider may ask about a requester (implemented by
    :class:`~meshnode.core.node.NodeCore`)."""

    def is_member(self, node_id: str) -> bool:
        """Whether ``node_id`` is a current member (alive or suspect) of our view."""

    def roles_of(self, node_id: str) -> frozenset[str] | None:
        """The roles ``node_id``'s membership certificate grants; None when unknown (no
        mesh authority configured, or no valid certificate held for it)."""

    def trust_of(self, node_id: str, now: float) -> float:
        """Our trust view of ``node_id``, in [0, 1]."""


def _names(kind: str, values: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        raise TypeError(f"Allow {kind} must be a collection of strings, not one string")
    names = frozenset(values)
    if len(names) > MAX_ALLOW_ENTRIES:
        raise ValueError(f"Allow lists at most {MAX_ALLOW_ENTRIES} {kind}, got {len(names)}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"Allow {kind} must be non-empty strings, got {name!r}")
    return names


@dataclass(frozen=True, slots=True)
class Allow:
    """Who may call a capability (see the module docstring for the rules).

    ``Allow()`` — any current member (the default); ``Allow(nodes={id})`` — that member
    only; ``Allow(roles={"analyst"}, min_trust=0.6)`` — members certified as analysts
    whom we trust at least 0.6; ``Allow(nodes={id}, members=False)`` — that node even
    before it joined; ``Allow.anyone()`` — everybody.
    """

    nodes: frozenset[str] = field(default_factory=frozenset)
    """Node ids let in (when ``nodes`` or ``roles`` is non-empty, one must match)."""
    roles: frozenset[str] = field(default_factory=frozenset)
    """Certificate roles let in; unsatisfiable while roles are unknown (no authority)."""
    min_trust: float = 0.0
    """Least trust (our view, in [0, 1]) the requester needs; 0 checks nothing."""
    members: bool = True
    """The requester must be a current (alive or suspect) member of our view."""
    public: bool = False
    """Anyone at all (only through :meth:`anyone`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", _names("nodes", self.nodes))
        object.__setattr__(self, "roles", _names("roles", self.roles))
        trust = self.min_trust
        if isinstance(trust, bool) or not isinstance(trust, int | float) or not 0 <= trust <= 1:
            raise ValueError(f"Allow min_trust must be a number in [0, 1], got {trust!r}")
        object.__setattr__(self, "min_trust", float(trust))
        if not isinstance(self.members, bool) or not isinstance(self.public, bool):
            raise TypeError("Allow members and public must be booleans")
        if self.public and (self.nodes or self.roles or self.min_trust or self.members):
            raise ValueError("Allow.anyone() cannot be combined with other rules")
        if not self.public and not self.members and not (self.nodes or self.roles):
            raise ValueError(
                "Allow(members=False) must name nodes or roles; "
                "use Allow.anyone() for a deliberately public capability"
            )

    @classmethod
    def anyone(cls) -> Allow:
        """Every requester, member or not: a deliberately public capability."""
        return cls(members=False, public=True)

    @classmethod
    def only(cls, *node_ids: str, members: bool = True) -> Allow:
        """Just these node ids (members of our view, unless ``members=False``); at least
        one (``ValueError`` otherwise: an empty list would mean every member)."""
        if not node_ids:
            raise ValueError("Allow.only() needs at least one node id")
        return cls(nodes=frozenset(node_ids), members=members)

    def refusal(self, requester: str, facts: RequesterFacts, now: float) -> str | None:
        """Why ``requester`` may not call (None: it may). Cheap rules first."""
        if self.public:
            return None
        if self.members and not facts.is_member(requester):
            return "not a current member of this node's mesh"
        if (self.nodes or self.roles) and requester not in self.nodes:
            if not self.roles:
                return "not among the nodes allowed"
            roles = facts.roles_of(requester)
            if roles is None:
                return "roles unknown (no membership certificate from a mesh authority)"
            if roles.isdisjoint(self.roles):
                return "holds none of the roles allowed"
        if self.min_trust > 0.0:
            trust = facts.trust_of(requester, now)
            if not (math.isfinite(trust) and trust >= self.min_trust):
                return f"trust {trust:.3f} below the {self.min_trust:g} required"
        return None

    def describe(self) -> str:
        """A short operator-facing summary (counts, never the ids themselves)."""
        if self.public:
            return "anyone"
        parts = ["members"] if self.members else []
        if self.nodes:
            parts.append(f"{len(self.nodes)} node(s)")
        if self.roles:
            parts.append("roles " + ",".join(sorted(self.roles)))
        if self.min_trust:
            parts.append(f"trust>={self.min_trust:g}")
        return " ".join(parts)


def _optional_count(name: str, value: object, ceiling: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ceiling:
        raise ValueError(
            f"Quota {name} must be None or an integer in [1, {ceiling}], got {value!r}"
        )


@dataclass(frozen=True, slots=True)
class Quota:
    """How much one requester may use one capability (see the module docstring)."""

    max_concurrent: int | None = None
    """Running plus reserved tasks of this capability one requester may hold; None: only
    the node-wide fair share applies."""
    per_minute: int | None = None
    """Requests of this capability one requester may make per minute (token bucket,
    bursts up to this many); None: no rate limit."""

    def __post_init__(self) -> None:
        _optional_count("max_concurrent", self.max_concurrent, MAX_QUOTA_CONCURRENT)
        _optional_count("per_minute", self.per_minute, MAX_QUOTA_PER_MINUTE)


@dataclass(frozen=True, slots=True)
class CapabilityPolicy:
    """The provider-side rules of one capability: who may call it, and how much."""

    allow: Allow = field(default_factory=Allow)
    quota: Quota = field(default_factory=Quota)

    def __post_init__(self) -> None:
        if not isinstance(self.allow, Allow):
            raise TypeError(f"allow must be an Allow, got {type(self.allow).__name__}")
        if not isinstance(self.quota, Quota):
            raise TypeError(f"quota must be a Quota, got {type(self.quota).__name__}")


DEFAULT_POLICY = CapabilityPolicy()
"""Members only, no quota beyond the fair share: what a capability declared without
``allow=`` or ``quota=`` gets."""


def forbidden_reason(capability: str, why: str) -> str:
    """The detail of a ``forbidden`` refusal (the capability and the rule that failed)."""
    return f"{capability!r}: {why}"
