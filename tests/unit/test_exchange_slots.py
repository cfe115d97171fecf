"""The core decides when a manifest fetch or a push-pull may start, and when a fetch stops.

Invariants (NodeCore on a virtual clock, real Ed25519 signers, no I/O):
* at most ``MAX_CONCURRENT_FETCHES`` ``FetchManifest`` and ``MAX_CONCURRENT_PUSH_PULLS``
  ``StartPushPull`` effects are outstanding; the others wait, in the order they were
  wanted, and each end (``fetch_answered`` ending a fetch, ``fetch_abandoned``,
  ``push_pull_done``) emits exactly the next one;
* a node (an address) waits in the queue once: wanted again at a newer version, the
  queued fetch asks for the newer one; the queues are bounded and a fetch dropped for
  want of room may be asked for again;
* a fetch stops once the store holds the version asked for; a copy that does not verify,
  an older version, a manifest of another node or no answer sends the shell to the next
  source; after the last source the fetch failed and the node may be asked for again;
  a manifest refused for a reason no source can change (not a member) ends it.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from meshnode.core import NodeConfig
from meshnode.core import mesh as mesh_module
from meshnode.core.effects import FetchManifest, StartPushPull
from meshnode.core.member import Member
from meshnode.core.membership import Membership
from meshnode.core.mesh import MAX_CONCURRENT_FETCHES, MAX_CONCURRENT_PUSH_PULLS, FetchStep
from meshnode.core.node import NodeCore
from protocol import Capability, Identity, Manifest, ManifestRumor

NOW = 1_000.0
SIGNERS = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(16)]
IDS = [s.node_id for s in SIGNERS]
TELLER = ("10.0.0.99", 7946)
"""The address a rumor arrives from (the rumor's sender, asked first)."""


def owner(i: int) -> tuple[str, int]:
    return (f"10.0.0.{i + 1}", 7946)


def node(members: int = 16) -> NodeCore:
    """Node 0, with nodes 1..members-1 alive in its table and no manifest of theirs."""
    config = NodeConfig.lan()
    core = NodeCore(config, SIGNERS[0], host="10.0.0.1", port=7946, rng=random.Random(0), now=NOW)
    table: dict[str, Member] = {}
    for i in range(members):
        m = Membership(
            config, SIGNERS[i], host=owner(i)[0], port=7946, rng=random.Random(i), now=NOW
        )
        me = m.member(IDS[i])
        assert me is not None
        table[IDS[i]] = me
    core.adopt_converged(table, core.manifests, (), NOW)
    core.take_effects()
    return core


def manifest(i: int, version: int = 1) -> Manifest:
    return Manifest.create(
        SIGNERS[i],
        name=f"n{i}",
        capabilities=[Capability(name="echo", description="repeat")],
        version=version,
    )


def rumor(i: int, version: int = 1) -> ManifestRumor:
    return ManifestRumor(IDS[i], version, manifest(i, version).digest())


def fetches(core: NodeCore) -> list[FetchManifest]:
    return [e for e in core.take_effects() if isinstance(e, FetchManifest)]


def hear(core: NodeCore, *rumors: ManifestRumor) -> list[FetchManifest]:
    core.receive(IDS[1], list(rumors), TELLER, NOW)
    return fetches(core)


# ============================================================================ fetch slots


def test_fetches_beyond_the_cap_wait_and_start_one_per_end_in_order() -> None:
    """Twelve wanted manifests: eight fetches go out, four wait; each fetch that ends
    releases its slot to the oldest waiting one, and nothing else."""
    core = node()
    wanted = list(range(2, 14))
    started = hear(core, *(rumor(i) for i in wanted))
    assert [f.node for f in started] == [IDS[i] for i in wanted[:MAX_CONCURRENT_FETCHES]]
    assert core.mesh.exchanges["fetches_queued"] == len(wanted) - MAX_CONCURRENT_FETCHES
    order: list[str] = []
    running = list(started)
    while running:
        fetch = running.pop(0)
        i = IDS.index(fetch.node)
        step = core.fetch_answered(fetch, fetch.sources[0], manifest(i), NOW)
        assert step == FetchStep(None)
        more = fetches(core)
        assert len(more) <= 1
        running.extend(more)
        order.extend(f.node for f in more)
        assert core.mesh.exchanges["fetches_running"] <= MAX_CONCURRENT_FETCHES
    assert order == [IDS[i] for i in wanted[MAX_CONCURRENT_FETCHES:]]
    assert all(core.manifests.get(IDS[i]) is not None for i in wanted)
    assert core.mesh.exchanges == {
        "fetches_running": 0,
        "fetches_queued": 0,
        "push_pulls_running": 0,
        "push_pulls_queued": 0,
    }


def test_a_node_waits_once_and_a_newer_version_raises_the_queued_fetch() -> None:
    core = node()
    hear(core, *(rumor(i) for i in range(2, 2 + MAX_CONCURRENT_FETCHES)))  # slots full
    assert hear(core, rumor(12)) == []
    assert hear(core, rumor(12, version=3)) == []
    assert core.mesh.exchanges["fetches_queued"] == 1
    core.fetch_abandoned(FetchManifest(IDS[2], 1, (owner(2),)), NOW)
    (fetch,) = fetches(core)
    assert (fetch.node, fetch.version) == (IDS[12], 3)


def test_an_abandoned_fetch_frees_its_slot_and_may_be_asked_again() -> None:
    core = node()
    (fetch,) = hear(core, rumor(2))
    assert hear(core, rumor(2)) == []  # coalesced: it is being fetched
    core.fetch_abandoned(fetch, NOW)
    assert core.mesh.exchanges["fetches_running"] == 0
    assert [f.node for f in hear(core, rumor(2))] == [IDS[2]]


def test_a_full_fetch_queue_drops_the_new_fetch_and_lets_it_be_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mesh_module, "MAX_FETCHES_QUEUED", 1)
    core = node()
    hear(core, *(rumor(i) for i in range(2, 2 + MAX_CONCURRENT_FETCHES)))
    assert hear(core, rumor(12), rumor(13)) == []
    assert core.mesh.exchanges["fetches_queued"] == 1
    assert core.counters["fetches_skipped_queue_full"] == 1
    core.fetch_abandoned(FetchManifest(IDS[2], 1, (owner(2),)), NOW)  # node 12 starts
    (started,) = fetches(core)
    assert started.node == IDS[12]
    assert hear(core, rumor(13)) == []  # the next rumor of it asks again: it waits now
    core.fetch_abandoned(started, NOW)
    assert [f.node for f in fetches(core)] == [IDS[13]]


# ============================================================================ fetch steps


def _forged(i: int, version: int) -> Manifest:
    real = manifest(i, version)
    return dataclasses.replace(real, signature=bytes(64))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("asked", FetchStep(None)),
        ("newer", FetchStep(None)),
        ("older", FetchStep(owner(2))),
        ("forged", FetchStep(owner(2))),
        ("other_node", FetchStep(owner(2))),
        ("nothing", FetchStep(owner(2))),
    ],
)
def test_what_the_first_source_answered_decides_the_next_step(
    answer: str, expected: FetchStep
) -> None:
    """Asked for version 2 from the rumor's sender first, then the owner.

    On the unfixed rule (the shells stopped once the answer's version was the one asked
    for, verified or not): the forged copy ended the fetch, FetchStep(None), and the owner
    was never asked."""
    core = node()
    (fetch,) = hear(core, rumor(2, version=2))
    assert fetch.sources == (TELLER, owner(2))
    answers: dict[str, Any] = {
        "asked": manifest(2, 2),
        "newer": manifest(2, 3),
        "older": manifest(2, 1),
        "forged": _forged(2, 2),
        "other_node": manifest(3, 2),
        "nothing": None,
    }
    step = core.fetch_answered(fetch, TELLER, answers[answer], NOW)
    assert step == expected
    running = core.mesh.exchanges["fetches_running"]
    assert running == (0 if expected.source is None else 1)
    if answer == "other_node":
        assert core.counters["fetch_answers_wrong_node"] == 1
        assert core.manifests.get(IDS[3]) is None
    if answer == "forged":
        assert core.manifests.get(IDS[2]) is None
        # The owner's real copy then ends it.
        assert core.fetch_answered(fetch, owner(2), manifest(2, 2), NOW) == FetchStep(None)
        assert core.manifests.get(IDS[2]) == manifest(2, 2)


def test_no_source_delivering_fails_the_fetch_and_the_node_may_be_asked_again() -> None:
    core = node()
    (fetch,) = hear(core, rumor(2))
    assert core.fetch_answered(fetch, TELLER, None, NOW) == FetchStep(owner(2))
    assert core.fetch_answered(fetch, owner(2), None, NOW) == FetchStep(None, failed=True)
    assert core.counters["fetches_failed"] == 1
    assert core.mesh.exchanges["fetches_running"] == 0
    assert [f.node for f in hear(core, rumor(2))] == [IDS[2]]


def test_an_answer_from_a_source_not_in_the_fetch_ends_it() -> None:
    core = node()
    (fetch,) = hear(core, rumor(2))
    step = core.fetch_answered(fetch, ("10.9.9.9", 1), None, NOW)
    assert step == FetchStep(None, failed=True)
    assert core.mesh.exchanges["fetches_running"] == 0


# ============================================================================ push-pull slots


def test_push_pulls_beyond_the_cap_wait_and_start_one_per_end() -> None:
    """A join through six seeds: four exchanges go out, two wait, one per end."""
    core = NodeCore(
        NodeConfig.lan(), SIGNERS[0], host="10.0.0.1", port=7946, rng=random.Random(0), now=NOW
    )
    seeds = [(f"10.0.1.{i}", 7946) for i in range(1, 7)]
    core.join(seeds, NOW)
    started = [e for e in core.take_effects() if isinstance(e, StartPushPull)]
    assert [e.addr for e in started] == seeds[:MAX_CONCURRENT_PUSH_PULLS]
    assert core.mesh.exchanges["push_pulls_queued"] == 2
    later: list[tuple[str, int]] = []
    for _ in range(3):
        core.push_pull_done(NOW)
        later += [e.addr for e in core.take_effects() if isinstance(e, StartPushPull)]
    assert later == seeds[MAX_CONCURRENT_PUSH_PULLS:]
    assert core.mesh.exchanges["push_pulls_running"] == MAX_CONCURRENT_PUSH_PULLS - 1
    for _ in range(10):  # more ends than starts never make room for more than the cap
        core.push_pull_done(NOW)
    assert core.mesh.exchanges["push_pulls_running"] == 0
    core.join(seeds, NOW)
    again = [e for e in core.take_effects() if isinstance(e, StartPushPull)]
    assert len(again) == MAX_CONCURRENT_PUSH_PULLS


def test_an_address_waits_once(monkeypatch: pytest.MonkeyPatch) -> None:
    core = NodeCore(
        NodeConfig.lan(), SIGNERS[0], host="10.0.0.1", port=7946, rng=random.Random(0), now=NOW
    )
    seeds = [(f"10.0.1.{i}", 7946) for i in range(1, 6)]
    core.join(seeds, NOW)
    core.take_effects()
    assert core.mesh.exchanges["push_pulls_queued"] == 1
    core.join(seeds, NOW)  # the four running wait once each; the fifth is waiting already
    assert core.mesh.exchanges["push_pulls_queued"] == len(seeds)
    monkeypatch.setattr(mesh_module, "MAX_PUSH_PULLS_QUEUED", len(seeds))
    core.join([("10.0.2.1", 7946)], NOW)
    assert core.mesh.exchanges["push_pulls_queued"] == len(seeds)
    assert core.counters["push_pulls_skipped_queue_full"] == 1


# ============================================================================ retries


def _fail(core: NodeCore, fetch: FetchManifest, now: float) -> None:
    for source in fetch.sources:
        core.fetch_answered(fetch, source, None, now)


def test_a_fetch_no_source_answered_is_retried_with_doubling_delays_then_given_up() -> None:
    """No rumor about node 2 is heard again; the core asks for it on its own, three
    times (5, 10 and 20 s after each failure), from the owner too, then stops.

    On the unfixed code: nothing was asked after the first failure (only anti-entropy
    could bring the manifest), so the first tick found no FetchManifest."""
    core = node()
    (fetch,) = hear(core, rumor(2))
    now = NOW
    gaps = []
    for _ in range(mesh_module.FETCH_RETRIES):
        _fail(core, fetch, now)
        due = core.next_deadline()
        assert due <= now + mesh_module.FETCH_RETRY_AFTER * 2 ** len(gaps)
        core.tick(now + 1.0)
        assert fetches(core) == []  # not yet
        retry_at = now + mesh_module.FETCH_RETRY_AFTER * 2 ** len(gaps)
        core.tick(retry_at)
        (fetch,) = fetches(core)
        assert fetch.node == IDS[2] and owner(2) in fetch.sources
        gaps.append(retry_at - now)
        now = retry_at
    assert gaps == [5.0, 10.0, 20.0]
    _fail(core, fetch, now)
    core.tick(now + 100.0)
    assert fetches(core) == []
    assert core.counters["fetch_retries"] == 3
    assert core.counters["fetch_retries_exhausted"] == 1


def test_a_retry_is_forgotten_once_the_manifest_arrived_another_way() -> None:
    core = node()
    (fetch,) = hear(core, rumor(2))
    _fail(core, fetch, NOW)
    assert core.mesh.manifest_fetched(manifest(2), NOW + 1.0)  # e.g. by push-pull
    core.tick(NOW + 60.0)
    assert fetches(core) == []
    assert core.counters["fetch_retries"] == 0


def test_a_retry_that_succeeds_ends_the_retries() -> None:
    core = node()
    (fetch,) = hear(core, rumor(2))
    _fail(core, fetch, NOW)
    core.tick(NOW + mesh_module.FETCH_RETRY_AFTER)
    (retry,) = fetches(core)
    assert core.fetch_answered(retry, retry.sources[0], manifest(2), NOW + 5.0) == FetchStep(None)
    core.tick(NOW + 100.0)
    assert fetches(core) == []
    assert core.next_deadline() > NOW + 5.0
