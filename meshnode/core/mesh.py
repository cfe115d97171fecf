"""MeshCore: membership, manifests and the reputation ledger of one node, sans-I/O.

Theory of operation
-------------------
:class:`MeshCore` is the replicated-state part of :class:`~meshnode.core.node.NodeCore`, the
one object per node that both shells (the asyncio runtime and the simulator) drive; the
node core passes its inputs and effects through unchanged. It owns
a :class:`~meshnode.core.membership.Membership`, a :class:`crdt.ManifestStore` and a
:class:`crdt.ReputationLedger`, and wires them together:

* **Manifests.** Our own signed manifest is announced by a small
  :class:`protocol.ManifestRumor` (node, version, digest) piggybacked on SWIM packets. A
  rumor for a version we would accept produces a :class:`FetchManifest` effect: the shell
  fetches the full signed manifest over TCP from the rumor's sender or its owner, and hands
  each answer back with :meth:`MeshCore.fetch_answered`. A fetched manifest that verifies and wins
  is re-announced, so the rumor keeps spreading only while it is news. Fetches for the same
  node are coalesced, and retried after :data:`FETCH_RETRY_AFTER` if nothing came back.
  A fetch no source answered is tried again on its own, up to :data:`FETCH_RETRIES` times
  with a doubling delay, even if no rumor about the node is heard again.
  The shell reports each source's answer with :meth:`MeshCore.fetch_answered`, which says
  whether to try the next source: the fetch stops once the store holds the version asked
  for (a copy that does not verify does not count: the owner is asked next) or the
  manifest was refused for a reason no other source changes.
* **Exchange slots.** At most :data:`MAX_CONCURRENT_FETCHES` fetches and
  :data:`MAX_CONCURRENT_PUSH_PULLS` push-pull exchanges run at once: a
  :class:`FetchManifest` or :class:`StartPushPull` is emitted only while a slot is free,
  and waits in a bounded queue otherwise (:data:`MAX_FETCHES_QUEUED`,
  :data:`MAX_PUSH_PULLS_QUEUED`; one entry per node or address), to be emitted when
  :meth:`MeshCore.fetch_answered` ends a fetch, :meth:`MeshCore.fetch_abandoned` gives one
  up, or :meth:`MeshCore.push_pull_done` ends an exchange. The shells keep no semaphore.
* **Departures.** A dead or left member keeps its manifest while the store has room
  (discovery only ranks members SWIM holds alive), so a member that was falsely declared
  dead and refuted is routable again at once. When membership *forgets* a member (after
  the dead-member retention time), its manifest is buried by a tombstone for
  :attr:`MeshCore.tombstone_ttl`, so stale copies cannot resurrect it; if the member is
  seen alive again, the local tombstone is lifted and its manifest fetched anew.
* **Ledger.** Records ride SWIM packets as rumors (keyed by observer and subject, so a newer
  opinion replaces a queued older one). A record that changes the ledger is re-broadcast.
* **Anti-entropy.** :meth:`push_pull_request` builds our half of a TCP exchange: the member
  snapshot, one rumor per manifest, one digest per ledger observer.
  :meth:`handle_push_pull` answers a peer with the same plus the records the peer lacks;
  :meth:`finish_push_pull` merges the answer and returns the records the *responder* lacks,
  which the shell sends in a third leg (:meth:`apply_records`). Record deltas are capped
  at :data:`MAX_RECORDS_PER_EXCHANGE` per leg; later rounds carry the rest.
* **Caps** (who may make us hold what). Manifests are held only for members that are alive
  or suspect in our table (:meth:`MeshCore._may_hold`, the one place that decides it): a
  rumor about anyone else starts no fetch, and a fetched manifest of anyone else is
  refused. The store also refuses manifests over ``protocol.limits.MAX_MANIFEST_BYTES``
  and holds at most ``NodeConfig.max_manifests`` manifests and
  ``NodeConfig.max_manifest_bytes`` bytes. When it is full, the manifests of nodes that are
  no longer alive or suspect (dead, left, unknown) are let go first; then the manifests of
  the members it holds stay and new nodes are refused (no fetch is started for them, and a
  manifest refused once is not fetched again: :data:`MAX_REFUSED_REMEMBERED`). Ledger
  records are accepted only from observers in our member table (any state) and from
  ourselves; the ledger holds at most ``NodeConfig.max_ledger_observers`` observers and
  ``NodeConfig.max_ledger_records`` records and, when full, evicts by standing
  (:meth:`MeshCore._standing`: unknown < departed < live member < rated by us <
  ourselves). Every refusal is counted in :attr:`MeshCore.counters`.
* **Restore** (:meth:`MeshCore.restore`, before membership knows anyone): persisted records
  are kept if their observer is this node or was in the persisted member table (restored
  records of observers the mesh no longer knows then have the lowest standing and are the
  first evicted under pressure; they leave by expiry otherwise); persisted manifests of
  those nodes are kept for :data:`RESTORE_GRACE_INTERVALS` push-pull intervals, after
  which the periodic sweep discards the manifests of nodes our membership does not know.

Effects reach the shell through :meth:`take_effects`, in order: membership's
``SendPacket``/``StartPushPull``/``MemberChanged`` pass through, and this layer adds
:class:`FetchManifest`, :class:`ManifestChanged` and :class:`PersistRecords`.
Own opinions are emitted as ``PersistRecords(durable=True)`` *before* they are queued for
gossip: a restarted node must never sign a second record with a sequence number it has
already used, which its peers would take as equivocation.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from crdt import (
    INITIAL_TRUST,
    STANDING_DEPARTED,
    STANDING_MEMBER,
    STANDING_OWN,
    STANDING_TRUSTED,
    STANDING_UNKNOWN,
    ManifestStore,
    ReputationLedger,
    elo_update,
)
from meshnode.core.config import NodeConfig
from meshnode.core.effects import (
    Address,
    CoreEffect,
    Deliver,
    FetchManifest,
    ManifestChanged,
    MemberChanged,
    MemberEvent,
    PersistRecords,
    SendPacket,
    StartPushPull,
)
from meshnode.core.membership import Member, Membership, MemberState
from protocol import (
    LedgerRecord,
    Manifest,
    ManifestRumor,
    PushPull,
    Signer,
    Verifier,
    wire_size,
)
from protocol import verify as ed25519_verify
from protocol.limits import MAX_MANIFEST_BYTES

FETCH_RETRY_AFTER = 5.0
"""Seconds before a manifest fetch that produced nothing may be asked for again; also the
first delay of a failed fetch's retry (see :data:`FETCH_RETRIES`)."""
FETCH_RETRIES = 3
"""Times a fetch that no source answered is tried again on its own, after
``FETCH_RETRY_AFTER × 2**k`` seconds (5, 10, 20: within 35 s, about one LAN push-pull
interval). A manifest rumor is spread a bounded number of times, so once every copy of it
has been heard, a failed fetch would otherwise wait for anti-entropy (a push-pull with a
peer that holds the manifest); under 10 % loss that left one copy missing after 120 s in a
1,000-node join. Each retry asks the owner at its current address (it always holds its
newest version) after the peers that told us. Retries are dropped when the node is no
longer an alive or suspect member or its manifest arrived by other means."""
MAX_FETCH_RETRIES_HELD = 4_096
"""Most failed fetches waiting for a retry; beyond it the one due last is not retried
(anti-entropy still brings the manifest)."""
MAX_RECORDS_PER_EXCHANGE = 20_000
"""Most ledger records sent in one push-pull leg (about 4 MiB); the rest follow later."""
LEDGER_PRUNE_INTERVAL = 60.0
"""Seconds between sweeps that drop expired ledger records and tombstones."""
REJOIN_AFTER = 10.0
"""Seconds a node that knows no live peer waits before contacting its seeds again."""
RESTORE_GRACE_INTERVALS = 3
"""Push-pull intervals after :meth:`MeshCore.restore` during which restored manifests of
nodes our membership does not know yet are kept (membership learns the mesh within about
one); after it the periodic sweep discards them."""

MAX_RECORDS_AWAITING = 4_096
"""Most ledger records held back because their observer is a member we heard of second-hand
and have not verified yet (see :meth:`Membership.is_unverified`); they are applied when it
becomes a member, and the oldest are dropped first. Without it, an opinion gossiped by a
node we are still verifying would be lost until the next push-pull; records of identities
nobody vouched for are never held."""

MAX_REFUSED_REMEMBERED = 16_384
"""Most refused manifest announcements (node, version, digest) remembered so that the same
manifest is not fetched again, about 150 bytes each; the oldest are forgotten first. A
manifest refused for its size stays refused; one refused by a full store may be fetched
again once the store has let a manifest go."""

MAX_CONCURRENT_FETCHES = 8
"""Manifest fetches a node runs at once: the core emits a :class:`FetchManifest` only while
fewer are running (each ends with :meth:`MeshCore.fetch_answered` returning None, or
:meth:`MeshCore.fetch_abandoned`); more wait in a queue, in the order they were wanted. Each
holds one TCP connection and up to ``MAX_MANIFEST_BYTES`` of reply; eight drain a join's
burst of rumors in a few round trips without opening a socket per member."""
MAX_CONCURRENT_PUSH_PULLS = 4
"""Push-pull exchanges a node runs at once (joins contact every seed in parallel): the core
emits a :class:`StartPushPull` only while fewer are running (each ends with
:meth:`MeshCore.push_pull_done`); more wait their turn. Each may move up to 16 MiB."""
MAX_FETCHES_QUEUED = 16_384
"""Most manifest fetches waiting for a slot. A node is queued at most once (a newer version
wanted meanwhile raises the queued one), so this is room for every member of a
10,000-member mesh and more; beyond it a wanted fetch is not queued (counted in
``fetches_skipped_queue_full``) and is asked for again by the next rumor."""
MAX_PUSH_PULLS_QUEUED = 1_024
"""Most push-pull exchanges waiting for a slot (one address is queued once; a join flag
raised meanwhile is kept). Exchanges come from the push-pull timer, joins (one per seed)
and rejoins, so this only fills with an absurd seed list; beyond it an exchange is not
queued (counted in ``push_pulls_skipped_queue_full``): anti-entropy runs again next
interval."""

_HOLDABLE = (MemberState.ALIVE, MemberState.SUSPECT)

RECORD_SIZE_MEMO = 16_384
"""Most ledger records whose wire size :func:`record_size` remembers (by identity) before it
forgets them all. Gossip brings the same record object back many times, and the replicas of
a simulation share them; each entry keeps its record alive (about 0.3 KB, 5 MB when full)."""

_record_sizes: dict[int, tuple[LedgerRecord, int]] = {}


def record_size(record: LedgerRecord) -> int:
    """``protocol.wire_size(record)``, remembered by identity: the entry holds a reference to
    the record, so its ``id`` cannot be reused while the entry lives, and records are
    immutable, so the remembered size is the one a fresh encoding gives."""
    entry = _record_sizes.get(id(record))
    if entry is not None and entry[0] is record:
        return entry[1]
    size = wire_size(record)
    if len(_record_sizes) >= RECORD_SIZE_MEMO:
        _record_sizes.clear()
    _record_sizes[id(record)] = (record, size)
    return size


def fetch_sources(rumor_source: Address | None, owner: Address | None) -> tuple[Address, ...]:
    """Where to fetch a manifest from, in order: the peer that told us about it (it just
    showed it holds that version, and spreads the load of a new version over everyone who
    has it), then the manifest's owner (always holds its newest version); each once."""
    sources = [a for a in (rumor_source, owner) if a is not None]
    return tuple(dict.fromkeys(sources))


@dataclasses.dataclass(frozen=True, slots=True)
class FetchStep:
    """What the shell does after a source of a :class:`FetchManifest` answered (see
    :meth:`MeshCore.fetch_answered`): try ``source`` next, or (None) stop — the fetch is
    over and its slot is free; ``failed`` says it ended without the version asked for."""

    source: Address | None
    failed: bool = False


COUNTERS: dict[str, str] = {
    "manifests_applied": "fetched manifests that became a node's entry",
    "manifests_rejected": "fetched manifests refused (stale, bad signature, too large, cap)",
    "manifests_refused_not_member": "fetched manifests of nodes that are not alive/suspect members",
    "manifests_refused_too_large": "manifests over protocol.limits.MAX_MANIFEST_BYTES",
    "manifests_refused_count_cap": "manifests refused because max_manifests were held",
    "manifests_refused_bytes_cap": "manifests refused because max_manifest_bytes were held",
    "manifests_discarded_not_member": "restored manifests of nodes membership never learned",
    "manifests_evicted_departed": "manifests of dead, left or unknown nodes let go for room",
    "fetches_started": "manifest fetches wanted (asked of the shell at once or queued)",
    "fetch_retries": "failed manifest fetches tried again on their own (FETCH_RETRIES)",
    "fetch_retries_exhausted": "failed fetches not retried: FETCH_RETRIES done already",
    "fetch_retries_dropped": "failed fetches not retried: MAX_FETCH_RETRIES_HELD waiting",
    "fetches_queued": "wanted fetches that waited for a slot (MAX_CONCURRENT_FETCHES running)",
    "fetches_skipped_queue_full": "wanted fetches dropped: MAX_FETCHES_QUEUED were waiting",
    "fetches_failed": "fetches that ended without the version asked for from any source",
    "fetch_answers_wrong_node": "fetched manifests that belong to another node than asked",
    "push_pulls_queued": "push-pull exchanges that waited for a slot",
    "push_pulls_skipped_queue_full": "exchanges dropped: MAX_PUSH_PULLS_QUEUED were waiting",
    "records_pruned": "ledger records dropped because they expired",
    "records_awaiting_member": "ledger records held until their (unverified) observer answers us",
    "fetches_skipped_not_member": "rumors not fetched: the node is not an alive/suspect member",
    "fetches_skipped_cap": "rumors of new nodes not fetched: the manifest store is full",
    "fetches_skipped_refused": "rumors of a manifest already fetched and refused (size, cap)",
    "records_applied": "ledger records that changed the ledger",
    "records_rejected": "ledger records that did not (invalid, stale, duplicate, refused)",
    "records_refused_unknown_observer": "records whose observer is not in our member table",
    "records_refused_observer_cap": "records refused: max_ledger_observers held, none lower",
    "records_refused_record_cap": "records refused: max_ledger_records held, none lower",
    "records_evicted": "held records evicted for records of higher-standing observers",
}
"""Every counter of :attr:`MeshCore.counters`, with what it counts (``/v1/health`` shows
them under ``counters.mesh``)."""

_STORE_COUNTERS = (
    ("manifests_refused_too_large", "refused_too_large"),
    ("manifests_refused_count_cap", "refused_count_cap"),
    ("manifests_refused_bytes_cap", "refused_bytes_cap"),
)
_LEDGER_COUNTERS = (
    ("records_refused_observer_cap", "refused_observer_cap"),
    ("records_refused_record_cap", "refused_record_cap"),
    ("records_evicted", "evicted_records"),
)


class MeshCore:
    """One node's replicated state and the rules that keep it converging."""

    def __init__(
        self,
        config: NodeConfig,
        signer: Signer,
        *,
        host: str,
        port: int,
        rng: random.Random,
        verifier: Verifier = ed25519_verify,
        incarnation: int = 0,
        now: float = 0.0,
        max_subjects: int | None = None,
        ip_version: Literal[4, 6] = 4,
    ) -> None:
        self.config = config
        self.signer = signer
        self.verifier = verifier
        self.membership = Membership(
            config,
            signer,
            host=host,
            port=port,
            rng=rng,
            verifier=verifier,
            incarnation=incarnation,
            now=now,
            ip_version=ip_version,
        )
        self.manifests = ManifestStore(
            verifier=verifier,
            max_manifests=config.max_manifests,
            max_bytes=config.max_manifest_bytes,
        )
        ledger_kwargs = {} if max_subjects is None else {"max_subjects": max_subjects}
        self.ledger = ReputationLedger(
            verifier=verifier,
            max_observers=config.max_ledger_observers,
            max_records=config.max_ledger_records,
            standing=self._standing,
            **ledger_kwargs,
        )
        self.tombstone_ttl = max(config.dead_member_retention, 3600.0)
        """Seconds a departed node's manifest stays buried (at least an hour)."""
        self._effects: list[CoreEffect] = []
        self._fetching: dict[str, tuple[int, float]] = {}  # node -> (version, asked at)
        # Failed fetches to try again: node -> (fetch, due at, retries done).
        self._fetch_retries: dict[str, tuple[FetchManifest, float, int]] = {}
        self._next_retry_at = math.inf
        # Exchanges the shell runs now, and those waiting for a slot (oldest first).
        self._fetches_running = 0
        self._fetch_queue: OrderedDict[str, FetchManifest] = OrderedDict()
        self._push_pulls_running = 0
        self._push_pull_queue: OrderedDict[Address, StartPushPull] = OrderedDict()
        # Manifest rumors of nodes membership does not hold yet -> (rumor, from where).
        self._awaiting_member: dict[str, tuple[ManifestRumor, Address | None]] = {}
        # Records of unverified observers: observer -> subject -> record (bounded).
        self._records_awaiting: dict[str, dict[str, LedgerRecord]] = {}
        self._records_awaiting_count = 0
        # node -> (version, digest, refused for its size): see MAX_REFUSED_REMEMBERED
        self._refused: dict[str, tuple[int, bytes, bool]] = {}
        self._member_epoch = 0  # changes with every membership event
        self._room_epoch = -1  # the member epoch of the last _make_room sweep
        self._next_prune_at = now + LEDGER_PRUNE_INTERVAL
        self._now = now
        self._seeds: tuple[Address, ...] = ()
        self._alone_since: float | None = None
        self._restore_until: float | None = None
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    # ------------------------------------------------------------------ identity

    @property
    def node_id(self) -> str:
        return self.membership.node_id

    @property
    def counters(self) -> dict[str, int]:
        """Named event counts, see :data:`COUNTERS`. The refusals that the manifest store
        and the ledger count themselves are copied in when this is read (not on every
        input: that took 6 % of a 2,000-node simulation's time)."""
        self._sync_counters()
        return self._counters

    # ------------------------------------------------------------------ shell interface

    def take_effects(self) -> list[CoreEffect]:
        """Return and clear everything the shell must do, in order."""
        self._pump(self._now)
        effects, self._effects = self._effects, []
        return effects

    def next_deadline(self) -> float:
        deadline = self.membership.next_deadline()
        if self._next_prune_at < deadline:
            deadline = self._next_prune_at
        if self._next_retry_at < deadline:
            deadline = self._next_retry_at
        return deadline

    def join(self, seeds: Sequence[Address], now: float) -> int:
        """Join through ``seeds``; they are remembered, and contacted again whenever this
        node finds itself alone (every peer dead or forgotten) for :data:`REJOIN_AFTER`."""
        self._seeds = tuple(seeds)
        joined = self.membership.join(seeds, now)
        self._pump(now)
        return joined

    def adopt_converged(
        self,
        members: Mapping[str, Member],
        manifests: ManifestStore,
        seeds: Sequence[Address],
        now: float,
    ) -> None:
        """Start from the steady state of a converged mesh instead of joining: every peer
        in ``members`` alive (see :meth:`Membership.adopt_converged`), a copy of the
        (verified) ``manifests``, and ``seeds`` remembered as by :meth:`join`, without
        contacting them. For a fresh core; nothing is announced."""
        self._seeds = tuple(seeds)
        self.membership.adopt_converged(members, now)
        self.manifests = manifests.copy(
            max_manifests=self.config.max_manifests, max_bytes=self.config.max_manifest_bytes
        )
        self._pump(now)

    def restore(
        self,
        manifests: Iterable[Manifest],
        records: Iterable[LedgerRecord],
        members: Iterable[str],
        now: float,
    ) -> None:
        """Load persisted state before membership knows anyone (see the module docstring).

        ``members`` are the node ids of the persisted member table. Records are kept if
        their observer is this node or one of ``members``; manifests of ``members`` (not
        our own) are kept, within the caps, and discarded after the restore grace if
        membership has not learned their node by then.
        """
        remembered = set(members)
        remembered.add(self.node_id)
        for manifest in manifests:
            if manifest.node_id != self.node_id and manifest.node_id in remembered:
                self.manifests.apply(manifest, now)
        kept = [r for r in records if r.observer in remembered]
        self.ledger.apply_many(kept, now)
        self._restore_until = now + RESTORE_GRACE_INTERVALS * self.config.push_pull_interval

    def leave(self, now: float) -> None:
        self.membership.leave(now)
        self._pump(now)

    def receive(self, sender: str, messages: Sequence[object], addr: Address, now: float) -> bool:
        """One verified envelope from ``sender`` arrived from ``addr``. Returns False when
        it changed nothing but counters (see below), so the shell need not look for effects
        or a new deadline; True otherwise.

        Copies of ledger records held here already are taken out first and only counted
        (see :meth:`ReputationLedger.split_copies`, which leaves them in when taking them
        out could change anything): most records of a busy mesh's packets are such
        copies, each refused at once anyway. A packet of nothing else, from a sender that
        is not waiting to be verified (whose packet would verify it), changes nothing but
        counters. Handling a packet never forgets a member (only ``tick`` does), so the
        observers that may write stay the same throughout."""
        copies, rest = self.ledger.split_copies(messages, self.membership.member_ids())
        membership = self.membership
        if copies:
            if not rest and not membership.is_unverified(sender):
                # Membership.count_received(LedgerRecord, copies, packets=1), inlined:
                # most datagrams of a busy mesh end here.
                received = membership.counters
                received["packets_received"] += 1
                received["recv_ledgerrecord"] = received.get("recv_ledgerrecord", 0) + copies
                self._counters["records_rejected"] += copies
                if now > self._now:
                    self._now = now
                return False
            messages = rest  # type: ignore[assignment]
        membership.receive(sender, messages, addr, now)  # type: ignore[arg-type]
        if copies:
            membership.count_received(LedgerRecord, copies)
            self._counters["records_rejected"] += copies
        self._pump(now)
        return True

    def tick(self, now: float) -> None:
        self.membership.tick(now)
        self._rejoin_if_alone(now)
        if now >= self._next_prune_at:
            self._next_prune_at = now + LEDGER_PRUNE_INTERVAL
            self.manifests.prune(now)
            self._counters["records_pruned"] += self.ledger.prune(now)
            self._sweep_restored(now)
        if now >= self._next_retry_at:
            self._retry_fetches(now)
        self._pump(now)

    def _sweep_restored(self, now: float) -> None:
        """Once the restore grace is over, discard manifests of nodes membership does not
        know (restored ones whose node never came back)."""
        if self._restore_until is None or now < self._restore_until:
            return
        self._restore_until = None
        for manifest in self.manifests.manifests():
            node = manifest.node_id
            if (
                node != self.node_id
                and self.membership.member(node) is None
                and self.manifests.discard(node)
            ):
                self._counters["manifests_discarded_not_member"] += 1
                self._effects.append(ManifestChanged(node, None))
                self._store_shrank()

    def _rejoin_if_alone(self, now: float) -> None:
        membership = self.membership
        if not self._seeds or membership.left or membership.cluster_size() > 1:
            self._alone_since = None
            return
        if self._alone_since is None:
            self._alone_since = now
        elif now - self._alone_since >= REJOIN_AFTER:
            self._alone_since = now
            membership.join(self._seeds, now)

    # ------------------------------------------------------------------ own state

    def publish_manifest(self, manifest: Manifest, now: float) -> None:
        """Adopt our own (signed) manifest and announce it."""
        if manifest.node_id != self.node_id:
            raise ValueError("publish_manifest takes this node's own manifest")
        if self.manifests.apply(manifest, now, own=True):
            self._announce(manifest)
            self._effects.append(ManifestChanged(manifest.node_id, manifest))
        self._pump(now)

    def record_outcome(self, subject: str, quality: float, now: float) -> LedgerRecord:
        """Fold one scored task outcome into our opinion of ``subject`` (the observer's ELO
        rule), sign it, persist it durably, then gossip it."""
        held = self.ledger.get(self.node_id, subject)
        old = held.score if held is not None else INITIAL_TRUST
        outcomes = (held.outcomes if held is not None else 0) + 1
        return self.publish_opinion(subject, elo_update(old, quality), outcomes, now)

    def publish_opinion(
        self, subject: str, score: float, outcomes: int, now: float
    ) -> LedgerRecord:
        """Sign our opinion of ``subject`` at our next sequence number, have it persisted
        durably (a ``PersistRecords(durable=True)`` effect, carried out before any packet
        that could carry it), then queue it for gossip."""
        record = self.ledger.record_opinion(self.signer, subject, score, outcomes, now)
        self.ledger.restanding()  # the subject now has our direct experience
        self._effects.append(PersistRecords((record,), durable=True))
        self._broadcast_record(record)
        return record

    def direct_experience(self) -> dict[str, float]:
        """Our own current opinion of every peer we have rated."""
        return self.ledger.opinions_of(self.node_id)

    # ------------------------------------------------------------------ manifests

    def manifest_fetched(self, manifest: Manifest, now: float) -> bool:
        """A fetched manifest arrived; True if it verified and became the node's entry.
        (Shells report fetches with :meth:`fetch_answered`, which calls this.)"""
        return self._apply_fetched(manifest, now) == "applied"

    def _apply_fetched(self, manifest: Manifest, now: float) -> str:
        """Apply a fetched manifest: ``applied``; ``refused`` (not a member we may hold,
        too large, no room: asking another source changes nothing); ``rejected`` (stale,
        or it does not verify: another source may hold the real one)."""
        node = manifest.node_id
        pending = self._fetching.get(node)
        outcome = self._judge_fetched(manifest, now)
        held = self.manifests.get(node)
        if (
            pending is not None
            and manifest.version >= pending[0]
            and (outcome != "rejected" or (held is not None and held.version >= pending[0]))
        ):
            del self._fetching[node]  # a forged copy does not end the wait for the real one
        return outcome

    def _judge_fetched(self, manifest: Manifest, now: float) -> str:
        if not self._may_hold(manifest.node_id):
            self._counters["manifests_refused_not_member"] += 1
            return "refused"
        store = self.manifests
        if manifest.node_id not in store:
            self._store_full(MAX_MANIFEST_BYTES)  # lets departed nodes' manifests go if full
        before = dict(store.counters)
        applied = store.apply(manifest, now)
        if not applied:
            self._counters["manifests_rejected"] += 1
            if store.counters != before:  # refused by size or cap, not stale or forged
                too_large = store.counters["refused_too_large"] != before["refused_too_large"]
                self._remember_refused(manifest, too_large)
                return "refused"
            return "rejected"
        self._counters["manifests_applied"] += 1
        self._announce(manifest)
        self._effects.append(ManifestChanged(manifest.node_id, manifest))
        return "applied"

    # ------------------------------------------------------------------ exchange slots

    def fetch_answered(
        self, fetch: FetchManifest, source: Address, manifest: Manifest | None, now: float
    ) -> FetchStep:
        """``source`` of ``fetch`` answered with ``manifest`` (None: it could not be
        reached, failed, or sent something that does not decode). The manifest is applied
        (:meth:`manifest_fetched`); the fetch is over once the store holds the version
        asked for or newer, or the manifest was refused for a reason no other source can
        change (not a member, too large, no room). Otherwise the next source in
        ``fetch.sources`` is tried; when none is left the fetch failed and the node may be
        asked for again. A manifest of another node than asked counts as no answer."""
        node = fetch.node
        outcome = None
        if manifest is not None:
            if manifest.node_id != node:
                self._counters["fetch_answers_wrong_node"] += 1
            else:
                outcome = self._apply_fetched(manifest, now)
        held = self.manifests.get(node)
        if outcome == "refused" or (held is not None and held.version >= fetch.version):
            self._fetch_retries.pop(node, None)
            self._fetch_ended()
            return FetchStep(None)
        try:
            index = fetch.sources.index(source)
        except ValueError:
            index = len(fetch.sources)  # not one of ours: nothing after it
        if index + 1 < len(fetch.sources):
            return FetchStep(fetch.sources[index + 1])
        self._counters["fetches_failed"] += 1
        self._fetching.pop(node, None)
        self._fetch_ended()
        self._schedule_retry(fetch, now)
        return FetchStep(None, failed=True)

    def fetch_abandoned(self, fetch: FetchManifest) -> None:
        """The shell stopped ``fetch`` before it was over (it is closing, or its task
        failed): the slot is free and the node may be asked for again."""
        self._fetching.pop(fetch.node, None)
        self._fetch_retries.pop(fetch.node, None)
        self._fetch_ended()

    def push_pull_done(self) -> None:
        """One exchange started by a :class:`StartPushPull` ended, whatever its outcome
        (or the shell will not run it): its slot is free for the next one waiting."""
        if self._push_pulls_running > 0:
            self._push_pulls_running -= 1
        if self._push_pull_queue:
            _, effect = self._push_pull_queue.popitem(last=False)
            self._push_pulls_running += 1
            self._effects.append(effect)

    @property
    def exchanges(self) -> dict[str, int]:
        """Fetches and push-pulls running and waiting (for health and tests)."""
        return {
            "fetches_running": self._fetches_running,
            "fetches_queued": len(self._fetch_queue),
            "push_pulls_running": self._push_pulls_running,
            "push_pulls_queued": len(self._push_pull_queue),
        }

    def _fetch_ended(self) -> None:
        if self._fetches_running > 0:
            self._fetches_running -= 1
        if self._fetch_queue:
            _, fetch = self._fetch_queue.popitem(last=False)
            self._fetches_running += 1
            self._effects.append(fetch)

    def _schedule_retry(self, fetch: FetchManifest, now: float) -> None:
        """Try ``fetch`` again later (:data:`FETCH_RETRIES`) unless it was retried enough."""
        previous = self._fetch_retries.pop(fetch.node, None)
        done = 0 if previous is None else previous[2]
        if done >= FETCH_RETRIES:
            self._counters["fetch_retries_exhausted"] += 1
            return
        if len(self._fetch_retries) >= MAX_FETCH_RETRIES_HELD:
            self._counters["fetch_retries_dropped"] += 1
            return
        due = now + FETCH_RETRY_AFTER * 2**done
        self._fetch_retries[fetch.node] = (fetch, due, done + 1)
        self._next_retry_at = min(self._next_retry_at, due)

    def _retry_fetches(self, now: float) -> None:
        """Start the failed fetches whose retry is due, from their sources and the owner's
        current address; forget those the store or membership made pointless."""
        due = [node for node, (_, at, _) in self._fetch_retries.items() if at <= now]
        for node in due:
            fetch, _, done = self._fetch_retries[node]
            member = self.membership.member(node)
            held = self.manifests.get(node)
            if (
                member is None
                or not self._may_hold(node)
                or (held is not None and held.version >= fetch.version)
            ):
                del self._fetch_retries[node]
                continue
            # Kept (with its count) until the fetch ends: a success forgets it, a failure
            # schedules the next retry.
            self._fetch_retries[node] = (fetch, math.inf, done)
            if node in self._fetching:
                continue  # a newer rumor started a fetch meanwhile
            self._fetching[node] = (fetch.version, now)
            self._counters["fetch_retries"] += 1
            sources = tuple(dict.fromkeys((*fetch.sources, member.address)))
            self._start_fetch(FetchManifest(node, fetch.version, sources))
        self._next_retry_at = min(
            (at for _, at, _ in self._fetch_retries.values()), default=math.inf
        )

    def _start_fetch(self, fetch: FetchManifest) -> None:
        """Emit ``fetch`` if a slot is free, else queue it (once per node)."""
        if not fetch.sources:  # nobody to ask (cannot happen: the owner is a member)
            self._counters["fetches_failed"] += 1
            self._fetching.pop(fetch.node, None)
            return
        queue = self._fetch_queue
        if self._fetches_running < MAX_CONCURRENT_FETCHES and not queue:
            self._fetches_running += 1
            self._effects.append(fetch)
            return
        queued = queue.get(fetch.node)
        if queued is not None:
            if fetch.version > queued.version:
                queue[fetch.node] = fetch  # keeps its place in the queue
            return
        if len(queue) >= MAX_FETCHES_QUEUED:
            self._counters["fetches_skipped_queue_full"] += 1
            self._fetching.pop(fetch.node, None)
            return
        self._counters["fetches_queued"] += 1
        queue[fetch.node] = fetch

    def _start_push_pull(self, effect: StartPushPull) -> None:
        """Emit ``effect`` if a slot is free, else queue it (once per address)."""
        queue = self._push_pull_queue
        if self._push_pulls_running < MAX_CONCURRENT_PUSH_PULLS and not queue:
            self._push_pulls_running += 1
            self._effects.append(effect)
            return
        queued = queue.get(effect.addr)
        if queued is not None:
            if effect.join and not queued.join:
                queue[effect.addr] = effect
            return
        if len(queue) >= MAX_PUSH_PULLS_QUEUED:
            self._counters["push_pulls_skipped_queue_full"] += 1
            return
        self._counters["push_pulls_queued"] += 1
        queue[effect.addr] = effect

    def _remember_refused(self, manifest: Manifest, too_large: bool) -> None:
        node = manifest.node_id
        self._refused.pop(node, None)
        self._refused[node] = (manifest.version, manifest.digest(), too_large)
        if len(self._refused) > MAX_REFUSED_REMEMBERED:
            del self._refused[next(iter(self._refused))]

    def _store_shrank(self) -> None:
        """A manifest left the store: nodes refused for want of room get another chance."""
        self._refused = {n: r for n, r in self._refused.items() if r[2]}

    def _announce(self, manifest: Manifest) -> None:
        # The store computed the digest when it accepted the manifest: no second hash.
        rumor = self.manifests.rumor(manifest.node_id)
        if rumor is not None:
            self.membership.broadcast(rumor, ("manifest", manifest.node_id))

    def _may_hold(self, node: str) -> bool:
        """Whether we hold (and fetch) ``node``'s manifest: ``node`` is a member that is
        alive or suspect in our table. The one place that decides it."""
        member = self.membership.member(node)
        return member is not None and member.state in _HOLDABLE

    def _store_full(self, room: int = 0) -> bool:
        """Whether the manifest store has no room for a new node (with ``room``: for a
        manifest of up to that many bytes). A full store first lets go of the manifests of
        nodes we may no longer hold (:meth:`_make_room`)."""
        store = self.manifests
        if len(store) < store.max_manifests and store.total_bytes + room < store.max_bytes:
            return False
        self._make_room()
        return len(store) >= store.max_manifests or store.total_bytes + room >= store.max_bytes

    def _make_room(self) -> None:
        """Discard the manifests of nodes that are no longer alive or suspect members
        (a dead or left member keeps its manifest only while there is room). Runs at most
        once per change of membership."""
        if self._room_epoch == self._member_epoch:
            return
        self._room_epoch = self._member_epoch
        for manifest in self.manifests.manifests():
            node = manifest.node_id
            if node != self.node_id and not self._may_hold(node) and self.manifests.discard(node):
                self._counters["manifests_evicted_departed"] += 1
                self._effects.append(ManifestChanged(node, None))
                self._store_shrank()

    def _want(self, rumors: Iterable[ManifestRumor], source: Address | None, now: float) -> None:
        for rumor in self.manifests.missing(rumors, now):
            if rumor.node == self.node_id:
                continue
            if self.membership.member(rumor.node) is None:
                # Not (yet) a verified member: kept to fetch once it is one.
                self._counters["fetches_skipped_not_member"] += 1
                self._await_member(rumor, source)
                continue
            if not self._may_hold(rumor.node):
                self._counters["fetches_skipped_not_member"] += 1
                continue
            refused = self._refused.get(rumor.node)
            if refused is not None and refused[:2] == (rumor.version, rumor.digest):
                self._counters["fetches_skipped_refused"] += 1
                continue
            if rumor.node not in self.manifests and self._store_full():
                self._counters["fetches_skipped_cap"] += 1
                continue
            member = self.membership.member(rumor.node)
            assert member is not None
            pending = self._fetching.get(rumor.node)
            if (
                pending is not None
                and pending[0] >= rumor.version
                and now - pending[1] < FETCH_RETRY_AFTER
            ):
                continue
            self._fetching[rumor.node] = (rumor.version, now)
            self._counters["fetches_started"] += 1
            sources = fetch_sources(source, member.address)
            self._start_fetch(FetchManifest(rumor.node, rumor.version, sources))

    def _await_member(self, rumor: ManifestRumor, source: Address | None) -> None:
        """Keep the manifest rumor of a node membership does not hold yet (it may be
        waiting to be verified), to fetch once it joins; bounded, oldest dropped first."""
        awaiting = self._awaiting_member
        awaiting.pop(rumor.node, None)
        if len(awaiting) >= self.config.max_unverified_members:
            if not awaiting:
                return
            del awaiting[next(iter(awaiting))]
        awaiting[rumor.node] = (rumor, source)

    # ------------------------------------------------------------------ ledger

    def apply_records(self, records: Iterable[LedgerRecord], now: float) -> int:
        """Apply received records; re-gossip and persist those that changed the ledger."""
        changed: list[LedgerRecord] = []
        counters = self._counters
        apply = self.ledger.apply
        me = self.node_id
        member = self.membership.member
        rejected = 0
        for record in records:
            # _may_write, inlined: this loop runs for every copy of every record gossiped.
            if not isinstance(record, LedgerRecord) or (
                record.observer != me and member(record.observer) is None
            ):
                if self._await_observer(record):
                    continue
                counters["records_refused_unknown_observer"] += 1
                rejected += 1
            elif apply(record, now):
                changed.append(record)
                self._broadcast_record(record)
            else:
                rejected += 1
        if rejected:
            counters["records_rejected"] += rejected
        if changed:
            counters["records_applied"] += len(changed)
            self._effects.append(PersistRecords(tuple(changed), durable=False))
        return len(changed)

    def _await_observer(self, record: object) -> bool:
        """Hold ``record`` back if its observer is a member being verified (bounded by
        :data:`MAX_RECORDS_AWAITING`, oldest observer's records dropped first)."""
        if not isinstance(record, LedgerRecord) or not self.membership.is_unverified(
            record.observer
        ):
            return False
        held = self._records_awaiting.setdefault(record.observer, {})
        if record.subject not in held:
            while self._records_awaiting_count >= MAX_RECORDS_AWAITING:
                oldest = next(iter(self._records_awaiting))
                self._records_awaiting_count -= len(self._records_awaiting.pop(oldest))
                if oldest == record.observer:
                    held = self._records_awaiting.setdefault(record.observer, {})
            self._records_awaiting_count += 1
        held[record.subject] = record
        self._counters["records_awaiting_member"] += 1
        return True

    def _may_write(self, record: object) -> bool:
        """Whether a received record's observer may have it kept here: this node, or a
        node in our member table in any state (a departed member's opinions stay valid)."""
        if not isinstance(record, LedgerRecord):
            return False
        observer = record.observer
        return observer == self.node_id or self.membership.member(observer) is not None

    def _standing(self, observer: str) -> int:
        """How much ``observer``'s records deserve room when a ledger cap is full."""
        if observer == self.node_id:
            return STANDING_OWN
        if self.ledger.get(self.node_id, observer) is not None:
            return STANDING_TRUSTED  # we rated it: direct experience
        member = self.membership.member(observer)
        if member is None:
            return STANDING_UNKNOWN
        return STANDING_MEMBER if member.state in _HOLDABLE else STANDING_DEPARTED

    def _sync_counters(self) -> None:
        """Copy the refusal counts kept by the store and the ledger into our counters."""
        counters = self._counters
        for name, key in _STORE_COUNTERS:
            counters[name] = self.manifests.counters[key]
        for name, key in _LEDGER_COUNTERS:
            counters[name] = self.ledger.counters[key]

    def _broadcast_record(self, record: LedgerRecord) -> None:
        cap = self.config.ledger_retransmit_cap or None
        self.membership.broadcast(
            record, ("ledger", record.observer, record.subject), cap=cap, size=record_size(record)
        )

    # ------------------------------------------------------------------ push-pull

    def push_pull_request(self, join: bool) -> PushPull:
        """Our half of an anti-entropy exchange (first leg)."""
        return PushPull(
            join=join,
            members=self.membership.state_snapshot(),
            manifests=self.manifests.rumor_tuple(),
            ledger=tuple(self.ledger.digests()),
        )

    def handle_push_pull(self, sender: str, request: PushPull, now: float) -> PushPull:
        """Answer a peer's first leg: merge it, reply with our state and its missing records."""
        self.membership.merge_state(request.members, now, source=sender)
        if request.records:
            self.apply_records(request.records, now)
        member = self.membership.member(sender)
        self._want(request.manifests, member.address if member else None, now)
        reply = PushPull(
            join=False,
            members=self.membership.state_snapshot(),
            manifests=self.manifests.rumor_tuple(),
            ledger=tuple(self.ledger.digests()),
            records=tuple(self.ledger.delta_since(request.ledger, MAX_RECORDS_PER_EXCHANGE)),
        )
        self._pump(now)
        return reply

    def finish_push_pull(
        self, responder: str, reply: PushPull, addr: Address, now: float
    ) -> list[LedgerRecord]:
        """Merge the responder's answer; return the records *it* lacks (third leg)."""
        self.membership.merge_state(reply.members, now, source=responder)
        if reply.records:
            self.apply_records(reply.records, now)
        self._want(reply.manifests, addr, now)
        self._pump(now)
        return self.ledger.delta_since(reply.ledger, MAX_RECORDS_PER_EXCHANGE)

    # ------------------------------------------------------------------ internals

    def _pump(self, now: float) -> None:
        """Move membership's effects to ours, handling what belongs to this layer."""
        if now > self._now:
            self._now = now
        effects = self.membership.take_effects()
        if not effects:
            return  # the common case: called on every input and every take_effects
        delivered: list[LedgerRecord] = []
        for effect in effects:
            if isinstance(effect, Deliver) and isinstance(effect.message, LedgerRecord):
                delivered.append(effect.message)  # applied together, in order (one persist)
                continue
            if delivered:
                self.apply_records(delivered, now)
                delivered = []
            if isinstance(effect, Deliver):
                self._deliver(effect, now)
            elif isinstance(effect, MemberChanged):
                self._effects.append(effect)
                self.ledger.restanding()
                self._member_epoch += 1
                node = effect.node_id
                if node == self.node_id:
                    continue  # our own leave or refutation: we keep our manifest
                if effect.kind is MemberEvent.FORGOTTEN:
                    if self.manifests.remove(node, now, self.tombstone_ttl):
                        self._fetching.pop(node, None)
                        self._effects.append(ManifestChanged(node, None))
                        self._store_shrank()
                elif effect.kind in (MemberEvent.JOINED, MemberEvent.ALIVE):
                    self.manifests.lift_tombstone(node)
                    awaited = self._awaiting_member.pop(node, None)
                    if awaited is not None:
                        self._want((awaited[0],), awaited[1], now)
                    records = self._records_awaiting.pop(node, None)
                    if records:
                        self._records_awaiting_count -= len(records)
                        self.apply_records(records.values(), now)
            elif isinstance(effect, StartPushPull):
                self._start_push_pull(effect)
            else:
                self._effects.append(effect)
        if delivered:
            self.apply_records(delivered, now)

    def _deliver(self, effect: Deliver, now: float) -> None:
        message = effect.message
        if isinstance(message, ManifestRumor):
            self._want((message,), effect.addr, now)
        elif isinstance(message, LedgerRecord):
            self.apply_records((message,), now)

    def members(self) -> list[Member]:
        return self.membership.members()

    def __repr__(self) -> str:
        m = self.membership
        return (
            f"<MeshCore {self.node_id[:10]} alive={m.count(MemberState.ALIVE)} "
            f"suspect={m.count(MemberState.SUSPECT)} dead={m.count(MemberState.DEAD)} "
            f"manifests={len(self.manifests)} records={len(self.ledger)} "
            f"queue={m.queue_depth}>"
        )


__all__ = [
    "MAX_CONCURRENT_FETCHES",
    "MAX_CONCURRENT_PUSH_PULLS",
    "MAX_FETCHES_QUEUED",
    "MAX_PUSH_PULLS_QUEUED",
    "CoreEffect",
    "FetchManifest",
    "FetchStep",
    "ManifestChanged",
    "MeshCore",
    "PersistRecords",
    "SendPacket",
    "StartPushPull",
    "fetch_sources",
]
