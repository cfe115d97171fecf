"""Known capability manifests: one signed last-writer-wins register per node id.

Theory of operation
-------------------
Each node id maps to one entry: the node's own signed :class:`protocol.Manifest`, or a
:class:`Tombstone` left when the node left or was declared dead. Entries are ordered by a
*rank*, and the store keeps the greatest rank per node id:

* a manifest ranks as ``(version, 0, digest, signature)``: a higher version wins; at an
  equal version two different manifests (a node that re-signed a version with different
  content) are settled by the higher digest, the same choice on every replica;
* a tombstone ranks as ``(version, 1, expires_at)``: it beats every manifest up to and
  including the version it buried, so a stale copy gossiped late cannot resurrect a dead
  node, while a strictly newer version — signed by the node itself after it rejoined —
  beats the tombstone. Two tombstones at one version keep the later expiry.

Taking the maximum of a total order is a join, so :meth:`ManifestStore.merge` is
commutative, associative and idempotent, and any order or duplication of :meth:`apply`
calls ends in the same state.

Only valid manifests enter: :meth:`~ManifestStore.apply` checks the signature against the
node id (ids are self-certifying) with the injected verifier, and only for a manifest that
would win, so replays and stale versions cost no signature check.

Tombstones expire at ``now + ttl`` (:data:`DEFAULT_TOMBSTONE_TTL`, 24 h) and are dropped by
:meth:`~ManifestStore.prune`; an expired tombstone no longer blocks anything. The TTL must
exceed the time a stale manifest can keep circulating (anti-entropy rounds plus the longest
partition you expect to heal) and bounds how long a dead node's id costs memory. Tombstones
are local knowledge driven by membership (a node removes a peer when SWIM says it left or
died) and travel between stores only through :meth:`~ManifestStore.merge`; on the wire,
manifests are announced by :class:`protocol.ManifestRumor` and fetched when
:meth:`~ManifestStore.missing` says the announced version would win.

Bounds. A manifest whose encoding (:meth:`protocol.Manifest.wire_bytes`) is over
:data:`protocol.limits.MAX_MANIFEST_BYTES` never enters. The store holds at most
``max_manifests`` live manifests whose encodings add up to at most ``max_bytes``. When a
manifest would break either cap it is refused and what is held stays: the nodes whose
manifests we already hold keep them (a held node's newer version is refused only if its
growth alone breaks the byte cap), and the refusal is counted in :attr:`ManifestStore.counters`.
The caller's own manifest is applied with ``own=True`` and is never refused by a cap (so
the total may exceed ``max_bytes`` by at most one manifest). Which nodes a store holds
(members of the mesh only) is the caller's decision; the store only bounds the amount.

Caps and convergence: the join above is exact for replicas whose state stays within the
caps. Replicas that hit a cap hold different subsets: each keeps the manifests it accepted
first and refuses the rest, so two replicas that received manifests of different nodes in a
different order may hold different node sets (for nodes held on both, the versions still
converge). Capacity freed by tombstones (departed nodes) lets refused nodes in again when
their manifest is announced anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable
from typing import NamedTuple

from protocol import (
    LocalProtocolError,
    Manifest,
    ManifestRumor,
    Verifier,
    public_key_from_node_id,
    signing_bytes,
)
from protocol import verify as ed25519_verify
from protocol.limits import MAX_MANIFEST_BYTES

DEFAULT_TOMBSTONE_TTL = 24 * 3600.0
"""How long (seconds) a removed node's tombstone hides its manifest: 24 hours."""

DEFAULT_MAX_MANIFESTS = 16_384
"""Most live manifests a store holds by default: room for 10,000 members plus churn (a
departed member keeps its manifest until membership forgets it)."""

DEFAULT_MAX_MANIFEST_BYTES = 64 * 1024 * 1024
"""Most bytes (sum of :meth:`protocol.Manifest.wire_bytes`) of live manifests a store holds
by default: 64 MiB, 6.7 KiB on average for 10,000 members (a typical manifest with a few
capabilities and schemas is 0.5-3 KiB); 256 manifests at the 256 KiB limit fill it."""

Rank = tuple[int, int, bytes, float]


@dataclasses.dataclass(frozen=True, slots=True)
class Tombstone:
    """``node_id`` was removed at manifest ``version``; the mark lapses at ``expires_at``."""

    node_id: str
    version: int
    expires_at: float

    def __post_init__(self) -> None:
        public_key_from_node_id(self.node_id)
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise LocalProtocolError(
                f"version must be a non-negative integer, got {self.version!r}"
            )
        if isinstance(self.expires_at, bool) or not isinstance(self.expires_at, int | float):
            raise LocalProtocolError(f"expires_at must be a number, got {self.expires_at!r}")
        if not math.isfinite(self.expires_at):
            raise LocalProtocolError(f"expires_at must be finite, got {self.expires_at!r}")
        object.__setattr__(self, "expires_at", float(self.expires_at))

    @property
    def rank(self) -> Rank:
        return (self.version, 1, b"", self.expires_at)


class _Live(NamedTuple):
    """A verified manifest with its digest, rumor and encoded size (computed once)."""

    manifest: Manifest
    digest: bytes
    rumor: ManifestRumor
    size: int

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def rank(self) -> Rank:
        return (self.manifest.version, 0, self.digest + self.manifest.signature, 0.0)


class ManifestStore:
    """The set of known manifests, merged by version. See the module docstring.

    ``verifier`` checks manifest signatures (``protocol.verify`` by default).
    ``max_manifests`` and ``max_bytes`` cap the live manifests held (see the module
    docstring); :attr:`counters` counts what the caps refused.
    """

    __slots__ = (
        "_bytes",
        "_entries",
        "_live",
        "_max_bytes",
        "_max_manifests",
        "_rumors",
        "_shared",
        "_verifier",
        "_version",
        "counters",
    )

    def __init__(
        self,
        *,
        verifier: Verifier = ed25519_verify,
        max_manifests: int = DEFAULT_MAX_MANIFESTS,
        max_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
    ) -> None:
        for name, value in (("max_manifests", max_manifests), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._verifier = verifier
        self._max_manifests = max_manifests
        self._max_bytes = max_bytes
        self._entries: dict[str, _Live | Tombstone] = {}
        # ``_entries`` may be read by copies of this store (see :meth:`copy`): take a
        # private dict before writing. Entries are immutable, so sharing them is exact.
        self._shared = False
        self._live = 0
        self._bytes = 0
        self.counters: dict[str, int] = {
            "refused_too_large": 0,
            "refused_count_cap": 0,
            "refused_bytes_cap": 0,
        }
        """Manifests refused: over MAX_MANIFEST_BYTES, or over either cap of the store."""
        self._version = 0
        # (version, rumors): the sorted rumors of every live manifest as of ``version``,
        # so that every anti-entropy exchange does not sort and rebuild them.
        self._rumors: tuple[int, tuple[ManifestRumor, ...]] | None = None

    @property
    def version(self) -> int:
        """A counter that changes whenever the state changes (for caches and indexes)."""
        return self._version

    def __len__(self) -> int:
        """Number of live (not tombstoned) manifests."""
        return self._live

    @property
    def total_bytes(self) -> int:
        """Sum of the encoded sizes of the live manifests held."""
        return self._bytes

    @property
    def max_manifests(self) -> int:
        return self._max_manifests

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, str) and isinstance(self._entries.get(node_id), _Live)

    def __repr__(self) -> str:
        live = len(self)
        return f"<ManifestStore manifests={live} tombstones={len(self._entries) - live}>"

    def __eq__(self, other: object) -> bool:
        """Equal state: the same manifests (by content) and the same tombstones."""
        if not isinstance(other, ManifestStore):
            return NotImplemented
        return self._fingerprint() == other._fingerprint()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def _fingerprint(self) -> dict[str, tuple[int, bytes] | Tombstone]:
        return {
            node: (e.version, e.digest) if isinstance(e, _Live) else e
            for node, e in self._entries.items()
        }

    def copy(
        self, *, max_manifests: int | None = None, max_bytes: int | None = None
    ) -> ManifestStore:
        """An independent replica with the same state, verifier and caps (or the caps
        given: the state is copied as is even if it exceeds them; the caps bind what is
        applied afterwards).

        O(1): the two stores share one table of (immutable) entries until either changes,
        and the one that changes first takes its own copy — so a thousand replicas of an
        unchanging store cost one table, not a thousand."""
        twin = ManifestStore(
            verifier=self._verifier,
            max_manifests=self._max_manifests if max_manifests is None else max_manifests,
            max_bytes=self._max_bytes if max_bytes is None else max_bytes,
        )
        twin._entries = self._entries
        twin._shared = self._shared = True
        twin._live = self._live
        twin._bytes = self._bytes
        twin._rumors = (twin._version, self.rumor_tuple())  # immutable: shared
        return twin

    # ------------------------------------------------------------------ reading

    def get(self, node_id: str) -> Manifest | None:
        """The live manifest of ``node_id``, or None (unknown or tombstoned)."""
        entry = self._entries.get(node_id)
        return entry.manifest if isinstance(entry, _Live) else None

    def manifests(self) -> list[Manifest]:
        """Every live manifest, sorted by node id."""
        return [e.manifest for _, e in sorted(self._entries.items()) if isinstance(e, _Live)]

    def tombstones(self) -> list[Tombstone]:
        """Every tombstone (expired ones too, until :meth:`prune`), sorted by node id."""
        return [e for _, e in sorted(self._entries.items()) if isinstance(e, Tombstone)]

    def rumor(self, node_id: str) -> ManifestRumor | None:
        """The ``ManifestRumor`` announcing the live manifest of ``node_id``, or None."""
        entry = self._entries.get(node_id)
        return entry.rumor if isinstance(entry, _Live) else None

    def rumors(self) -> list[ManifestRumor]:
        """One ``ManifestRumor(node, version, digest)`` per live manifest, sorted by node."""
        return list(self.rumor_tuple())

    def rumor_tuple(self) -> tuple[ManifestRumor, ...]:
        """:meth:`rumors` as one immutable tuple, built once per state change (every
        push-pull sends them all) and shared by the replicas :meth:`copy` makes until
        they change: a push-pull between two such replicas carries the receiver's own
        tuple, which :meth:`missing` recognises at once."""
        cached = self._rumors
        if cached is None or cached[0] != self._version:
            rumors = tuple(
                e.rumor for _, e in sorted(self._entries.items()) if isinstance(e, _Live)
            )
            cached = self._rumors = (self._version, rumors)
        return cached[1]

    def missing(
        self, rumors: Iterable[ManifestRumor], now: float | None = None
    ) -> list[ManifestRumor]:
        """The announced manifests that would win here — what to fetch. One per node (the
        best announced), sorted by node. With ``now``, expired tombstones block nothing."""
        cached = self._rumors
        if cached is not None and rumors is cached[1] and cached[0] == self._version:
            return []  # our own current rumors: every one is held
        best: dict[str, ManifestRumor] = {}
        get = self._entries.get
        for rumor in rumors:
            if type(rumor) is ManifestRumor:
                entry = get(rumor.node)
                if type(entry) is _Live and entry.rumor is rumor:
                    continue  # the held rumor itself: most of a push-pull in a quiet mesh
            elif isinstance(rumor, ManifestRumor):
                entry = get(rumor.node)
            else:
                continue
            if isinstance(entry, _Live):
                held = entry.rumor
                if rumor is held or (rumor.version, rumor.digest) <= (held.version, held.digest):
                    continue
            elif (
                entry is not None
                and (now is None or entry.expires_at > now)
                and rumor.version <= entry.version
            ):
                continue
            seen = best.get(rumor.node)
            if seen is None or (rumor.version, rumor.digest) > (seen.version, seen.digest):
                best[rumor.node] = rumor
        return [best[node] for node in sorted(best)]

    # ------------------------------------------------------------------ writing

    def apply(self, manifest: Manifest, now: float, *, own: bool = False) -> bool:
        """Offer a received manifest; True if it became the node's entry.

        Returns False (state unchanged) for a bad signature, when what is held ranks at
        least as high (an older or equal version, or a live tombstone at that version), for
        a manifest over :data:`~protocol.limits.MAX_MANIFEST_BYTES`, and when holding it
        would exceed ``max_manifests`` or ``max_bytes`` (not checked with ``own=True``, the
        caller's own manifest). Refusals by size or cap are counted in :attr:`counters`.
        """
        if not isinstance(manifest, Manifest):
            return False
        node = manifest.node_id
        entry = self._live_entry(node, now)
        if isinstance(entry, _Live) and entry.manifest == manifest:
            return False
        if entry is not None and entry.rank[0] > manifest.version:
            return False
        if isinstance(entry, Tombstone) and entry.version >= manifest.version:
            return False
        try:
            data = signing_bytes(manifest)
        except LocalProtocolError:
            return False
        digest = hashlib.blake2b(data, digest_size=32).digest()
        size = manifest.wire_bytes()
        candidate = _Live(manifest, digest, ManifestRumor(node, manifest.version, digest), size)
        if entry is not None and entry.rank >= candidate.rank:
            return False
        if size > MAX_MANIFEST_BYTES:
            self.counters["refused_too_large"] += 1
            return False
        held = entry if isinstance(entry, _Live) else None
        if not own and not self._fits(held, size):
            return False
        if not self._verifier(public_key_from_node_id(node), data, manifest.signature):
            return False
        self._set(node, candidate)
        return True

    def _fits(self, held: _Live | None, size: int) -> bool:
        """Whether replacing ``held`` (None: a new node) by ``size`` bytes stays within the
        caps; counts the refusal if not."""
        if held is None and self._live >= self._max_manifests:
            self.counters["refused_count_cap"] += 1
            return False
        growth = size - (held.size if held is not None else 0)
        if growth > 0 and self._bytes + growth > self._max_bytes:
            self.counters["refused_bytes_cap"] += 1
            return False
        return True

    def _set(self, node: str, entry: _Live | Tombstone | None) -> None:
        """Replace ``node``'s entry (None: drop it), keeping the count and byte totals."""
        self._own()
        old = self._entries.get(node)
        if isinstance(old, _Live):
            self._live -= 1
            self._bytes -= old.size
        if entry is None:
            self._entries.pop(node, None)
        else:
            self._entries[node] = entry
            if isinstance(entry, _Live):
                self._live += 1
                self._bytes += entry.size
        self._version += 1

    def remove(
        self,
        node_id: str,
        now: float,
        ttl: float = DEFAULT_TOMBSTONE_TTL,
        *,
        version: int | None = None,
    ) -> bool:
        """Bury ``node_id`` (it left or died) until ``now + ttl``; True if the state changed.

        The tombstone covers ``version`` if given, else the version held (live manifest or
        earlier tombstone). With neither there is nothing to bury and this returns False.
        """
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise LocalProtocolError(f"ttl must be a positive number of seconds, got {ttl!r}")
        entry = self._live_entry(node_id, now)
        if version is None:
            if entry is None:
                return False
            version = entry.manifest.version if isinstance(entry, _Live) else entry.version
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise LocalProtocolError(f"version must be a non-negative integer, got {version!r}")
        return self.add_tombstone(Tombstone(node_id, version, float(now) + float(ttl)), now)

    def add_tombstone(self, tombstone: Tombstone, now: float) -> bool:
        """Fold in a tombstone (from a peer's store or from persistence); True if it won.

        An expired tombstone (``expires_at <= now``) is ignored.
        """
        if not isinstance(tombstone, Tombstone) or not tombstone.expires_at > now:
            return False
        entry = self._live_entry(tombstone.node_id, now)
        if entry is not None and entry.rank >= tombstone.rank:
            return False
        self._set(tombstone.node_id, tombstone)
        return True

    def lift_tombstone(self, node_id: str) -> bool:
        """Drop ``node_id``'s tombstone (local knowledge only): membership saw the node
        alive again, so its manifest, even at the buried version, may be fetched and held
        again. True if there was a tombstone."""
        if isinstance(self._entries.get(node_id), Tombstone):
            self._set(node_id, None)
            return True
        return False

    def discard(self, node_id: str) -> bool:
        """Drop ``node_id``'s live manifest without a tombstone (local knowledge only: the
        node is not one we hold manifests for; it may be fetched again if it becomes one).
        True if there was one."""
        if isinstance(self._entries.get(node_id), _Live):
            self._set(node_id, None)
            return True
        return False

    def prune(self, now: float) -> int:
        """Drop tombstones with ``expires_at <= now``; return how many went."""
        stale = [
            node
            for node, e in self._entries.items()
            if isinstance(e, Tombstone) and e.expires_at <= now
        ]
        if stale:
            self._own()
            for node in stale:
                del self._entries[node]
            self._version += 1
        return len(stale)

    def merge(self, other: ManifestStore, now: float) -> bool:
        """Fold another replica into this one; True if this store changed.

        Manifests that would win are re-verified with this store's verifier; expired
        tombstones on either side are dropped. ``other`` is not modified.
        """
        changed = self.prune(now) > 0
        for node, entry in sorted(other._entries.items()):
            if isinstance(entry, Tombstone):
                changed |= self.add_tombstone(entry, now)
                continue
            mine = self._entries.get(node)
            if mine is not None and mine.rank >= entry.rank:
                continue
            changed |= self.apply(entry.manifest, now)
        return changed

    # ------------------------------------------------------------------ internals

    def _own(self) -> None:
        """Take a private copy of the entries (same order) if another store may read them."""
        if self._shared:
            self._entries = dict(self._entries)
            self._shared = False

    def _live_entry(self, node_id: str, now: float) -> _Live | Tombstone | None:
        """The entry for ``node_id``, treating an expired tombstone as absent."""
        entry = self._entries.get(node_id)
        if isinstance(entry, Tombstone) and entry.expires_at <= now:
            return None
        return entry
