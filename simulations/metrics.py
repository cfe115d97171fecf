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
  no other subject alive or suspect. Per subject the tracker counts the live observers
  that see it alive (``alive_views``) and suspect (``suspect_views``), moved by each
  ``MemberChanged`` (whose old and new states say exactly what changed). Two totals follow:
  ``views_ok``, the alive views of live subjects, and ``views_bad``, the alive or suspect
  views of subjects that are not live. Membership has converged when
  ``views_ok == L (L − 1)`` and ``views_bad == 0`` for ``L`` live nodes. A crash, a leave or
  a start changes the truth about one subject, which moves its counts from one total to
  the other in O(1); a node that starts or stops as an *observer* adds or removes the views
  it holds (O(members it knows)). Nothing is ever O(N) per event, or O(N²) per run beyond
  what the cores themselves hold.
* **Manifests** have converged when every live observer holds, for every live subject, the
  manifest version that subject last published: per subject, the live observers holding
  exactly the expected version (``holders_ok``) and holding any other (``holders_bad``);
  ``manifests_ok`` sums the first, and manifests have converged when
  ``manifests_ok == P (L − 1)`` for ``P`` live subjects with a published manifest. Copies
  held of members that are down or left are not wrong — the core keeps them until
  membership forgets the member, and discovery only ranks members held alive — and are
  only counted, as ``manifests_orphaned``. A publication makes every current holder a
  holder of a stale version in O(1). A mirror of the versions each observer holds
  (one dict per observer) gives the old value that ``ManifestChanged`` does not carry.
* The **ledger** has converged when every live node holds the latest record of every
  (observer, subject) key; ``missing[key]`` counts the live nodes that lack it, fed by the
  ``PersistRecords`` effects that report every record a ledger accepted.
* A **false suspicion** (false death) is a ``Suspect`` (``Dead``) rumor, counted once per
  (subject, incarnation), signed while the subject was live and the network let accuser and
  subject reach each other. Accusations across a partition are counted apart, as
  *partitioned*; accusations of a process that is down are correct detections.
* **Failure detection**: for every crash, the time until the first live node suspects and
  declares the node dead, and until no live node sees it alive or suspect any more.

In runs with Byzantine members (``foreign_ok``), identities no simulated host has (fake
members, fresh observer keys) are counted (``foreign_member_events``, ``foreign_records``)
instead of being violations; listeners (``listeners``) see every ``MemberChanged`` effect,
for judges that classify views from outside.

Convergence instants are recorded relative to a *mark* (the start of a phase, such as the
heal of a partition): the first time after the mark that each kind converged, and the first
time all three held at once.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping, Sequence
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

_NOTHING_HELD: Mapping[int, int] = types.MappingProxyType({})


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
    false_accusers: dict[int, int] = dataclasses.field(default_factory=dict)
    """Slot -> number of false accusations it signed (insertion order)."""


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
        self.alive_views: list[int] = []
        self.suspect_views: list[int] = []
        self.views_ok = 0
        self.views_bad = 0
        # manifests
        self.expected: list[int | None] = []
        self.expected_count = 0
        self.published: list[dict[int, bytes]] = []
        # Versions each live observer holds: its own dict over a base shared by every
        # node of a converged start (None in the dict: not held, whatever the base says).
        self.held: list[dict[int, int | None]] = []
        self.held_base: list[Mapping[int, int]] = []
        self.holders_ok: list[int] = []
        self.holders_bad: list[int] = []
        self.manifests_ok = 0
        self.manifests_orphaned = 0
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
        # Byzantine runs (see simulations.byzantine)
        self.foreign_ok = False
        """Identities no simulated node has (fake members, fresh observer keys) may appear:
        count them instead of calling them a violation."""
        self.foreign_member_events = 0
        """``MemberChanged`` effects about identities no simulated node has."""
        self.foreign_records = 0
        """Ledger records accepted that no simulated core signed (forged floods)."""
        self.listeners: list[Callable[[SimNode, MemberChanged], None]] = []
        """Called with every ``MemberChanged`` effect, before it is counted."""
        self.mark()

    def reset_accusations(self) -> None:
        """Count false suspicions and deaths from now on (the start of a fault phase)."""
        self.suspicions = Accusations()
        self.deaths = Accusations()

    # ------------------------------------------------------------------ slots

    def add_slot(self) -> None:
        """A new host slot exists (not live yet)."""
        self.live.append(False)
        self.alive_views.append(0)
        self.suspect_views.append(0)
        self.expected.append(None)
        self.published.append({})
        self.held.append({})
        self.held_base.append(_NOTHING_HELD)
        self.holders_ok.append(0)
        self.holders_bad.append(0)
        self.max_incarnation.append(-1)

    # ------------------------------------------------------------------ phases

    def mark(self, origin: float | None = None) -> None:
        """Start a phase: convergence is looked for from now on, and its times are
        reported relative to ``origin`` (default: now)."""
        self.mark_time = self._now() if origin is None else origin
        self.converged_at = {"membership": None, "manifests": None, "ledger": None, "all": None}
        self._check_converged()

    @property
    def wrong_views(self) -> int:
        """(observer, subject) pairs of live observers whose view is wrong."""
        n = self.live_count
        return n * (n - 1) - self.views_ok + self.views_bad

    @property
    def wrong_manifests(self) -> int:
        """(observer, subject) pairs of live observers holding the wrong manifest."""
        return self.expected_count * (self.live_count - 1) - self.manifests_ok

    @property
    def membership_converged(self) -> bool:
        n = self.live_count
        return self.views_bad == 0 and self.views_ok == n * (n - 1)

    @property
    def manifests_converged(self) -> bool:
        return self.manifests_ok == self.expected_count * (self.live_count - 1)

    @property
    def ledger_converged(self) -> bool:
        return self.ledger_missing == 0

    @property
    def converged(self) -> bool:
        """Membership, manifests and ledger all agree with the truth on every live node."""
        return self.membership_converged and self.manifests_converged and self.ledger_missing == 0

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
        membership = self.membership_converged
        manifests = self.manifests_converged
        if at["membership"] is None and membership:
            at["membership"] = now
        if at["manifests"] is None and manifests:
            at["manifests"] = now
        if at["ledger"] is None and self.ledger_missing == 0:
            at["ledger"] = now
        if membership and manifests and self.ledger_missing == 0:
            at["all"] = now

    # ------------------------------------------------------------------ views

    def _view(self, subject: int, state: MemberState | None, sign: int) -> None:
        """Add (sign=1) or remove (sign=-1) one live observer's view of ``subject``."""
        if state is _ALIVE:
            self.alive_views[subject] += sign
            if self.live[subject]:
                self.views_ok += sign
            else:
                self.views_bad += sign
        elif state is _SUSPECT:
            self.suspect_views[subject] += sign
            if not self.live[subject]:
                self.views_bad += sign

    def _holding(self, subject: int, version: int | None, sign: int) -> None:
        """Add or remove one live observer's copy of ``subject``'s manifest."""
        if version is None:
            return
        expected = self.expected[subject]
        if version == expected:
            self.holders_ok[subject] += sign
            self.manifests_ok += sign
        else:
            self.holders_bad[subject] += sign
            if expected is None:
                self.manifests_orphaned += sign

    # ------------------------------------------------------------------ truth changes

    def up(self, node: SimNode) -> None:
        """``node`` (just started, its persisted state restored) is a live observer and
        subject. Its manifest is not published yet (see :meth:`published_manifest`)."""
        slot = node.slot
        core = node.core
        assert core is not None
        if self.live[slot]:
            return
        # As a subject: views of it held by others count as right from now on.
        self.views_bad -= self.alive_views[slot] + self.suspect_views[slot]
        self.views_ok += self.alive_views[slot]
        self.live[slot] = True
        self.live_count += 1
        # As an observer: what it knows (restored state, or only itself).
        slot_of = self._slot_of
        for member in core.membership.members():
            other = slot_of.get(member.node_id)
            if other is not None and other != slot:
                self._view(other, member.state, 1)
        held: dict[int, int | None] = {}
        for manifest in core.manifests.manifests():
            other = slot_of.get(manifest.node_id)
            if other is not None and other != slot:
                held[other] = manifest.version
                self._holding(other, manifest.version, 1)
        self.held[slot] = held
        self.held_base[slot] = _NOTHING_HELD
        ledger = core.ledger
        for key, record in self.latest.items():
            if ledger.get(*key) != record:
                self.missing[key] += 1
                self.ledger_missing += 1
        self.max_incarnation[slot] = max(self.max_incarnation[slot], core.membership.incarnation)
        self._check_converged()

    def up_converged(self, nodes: Sequence[SimNode], manifests: Sequence[Manifest]) -> None:
        """``nodes`` (the whole mesh, none live before) started converged: each sees every
        other alive and holds every manifest, ``manifests[i]`` being ``nodes[i]``'s own,
        just published. O(N): the counts are set in bulk, and every observer's copy of
        the manifest versions is one mapping, shared."""
        if self.live_count or self.latest:
            raise ValueError("a converged start needs an empty mesh and an empty ledger")
        count = len(nodes)
        base: dict[int, int] = {}
        for node, manifest in zip(nodes, manifests, strict=True):
            slot = node.slot
            if self.live[slot] or self.alive_views[slot] or self.suspect_views[slot]:
                raise ValueError(f"{node.name} is already known")
            self.live[slot] = True
            self.published[slot][manifest.version] = manifest.signature
            self._expect(slot, manifest.version)
            self.max_incarnation[slot] = max(self.max_incarnation[slot], 0)
            base[slot] = manifest.version
        self.live_count = count
        for node in nodes:
            slot = node.slot
            self.alive_views[slot] = count - 1
            self.views_ok += count - 1
            self.holders_ok[slot] = count - 1
            self.manifests_ok += count - 1
            self.held[slot] = {}
            self.held_base[slot] = base
        self._check_converged()

    def down(self, node: SimNode) -> None:
        """``node`` crashed or left: it stops being a live observer and subject."""
        slot = node.slot
        if not self.live[slot]:
            return
        core = node.core
        assert core is not None
        slot_of = self._slot_of
        for member in core.membership.members():
            other = slot_of.get(member.node_id)
            if other is not None and other != slot:
                self._view(other, member.state, -1)
                if (member.state is _ALIVE or member.state is _SUSPECT) and self.alive_views[
                    other
                ] + self.suspect_views[other] == 0:
                    self._all_gone(other)
        held = self.held[slot]
        for other, version in self.held_base[slot].items():
            if other != slot and other not in held:
                self._holding(other, version, -1)
        for other, held_version in held.items():
            self._holding(other, held_version, -1)
        self.held[slot] = {}
        self.held_base[slot] = _NOTHING_HELD
        ledger = core.ledger
        for key, record in self.latest.items():
            if ledger.get(*key) != record:
                self.missing[key] -= 1
                self.ledger_missing -= 1
        # As a subject: views of it are now right only if they say gone.
        self.views_ok -= self.alive_views[slot]
        self.views_bad += self.alive_views[slot] + self.suspect_views[slot]
        self.live[slot] = False
        self.live_count -= 1
        self._expect(slot, None)
        if self.alive_views[slot] + self.suspect_views[slot] == 0:
            self._all_gone(slot)
        self._check_converged()

    def _expect(self, slot: int, version: int | None) -> None:
        """The truth about ``slot``'s manifest is now ``version``."""
        old = self.expected[slot]
        if old == version:
            return
        # Holders of the old expected version now hold a stale one; a new version was
        # just signed, so nobody else holds it yet.
        stale = self.holders_ok[slot]
        self.holders_ok[slot] = 0
        self.manifests_ok -= stale
        if old is None:
            self.manifests_orphaned -= self.holders_bad[slot]
        else:
            self.expected_count -= 1
        self.holders_bad[slot] += stale
        if version is None:
            self.manifests_orphaned += self.holders_bad[slot]
        else:
            self.expected_count += 1
        self.expected[slot] = version

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
        if self.live[slot]:
            self._expect(slot, manifest.version)
        self._check_converged()

    # ------------------------------------------------------------------ effects

    def member_changed(self, node: SimNode, effect: MemberChanged) -> None:
        """A ``MemberChanged`` effect of ``node``'s core."""
        v = node.slot
        for listener in self.listeners:
            listener(node, effect)
        subject = self._slot_of.get(effect.node_id)
        if subject is None:
            if self.foreign_ok:
                self.foreign_member_events += 1
            else:
                self._violation(f"{node.name} learned of a node id no simulated node has")
            return
        member = effect.member
        if subject == v:
            if member.incarnation > self.max_incarnation[v]:
                self.max_incarnation[v] = member.incarnation
            if effect.new_state is not _ALIVE and not node.leaving:
                self._violation(f"{node.name} sees itself {effect.new_state}")
            return
        if member.incarnation > self.max_incarnation[subject]:
            self._violation(
                f"{node.name} holds {self._nodes[subject].name} at incarnation "
                f"{member.incarnation}, above any it ever announced "
                f"({self.max_incarnation[subject]})"
            )
        kind = effect.kind
        if kind is _SUSPECT_EVENT or kind is _DEAD_EVENT:
            rumor = member.rumor
            if isinstance(rumor, Suspect | Dead):
                self._accusation(v, subject, rumor)
        if not self.live[v]:
            return
        old, new = effect.old_state, effect.new_state
        if old is new:
            return
        self._view(subject, old, -1)
        self._view(subject, new, 1)
        if not self.live[subject]:
            if self.alive_views[subject] + self.suspect_views[subject] == 0 and (
                old is _ALIVE or old is _SUSPECT
            ):
                self._all_gone(subject)
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
        if self.views_bad == 0 and self.converged_at["all"] is None:
            self._check_converged()

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
            tally.false_accusers[accuser] = tally.false_accusers.get(accuser, 0) + 1
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
        base = self.held_base[v]
        old = held[subject] if subject in held else base.get(subject)
        new = manifest.version if manifest is not None else None
        if new is None and subject not in base:
            held.pop(subject, None)
        else:
            held[subject] = new
        self._holding(subject, old, -1)
        self._holding(subject, new, 1)
        if self.converged_at["all"] is None and self.manifests_converged:
            self._check_converged()

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
        created_by = self.created
        latest = self.latest
        for record in effect.records:
            created = created_by.get((record.observer, record.seq))
            if created is not record and created != record:  # identity first: shared objects
                if self.foreign_ok:
                    self.foreign_records += 1
                else:
                    self._violation(
                        f"{node.name} accepted a ledger record its observer never signed"
                    )
                continue
            key = (record.observer, record.subject)
            if live and ((held := latest.get(key)) is record or held == record):
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
