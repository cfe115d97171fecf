"""Observers of a simulation: ground truth against every node's view, kept incrementally.

Theory of operation
-------------------
The simulator knows the truth — which processes are up, which left, which manifest version
each node last published, which ledger record is the latest for each key — and every node
reports its view through the effects its core emits. :class:`Tracker` compares the two as
the effects stream by, in O(1) per effect, so that "has the mesh converged?" is a counter
test and the exact instant of convergence is known without ever scanning N² views.

Definitions (the JSON report uses the same words):

* A node is **live** while its process runs (or is paused) and it has not left. Only live
  nodes count as observers, and the expected view of a subject is *alive* if it is live,
  *gone* (dead, left, or forgotten) otherwise.
* **Membership** has converged when every live observer sees every live subject alive and
  no other subject alive or suspect. ``mismatch[v]`` counts the subjects ``v`` sees wrongly;
  it moves with each ``MemberChanged`` (whose old and new states say exactly what changed)
  and is recomputed for one subject across all observers when the truth about that subject
  changes (a crash, a leave, a restart: O(N) each, rare).
* **Manifests** have converged when every live observer holds, for every live subject, the
  manifest version that subject last published, and nothing for the others. A mirror of
  the versions each observer holds (one small dict per observer) gives the old value that
  ``ManifestChanged`` does not carry.
* The **ledger** has converged when every live node holds the latest record of every
  (observer, subject) key; ``missing[key]`` counts the live nodes that lack it, fed by the
  ``PersistRecords`` effects that report every record a ledger accepted.
* A **false suspicion** (false death) is a ``Suspect`` (``Dead``) rumor, counted once per
  (subject, incarnation), signed while the subject was live and the network let accuser and
  subject reach each other. Accusations across a partition are counted apart, as
  *partitioned*; accusations of a process that is down are correct detections.
* **Failure detection**: for every crash, the time until the first live node suspects and
  declares the node dead, and until no live node sees it alive or suspect any more.

Convergence instants are recorded relative to a *mark* (the start of a phase, such as the
heal of a partition): the first time after the mark that each kind converged, and the first
time all three held at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from meshnode.core.effects import MemberChanged, MemberEvent
from meshnode.core.membership import MemberState
from meshnode.core.mesh import FetchManifest, ManifestChanged, PersistRecords
from protocol import Dead, LedgerRecord, Manifest, Suspect

if TYPE_CHECKING:
    from simulations.cluster import SimNode

__all__ = ["Accusations", "Detection", "RumorWatch", "Tracker"]

_ALIVE = MemberState.ALIVE
_SUSPECT = MemberState.SUSPECT
_DEAD = MemberState.DEAD
_LEFT = MemberState.LEFT
_SUSPECT_EVENT = MemberEvent.SUSPECT
_DEAD_EVENT = MemberEvent.DEAD

LedgerKey = tuple[str, str]


def _ok(state: MemberState | None, live: bool) -> bool:
    """Is ``state`` the right view of a subject that is (or is not) live?"""
    if live:
        return state is _ALIVE
    return state is None or state is _DEAD or state is _LEFT


@dataclasses.dataclass(slots=True)
class Detection:
    """How the mesh noticed one crash (times are absolute virtual seconds)."""

    subject: int
    crashed_at: float
    first_suspect: float | None = None
    first_dead: float | None = None
    all_gone: float | None = None


@dataclasses.dataclass(slots=True)
class Accusations:
    """Distinct (subject, incarnation) accusations by kind, classified against the truth."""

    false: int = 0
    """The subject was live and reachable from the accuser."""
    partitioned: int = 0
    """The subject was live but the network separated it from the accuser."""
    correct: int = 0
    """The subject was down or had left."""
    false_views: int = 0
    """Observer-level transitions into this state about a live, reachable subject."""
    false_subjects: dict[int, int] = dataclasses.field(default_factory=dict)
    """Slot -> number of false accusations of it (insertion order: first accused first)."""


@dataclasses.dataclass(slots=True)
class RumorWatch:
    """When each live node heard of, and applied, one manifest version."""

    subject: int
    node_id: str
    version: int
    published_at: float
    heard: dict[int, float] = dataclasses.field(default_factory=dict)
    applied: dict[int, float] = dataclasses.field(default_factory=dict)


class Tracker:
    """Ground truth and convergence counters of one simulation."""

    def __init__(
        self,
        nodes: Sequence[SimNode],
        slot_of: dict[str, int],
        now: Callable[[], float],
        reachable: Callable[[int, int], bool],
        violation: Callable[[str], None],
    ) -> None:
        self._nodes = nodes
        self._slot_of = slot_of
        self._now = now
        self._reachable = reachable
        self._violation = violation
        self.live: list[bool] = []
        self.live_count = 0
        # membership
        self.mismatch: list[int] = []
        self.unconverged = 0
        self.live_views: list[int] = []
        # manifests
        self.expected: list[int | None] = []
        self.published: list[dict[int, bytes]] = []
        self.held: list[dict[int, int]] = []
        self.m_mismatch: list[int] = []
        self.m_unconverged = 0
        # ledger
        self.latest: dict[LedgerKey, LedgerRecord] = {}
        self.created: dict[tuple[str, int], LedgerRecord] = {}
        self.missing: dict[LedgerKey, int] = {}
        self.ledger_missing = 0
        # accusations and detections
        self.suspicions = Accusations()
        self.deaths = Accusations()
        self._accused: dict[tuple[int, int, int], None] = {}
        self.detections: list[Detection] = []
        self._open_detection: dict[int, Detection] = {}
        self.max_incarnation: list[int] = []
        # phases
        self.mark_time = 0.0
        self.converged_at: dict[str, float | None] = {}
        self.rumor: RumorWatch | None = None
        self.mark()

    def reset_accusations(self) -> None:
        """Count false suspicions and deaths from now on (the start of a fault phase)."""
        self.suspicions = Accusations()
        self.deaths = Accusations()

    # ------------------------------------------------------------------ slots

    def add_slot(self) -> None:
        """A new host slot exists (not live yet)."""
        self.live.append(False)
        self.mismatch.append(0)
        self.live_views.append(0)
        self.expected.append(None)
        self.published.append({})
        self.held.append({})
        self.m_mismatch.append(0)
        self.max_incarnation.append(-1)

    # ------------------------------------------------------------------ phases

    def mark(self, origin: float | None = None) -> None:
        """Start a phase: convergence is looked for from now on, and its times are
        reported relative to ``origin`` (default: now)."""
        self.mark_time = self._now() if origin is None else origin
        self.converged_at = {"membership": None, "manifests": None, "ledger": None, "all": None}
        self._check_converged()

    @property
    def membership_converged(self) -> bool:
        return self.unconverged == 0

    @property
    def manifests_converged(self) -> bool:
        return self.m_unconverged == 0

    @property
    def ledger_converged(self) -> bool:
        return self.ledger_missing == 0

    @property
    def converged(self) -> bool:
        """Membership, manifests and ledger all agree with the truth on every live node."""
        return self.unconverged == 0 and self.m_unconverged == 0 and self.ledger_missing == 0

    def since_mark(self, kind: str) -> float | None:
        """Seconds from the mark to the first convergence of ``kind`` after it (None: not
        yet). ``kind`` is membership, manifests, ledger or all."""
        at = self.converged_at.get(kind)
        return None if at is None else at - self.mark_time

    def _check_converged(self) -> None:
        at = self.converged_at
        if at["all"] is not None:
            return
        now = self._now()
        if at["membership"] is None and self.unconverged == 0:
            at["membership"] = now
        if at["manifests"] is None and self.m_unconverged == 0:
            at["manifests"] = now
        if at["ledger"] is None and self.ledger_missing == 0:
            at["ledger"] = now
        if self.unconverged == 0 and self.m_unconverged == 0 and self.ledger_missing == 0:
            at["all"] = now

    def _bump(self, v: int, delta: int) -> None:
        before = self.mismatch[v]
        after = before + delta
        self.mismatch[v] = after
        if before == 0:
            self.unconverged += 1
        elif after == 0:
            self.unconverged -= 1
            if self.unconverged == 0:
                self._check_converged()

    def _bump_m(self, v: int, delta: int) -> None:
        before = self.m_mismatch[v]
        after = before + delta
        self.m_mismatch[v] = after
        if before == 0:
            self.m_unconverged += 1
        elif after == 0:
            self.m_unconverged -= 1
            if self.m_unconverged == 0:
                self._check_converged()

    # ------------------------------------------------------------------ truth changes

    def up(self, node: SimNode) -> None:
        """``node`` (just started, its persisted state restored) is a live observer and
        subject. Its manifest is not published yet (see :meth:`published_manifest`)."""
        slot = node.slot
        core = node.core
        assert core is not None
        if self.live[slot]:
            return
        nodes = self._nodes
        live = self.live
        mismatch = 0
        m_mismatch = 0
        held: dict[int, int] = {}
        for manifest in core.manifests.manifests():
            other = self._slot_of.get(manifest.node_id)
            if other is not None and other != slot:
                held[other] = manifest.version
        for other in range(len(nodes)):
            if other == slot:
                continue
            member = core.membership.member(nodes[other].node_id)
            state = member.state if member is not None else None
            if not _ok(state, live[other]):
                mismatch += 1
            if state is _ALIVE or state is _SUSPECT:
                self.live_views[other] += 1
            if held.get(other) != self.expected[other]:
                m_mismatch += 1
        self.held[slot] = held
        self.mismatch[slot] = mismatch
        self.m_mismatch[slot] = m_mismatch
        if mismatch:
            self.unconverged += 1
        if m_mismatch:
            self.m_unconverged += 1
        ledger = core.ledger
        for key, record in self.latest.items():
            if ledger.get(*key) != record:
                self.missing[key] += 1
                self.ledger_missing += 1
        self.live[slot] = True
        self.live_count += 1
        self._truth_changed(slot, False, True, None, None)
        self.max_incarnation[slot] = max(self.max_incarnation[slot], core.membership.incarnation)
        self._check_converged()

    def down(self, node: SimNode) -> None:
        """``node`` crashed or left: it stops being a live observer and subject."""
        slot = node.slot
        if not self.live[slot]:
            return
        core = node.core
        assert core is not None
        for member in core.membership.members():
            other = self._slot_of.get(member.node_id)
            if other is None or other == slot:
                continue
            if member.state is _ALIVE or member.state is _SUSPECT:
                self.live_views[other] -= 1
                if self.live_views[other] == 0:
                    self._all_gone(other)
        if self.mismatch[slot]:
            self.unconverged -= 1
        self.mismatch[slot] = 0
        if self.m_mismatch[slot]:
            self.m_unconverged -= 1
        self.m_mismatch[slot] = 0
        self.held[slot] = {}
        ledger = core.ledger
        for key, record in self.latest.items():
            if ledger.get(*key) != record:
                self.missing[key] -= 1
                self.ledger_missing -= 1
        self.live[slot] = False
        self.live_count -= 1
        expected = self.expected[slot]
        self.expected[slot] = None
        self._truth_changed(slot, True, False, expected, None)
        if self.live_views[slot] == 0:
            self._all_gone(slot)
        self._check_converged()

    def crashed(self, node: SimNode) -> None:
        """Record a crash, for failure-detection times (call before :meth:`down`)."""
        detection = Detection(node.slot, self._now())
        self.detections.append(detection)
        self._open_detection[node.slot] = detection

    def restarted(self, node: SimNode) -> None:
        """``node`` runs again: its last crash is no longer being detected."""
        self._open_detection.pop(node.slot, None)

    def published_manifest(self, node: SimNode, manifest: Manifest) -> None:
        """``node`` (live) published ``manifest``: it is what everyone should hold now."""
        slot = node.slot
        self.published[slot][manifest.version] = manifest.signature
        old = self.expected[slot]
        self.expected[slot] = manifest.version
        if self.live[slot]:
            self._truth_changed(slot, True, True, old, manifest.version)
        self._check_converged()

    def _truth_changed(
        self,
        subject: int,
        old_live: bool,
        new_live: bool,
        old_expected: int | None,
        new_expected: int | None,
    ) -> None:
        """Recheck every live observer's view of ``subject`` against the new truth. Views
        did not change, so only this subject's contribution to each count moves."""
        node_id = self._nodes[subject].node_id
        live_changed = old_live != new_live
        manifest_changed = old_expected != new_expected
        if not (live_changed or manifest_changed):
            return
        for v in range(len(self._nodes)):
            if v == subject or not self.live[v]:
                continue
            if live_changed:
                core = self._nodes[v].core
                assert core is not None
                member = core.membership.member(node_id)
                state = member.state if member is not None else None
                delta = (not _ok(state, new_live)) - (not _ok(state, old_live))
                if delta:
                    self._bump(v, delta)
            if manifest_changed:
                held = self.held[v].get(subject)
                delta = (held != new_expected) - (held != old_expected)
                if delta:
                    self._bump_m(v, delta)

    # ------------------------------------------------------------------ effects

    def member_changed(self, node: SimNode, effect: MemberChanged) -> None:
        """A ``MemberChanged`` effect of ``node``'s core."""
        v = node.slot
        subject = self._slot_of.get(effect.node_id)
        if subject is None:
            self._violation(f"{node.name} learned of a node id no simulated node has")
            return
        member = effect.member
        if member.incarnation > self.max_incarnation[subject] and subject != v:
            self._violation(
                f"{node.name} holds {self._nodes[subject].name} at incarnation "
                f"{member.incarnation}, above any it ever announced "
                f"({self.max_incarnation[subject]})"
            )
        if subject == v:
            if member.incarnation > self.max_incarnation[v]:
                self.max_incarnation[v] = member.incarnation
            if effect.new_state is not _ALIVE and not node.leaving:
                self._violation(f"{node.name} sees itself {effect.new_state}")
            return
        kind = effect.kind
        if kind is _SUSPECT_EVENT or kind is _DEAD_EVENT:
            rumor = member.rumor
            if isinstance(rumor, Suspect | Dead):
                self._accusation(v, subject, rumor)
        if not self.live[v]:
            return
        old, new = effect.old_state, effect.new_state
        live = self.live[subject]
        delta = (not _ok(new, live)) - (not _ok(old, live))
        if delta:
            self._bump(v, delta)
        was = old is _ALIVE or old is _SUSPECT
        now_live = new is _ALIVE or new is _SUSPECT
        if was != now_live:
            self.live_views[subject] += 1 if now_live else -1
            if not now_live and self.live_views[subject] == 0:
                self._all_gone(subject)
        if not live:
            detection = self._open_detection.get(subject)
            if detection is not None:
                now = self._now()
                if new is _SUSPECT and detection.first_suspect is None:
                    detection.first_suspect = now
                elif new is _DEAD:
                    if detection.first_suspect is None:
                        detection.first_suspect = now
                    if detection.first_dead is None:
                        detection.first_dead = now

    def _accusation(self, observer: int, subject: int, rumor: Suspect | Dead) -> None:
        is_dead = isinstance(rumor, Dead)
        tally = self.deaths if is_dead else self.suspicions
        accuser = self._slot_of.get(rumor.accuser, -1)
        live = self.live[subject]
        if (
            live
            and self.live[observer]
            and self._reachable(observer, subject)
            and self._reachable(subject, observer)
        ):
            tally.false_views += 1
        key = (subject, rumor.incarnation, 1 if is_dead else 0)
        if key in self._accused:
            return
        self._accused[key] = None
        if not live:
            tally.correct += 1
        elif (
            accuser >= 0 and self._reachable(accuser, subject) and self._reachable(subject, accuser)
        ):
            tally.false += 1
            tally.false_subjects[subject] = tally.false_subjects.get(subject, 0) + 1
        else:
            tally.partitioned += 1

    def manifest_changed(self, node: SimNode, effect: ManifestChanged) -> None:
        """A ``ManifestChanged`` effect of ``node``'s core."""
        v = node.slot
        subject = self._slot_of.get(effect.node)
        if subject is None or subject == v:
            return
        manifest = effect.manifest
        if manifest is not None:
            signature = self.published[subject].get(manifest.version)
            if signature != manifest.signature:
                self._violation(
                    f"{node.name} holds a manifest of {self._nodes[subject].name} "
                    f"(version {manifest.version}) that node never published"
                )
            rumor = self.rumor
            if (
                rumor is not None
                and subject == rumor.subject
                and manifest.version >= rumor.version
                and v not in rumor.applied
            ):
                now = self._now()
                rumor.applied[v] = now
                rumor.heard.setdefault(v, now)
        if not self.live[v]:
            return
        held = self.held[v]
        old = held.get(subject)
        new = manifest.version if manifest is not None else None
        if new is None:
            held.pop(subject, None)
        else:
            held[subject] = new
        expected = self.expected[subject]
        delta = (new != expected) - (old != expected)
        if delta:
            self._bump_m(v, delta)

    def fetch_started(self, node: SimNode, effect: FetchManifest) -> None:
        """A ``FetchManifest`` effect: ``node`` heard a manifest rumor it wants."""
        rumor = self.rumor
        if (
            rumor is not None
            and effect.node == rumor.node_id
            and effect.version >= rumor.version
            and node.slot not in rumor.heard
        ):
            rumor.heard[node.slot] = self._now()

    def record_created(self, record: LedgerRecord) -> None:
        """Its observer signed ``record`` (and holds it): everyone else should get it."""
        key = (record.observer, record.subject)
        self.created[(record.observer, record.seq)] = record
        self.ledger_missing -= self.missing.get(key, 0)
        self.latest[key] = record
        observer = self._slot_of[record.observer]
        missing = self.live_count - (1 if self.live[observer] else 0)
        self.missing[key] = missing
        self.ledger_missing += missing
        self._check_converged()

    def records_persisted(self, node: SimNode, effect: PersistRecords) -> None:
        """A ``PersistRecords`` effect: ``node``'s ledger accepted these records."""
        if effect.durable:
            return  # its own opinion, accounted for by record_created
        live = self.live[node.slot]
        for record in effect.records:
            created = self.created.get((record.observer, record.seq))
            if created != record:
                self._violation(f"{node.name} accepted a ledger record its observer never signed")
                continue
            key = (record.observer, record.subject)
            if live and self.latest.get(key) == record:
                self.missing[key] -= 1
                self.ledger_missing -= 1
                if self.ledger_missing == 0:
                    self._check_converged()

    def watch_rumor(self, node: SimNode, manifest: Manifest) -> RumorWatch:
        """Time the spread of ``manifest`` (just published by ``node``)."""
        self.rumor = RumorWatch(node.slot, node.node_id, manifest.version, self._now())
        return self.rumor

    def _all_gone(self, subject: int) -> None:
        detection = self._open_detection.get(subject)
        if detection is not None and detection.all_gone is None:
            detection.all_gone = self._now()
