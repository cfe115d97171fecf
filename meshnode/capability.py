"""The ``@capability`` decorator: declare what a node can do, next to the code that does it.

A decorated coroutine method is collected by :class:`~meshnode.MeshNode` when the node is
constructed; its metadata becomes a :class:`protocol.Capability` in the node's signed
manifest. ``MeshNode.add_capability(func, name=..., ...)`` does the same for a plain
coroutine without subclassing. The handler receives the task's input (a JSON-like dict) and
returns a JSON-like result.

Who may call it and how much (``allow=``, ``quota=``; see
:mod:`meshnode.core.authorization`) stay on this node: they are decided by the provider
before a task is accepted and never appear in the signed manifest. Without ``allow=`` a
capability serves current members of the mesh only; ``allow=Allow.anyone()`` makes it
deliberately public.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from meshnode.core.authorization import DEFAULT_POLICY, Allow, CapabilityPolicy, Quota
from protocol import Capability

Handler = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=Handler)

CAPABILITY_ATTR = "__meshnode_capability__"
POLICY_ATTR = "__meshnode_capability_policy__"


@dataclass(frozen=True, slots=True)
class CapabilitySpec:
    """A capability, the coroutine that serves it, and who may call it how much."""

    capability: Capability
    handler: Handler
    policy: CapabilityPolicy = DEFAULT_POLICY


def make_policy(allow: Allow | None = None, quota: Quota | None = None) -> CapabilityPolicy:
    """The :class:`CapabilityPolicy` for ``allow`` and ``quota`` (None: the defaults,
    members only and the fair share alone). Raises ``TypeError`` for anything else."""
    return CapabilityPolicy(
        allow=Allow() if allow is None else allow,
        quota=Quota() if quota is None else quota,
    )


def make_capability(
    *,
    name: str,
    description: str = "",
    input_schema: dict[str, Any] | None = None,
    output_schema: dict[str, Any] | None = None,
    avg_latency_ms: float = 0.0,
    cost_per_call_usd: float = 0.0,
    tags: Sequence[str] = (),
    examples: Sequence[str] = (),
) -> Capability:
    """Build a validated :class:`protocol.Capability` (raises ``LocalProtocolError``).
    ``examples``: a few requests in a user's words (see ``protocol.manifest.MAX_EXAMPLES``)."""
    if isinstance(examples, str):
        raise TypeError("examples must be a sequence of strings, not one string")
    return Capability(
        name=name,
        description=description,
        input_schema=input_schema,
        output_schema=output_schema,
        avg_latency_ms=avg_latency_ms,
        cost_per_call_usd=cost_per_call_usd,
        tags=tuple(tags),
        examples=tuple(examples),
    )


def capability(
    *,
    name: str | None = None,
    description: str = "",
    input_schema: dict[str, Any] | None = None,
    output_schema: dict[str, Any] | None = None,
    avg_latency_ms: float = 0.0,
    cost_per_call_usd: float = 0.0,
    tags: Sequence[str] = (),
    examples: Sequence[str] = (),
    allow: Allow | None = None,
    quota: Quota | None = None,
) -> Callable[[F], F]:
    """Mark a coroutine method of a ``MeshNode`` subclass as a capability.

    ``name`` defaults to the function's name; ``description`` to its docstring's first line.
    ``examples`` are a few requests it answers, in a user's words (discovery matches them).
    ``allow`` says who may call it (default: current members only); ``quota`` how much
    one requester may use it (default: the node-wide fair share alone).
    """
    policy = make_policy(allow, quota)

    def mark(func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"@capability needs an async function, got {func!r}")
        doc = (inspect.getdoc(func) or "").strip().splitlines()
        cap = make_capability(
            name=name or func.__name__,
            description=description or (doc[0] if doc else ""),
            input_schema=input_schema,
            output_schema=output_schema,
            avg_latency_ms=avg_latency_ms,
            cost_per_call_usd=cost_per_call_usd,
            tags=tags,
            examples=examples,
        )
        setattr(func, CAPABILITY_ATTR, cap)
        setattr(func, POLICY_ATTR, policy)
        return cast(F, func)

    return mark


def collect_capabilities(obj: object) -> list[CapabilitySpec]:
    """Every ``@capability`` method bound on ``obj``, in name order."""
    found: dict[str, CapabilitySpec] = {}
    for cls in reversed(type(obj).__mro__):
        for attr, value in vars(cls).items():
            cap = getattr(value, CAPABILITY_ATTR, None)
            if isinstance(cap, Capability):
                policy = getattr(value, POLICY_ATTR, DEFAULT_POLICY)
                found[cap.name] = CapabilitySpec(cap, getattr(obj, attr), policy)
    return [found[k] for k in sorted(found)]
