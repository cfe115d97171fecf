"""What a node shows about itself: ``/v1/health``, ``/v1/members``, ``/v1/trust``.

Theory of operation
-------------------
Pure reads of the node's core and shell state, shaped as JSON-ready dictionaries. Nothing
here changes state. :func:`degraded_reasons` is the one place that says why a running node
is ``degraded`` (HTTP 200 still): a driver restart or a failed effect within
:data:`~meshnode.runtime.driver.DEGRADED_WINDOW_S`, failing writes to the data dir, own
records not yet durable, an identity conflict the core reported within
:data:`~meshnode.runtime.driver.IDENTITY_CONFLICT_REPORT_S`, its own certificate revoked or
expired (with a mesh authority), or every seed unreachable
while no other member is known (``isolated``, see
:class:`~meshnode.core.health.SeedReachability`).

What stays here, and why: the degraded rule judges the shell's own health (its driver
task, its effects, its disk), which no core sees; every protocol state shown is read from
the core.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from meshnode.core.admission import Admission
from meshnode.core.config import format_address
from meshnode.core.member import Member, MemberState
from meshnode.runtime.driver import (
    DEGRADED_WINDOW_S,
    IDENTITY_CONFLICT_REPORT_S,
    STALE_KEYRING_FIX,
)

if TYPE_CHECKING:
    from meshnode.core.node import NodeCore
    from meshnode.runtime.node import MeshNode

__all__ = ["degraded_reasons", "health", "members_json", "trust_json"]


def degraded_reasons(node: MeshNode) -> list[str]:
    """Why ``node`` is not fully working (empty when it is)."""
    reasons: list[str] = []
    now = time.monotonic()
    driver = node.driver
    if driver is not None:
        if driver.died_at is not None and now - driver.died_at < DEGRADED_WINDOW_S:
            reasons.append(
                f"driver restarted {driver.restarts} time(s), last "
                f"{now - driver.died_at:.0f} s ago: {driver.error}"
            )
        if driver.effect_failed_at is not None and now - driver.effect_failed_at < (
            DEGRADED_WINDOW_S
        ):
            recent = [
                f"{kind} {error} x{count}"
                for (kind, error), count in sorted(driver.effect_failures.items())
                if now - driver.effect_last_failed[(kind, error)] < DEGRADED_WINDOW_S
            ]
            reasons.append("effects failing: " + ", ".join(recent))
    stale = driver.keyring_stale if driver is not None else None
    if stale is not None and now - stale < DEGRADED_WINDOW_S:
        reasons.append(STALE_KEYRING_FIX)
    persistence = node.persistence
    if persistence is not None and persistence.error is not None:
        since, error = persistence.error
        reasons.append(f"persistence failing for {time.time() - since:.0f} s: {error}")
    pending = node.core.durable_pending if persistence is not None else ()
    if pending:
        reasons.append(
            f"{len(pending)} own ledger record(s) not yet durable; new opinions are held back"
        )
    conflict = driver.identity_conflict if driver is not None else None
    if conflict is not None and now - conflict[0] < IDENTITY_CONFLICT_REPORT_S:
        reasons.append(
            f"identity conflict: another process announces this node's id at "
            f"{format_address(conflict[1])} ({now - conflict[0]:.0f} s ago)"
        )
    admission = node.core.admission
    own = admission.own_problem(time.time()) if admission is not None else None
    if own is not None:
        reasons.append(
            f"{own}: peers expel it; issue it a new certificate (meshnode authority issue) "
            "and restart it with --cert"
        )
    isolation = driver.seeds.reason(now) if driver is not None else None
    if isolation is not None:
        reasons.append(isolation)
    return reasons


def health(node: MeshNode) -> dict[str, Any]:
    """The ``/v1/health`` document."""
    core = node.core
    m = core.membership
    reasons = degraded_reasons(node)
    status = node.lifecycle.value
    if node.running:
        status = "degraded" if reasons else "ok"
    udp = node.udp
    guard = node.connection_guard
    tasks = node.tasks_or_none
    return {
        "status": status,
        "reasons": reasons,
        "node_id": node.node_id,
        "name": node.config.name,
        "address": format_address(m.address),
        "incarnation": m.incarnation,
        "members": {s.name.lower(): m.count(s) for s in MemberState},
        "manifests": len(core.manifests),
        "ledger_records": len(core.ledger),
        "local_health": m.health,
        "dropped": dict(sorted((udp.dropped if udp else Counter()).items())),
        "drops": dict(sorted(node.drops.items())),
        "seal": node.seal.snapshot(),
        "driver_restarts": node.driver_restarts,
        "effect_failures": {
            f"{kind}/{error}": count
            for (kind, error), count in sorted(node.effect_failures.items())
        },
        "connections": guard.snapshot() if guard is not None else {},
        "exchanges": core.mesh.exchanges,
        "counters": {
            "membership": dict(sorted(m.counters.items())),
            "mesh": dict(sorted(core.counters.items())),
            "tasks": dict(sorted(tasks.counters.items() if tasks is not None else ())),
        },
        "admission": _admission_json(core.admission),
        "manifest_vectors": (node._discovery.vectors_json() if node._discovery is not None else {}),
        "isolated": node.driver.seeds.isolated if node.driver is not None else False,
    }


def _admission_json(admission: Admission | None) -> dict[str, Any] | None:
    """Held certificates and revocations and the admission counters (None: the node runs
    without a mesh authority)."""
    if admission is None:
        return None
    return {
        "certificates": len(admission),
        "revocations": admission.revocation_count,
        "own_serial": admission.own.serial,
        "own_expires_at": admission.own.expires_at,
        "own_problem": admission.own_problem(time.time()),
        "counters": dict(sorted(admission.counters.items())),
    }


def members_json(node: MeshNode) -> list[dict[str, Any]]:
    """Every member we know: id, name (from its manifest), address, state, incarnation."""
    core = node.core
    out = []
    for member in core.members():
        manifest = core.manifests.get(member.node_id)
        out.append(
            {
                "node_id": member.node_id,
                "name": manifest.name if manifest else None,
                "address": format_address(member.address),
                "state": member.state.name.lower(),
                "incarnation": member.incarnation,
                **_rtt_json(core, member),
            }
        )
    return out


def _rtt_json(core: NodeCore, member: Member) -> dict[str, Any]:
    """A member's network coordinate as we hold it (ours for ourselves; None until it
    answers one of our direct probes), the round trip estimated from the coordinates and
    the last measured direct round trip, in milliseconds (None when unknown)."""
    coord = core.membership.peer_coordinate(member.node_id)
    estimated = core.estimated_rtt_ms(member.node_id)
    return {
        "coordinate": None
        if coord is None
        else {
            "vec": list(coord.vec),
            "error": coord.error,
            "adjustment": coord.adjustment,
            "height": coord.height,
        },
        "estimated_rtt_ms": None if estimated is None else round(estimated, 3),
        "measured_rtt_ms": None if member.rtt is None else round(member.rtt * 1000.0, 3),
    }


def trust_json(node: MeshNode) -> list[dict[str, Any]]:
    """Per peer: the trust we route by, our own opinion, and its breaker's state."""
    core = node.core
    now = time.time()
    view = core.trust_view(now)
    direct = core.direct_experience()
    breakers = core.breakers
    own = node.node_id
    peers = sorted(set(view) | set(direct) | {m.node_id for m in core.members()})
    out = []
    for peer in peers:
        if peer == own:
            continue
        manifest = core.manifests.get(peer)
        out.append(
            {
                "node_id": peer,
                "name": manifest.name if manifest else None,
                "trust": round(view.get(peer, 0.5), 6),
                "direct": None if peer not in direct else round(direct[peer], 6),
                "breaker": breakers.state(peer, now).name.lower(),
            }
        )
    return out
