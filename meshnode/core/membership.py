"""SWIM membership with Lifeguard, as a sans-I/O state machine.

Theory of operation
-------------------
:class:`Membership` is one node's view of the mesh. It never touches a socket or a clock:
the shell feeds it packets (``receive``), time (``tick``, at ``next_deadline()``) and
anti-entropy states (``merge_state``), and carries out the effects it returns
(``take_effects``): UDP packets to send, TCP push-pulls to start, events to publish.
Randomness comes from an injected ``random.Random``, signatures from an injected signer
and verifier, so a run is reproducible from its seed.

**State.** Each member has a state (alive, suspect, dead, left) at an incarnation, and
the latest *signed* rumor that justifies it: ``Alive`` and ``Leave`` signed by the member
itself, ``Suspect`` and ``Dead`` signed by their accuser. Rumors are totally ordered by
``(incarnation, rank)`` with rank alive < suspect < dead < left, and a rumor is applied
only if it is strictly greater than the member's current one. That one rule gives every
precedence SWIM needs: ``Alive(i)`` beats anything at a lower incarnation but never
resurrects a member suspected, dead or left at ``i``; ``Suspect(i)`` beats ``Alive(j ≤ i)``;
``Dead(i)`` beats alive and suspect at ``j ≤ i``; ``Leave(i)`` beats everything at
``j ≤ i`` (a member that left is never turned into a dead one). Because the order is
total and every replica keeps the maximum, gossip and push-pull converge to the same
table whatever the delivery order. Only a node raises its own incarnation: when it hears
a suspect, dead or left rumor about itself at or above its incarnation it refutes with a
new signed ``Alive`` one higher. Signatures are checked with the injected verifier before
a rumor changes anything (rumors that would change nothing are dropped unverified, which
keeps the cost of redundant gossip at a dictionary lookup); forged rumors are dropped and
counted, and suspect or dead rumors about members we do not know are ignored.

**Failure detection.** Every probe period (``probe_interval`` × local health) we ping
the next member of a shuffled round-robin list (rebuilt once per pass and shuffled as it
is consumed, one random draw from the rest of the pass per probe, so new members joining
the rest land at random positions), skipping ourselves and dead or left members. Without an
ack within ``probe_timeout`` × health, ``indirect_checks`` random alive members are sent
a ``PingReq``; each pings the target and relays its ack, or answers a ``Nack`` if none
came within 80 % of the probe timeout. Without any ack by the end of the period we sign
a ``Suspect`` about the target. A suspect member gets its ``Suspect`` in the same packet
as our ping (the buddy system), so it can refute at once in the ack.

**Lifeguard.** The local health score (:mod:`meshnode.core.health`) rises with failed
probes, missing nacks, refutations and stalls, falls with successful probes, and
stretches our own probe timing. Suspicion timeouts start at their maximum and shrink
with independent confirmations (:mod:`meshnode.core.suspicion`); when one expires we
sign ``Dead``.

**Dissemination.** Every packet we send (ping, ack, ping-req, nack) fills its spare
bytes with rumors from the transmit-limited queue (:mod:`meshnode.core.broadcast`), and
every ``gossip_interval`` up to ``gossip_nodes`` random members (alive, suspect, or dead
for less than ``gossip_to_the_dead_time``) get a packet of rumors only. Packets never
exceed ``max_packet_bytes``. Non-membership rumors (manifest rumors, ledger records)
share the same queue through :meth:`Membership.broadcast`, and the ones we receive are
handed up as :class:`~meshnode.core.effects.Deliver` effects. The queue fills a packet by
priority lanes, as memberlist sends its own broadcasts before the delegate's: our own
``Alive`` (a refutation) first, then the other membership rumors (at most one per
member), then application rumors with the space left. Without the lanes, a flood of
fresh application rumors (a Byzantine member pushing thousands of ledger records, each
re-gossiped by every honest node) kept the newest-first bucket full, and a victim's
refutation went out once or never before the suspicions it answered expired.

**Anti-entropy and bounded state.** Every (size-scaled) ``push_pull_interval`` we ask
the shell for a TCP state exchange with one random alive member; ``merge_state`` applies
the remote snapshot with exactly the gossip rules. Dead and left members are forgotten
``dead_member_retention`` seconds after their last state change. Now and then the
exchange goes to a dead member or to a join seed that no live member answers for instead
(see :meth:`Membership._push_pull`): that is how partitions heal, even one that lasted
long enough for both sides to forget each other.

**Catch-up.** A member misses every copy of a rumor with probability about
``exp(−retransmit limit)`` (about 1 in 3,000 below 100 members), and would then wait for
a periodic push-pull. Every ack carries the size of its sender's view (members alive or
suspect, itself included); when the acks of two probes in a row report views bigger than
ours, we ask for a push-pull with the member just probed, at most once per
``catch_up_interval``. Views of equal size are never a reason, so a converged mesh starts
none.

**Stalls.** The shell is expected to call ``tick`` at ``next_deadline()``. A tick that
comes more than one probe interval late means this node was not scheduled (CPU
starvation, a pause, a suspended VM): instead of blaming peers for acks it could not
process, every timer is shifted by the delay plus one probe timeout, the local health
score is raised, and the tick returns, so that the packets that queued up meanwhile
(acks, refutations) are handled before any timer fires.

**Addresses.** Every address read off the wire (an ``Alive``'s host and port, a
``PingReq``'s) must pass :func:`address_problem`: a numeric IP literal of our own socket's
family (the shell says which, ``ip_version``), port 1–65535, not unspecified, multicast
or broadcast. Anything else is refused and counted (``addresses_invalid``) before it
changes anything; and no ``SendPacket`` or ``StartPushPull`` ever leaves for an address
that fails the check (``sends_refused``), whatever put it there.

**Who may accuse.** A ``Suspect`` or ``Dead`` counts only if its accuser is a current
member (alive or suspect in our table; our own accusations are trusted) and only at an
incarnation the accuser could have seen: not above the subject's incarnation we know
(about ourselves: not above our own). A refutation is one above our incarnation, so it
always beats every accusation we accept. About ourselves, a validly signed accusation at
our incarnation is refuted whoever signed it (refuting is always safe, and after a
partition every accuser is dead in our view), but only a member's costs local health.
Incarnations saturate at ``MAX_INCARNATION`` (the uint64 wire limit) instead of
overflowing. A ``Dead`` signed by someone else about a member we hold alive (by gossip or
in a push-pull snapshot) becomes our own suspicion, after the same checks: one member's
word never takes a live member out of our probe and gossip lists at once (a Byzantine
member could otherwise make every honest node drop its victims until they refute), the
victim gets the suspicion time to refute, and a really dead member is declared dead
when that suspicion expires or when a second ``Dead`` arrives while we suspect it (as
memberlist already does for push-pull merges).

**Second-hand members.** A member we only heard of from someone else (an ``Alive``
relayed by gossip, or in another node's push-pull snapshot) is *unverified*: it is held
apart from the member table (not probed, not a relay, gossip or push-pull target, not in
the cluster size of the timing formulas, not re-gossiped, not in our snapshots, not in
:meth:`Membership.members`). It becomes a member as soon as it answers us: a signed packet
from its node id arriving from its advertised address, an ``Alive`` it sends us itself,
an ack to a verification ping, or a push-pull with it. A separate lane pings unverified
members, ``verify_pings`` per probe period, oldest first, with only our own ``Alive``
piggybacked (which verifies *us* at the other end in the same packet); one that has not
answered ``unverified_tries`` pings is dropped quietly, never suspected or declared dead.
Holding one costs O(1) dictionary work (its signature is checked only when it is
verified), bounded by ``max_unverified_per_source`` per introducing node and
``max_unverified_members`` in all; the whole table is capped at ``max_members``. At a cap,
known members are kept and new ones refused (counted). Joins still converge: the seed
learns a joining node first-hand (its own push-pull), and every other member, hearing of
it second-hand, verifies it with one ping that also introduces itself first-hand.

**Relaying.** A ``PingReq`` is served only for a current member (the requester) and
only about a current member (the target), at the address *we* know for the target (a
request naming another address is counted, ``ping_req_address_mismatch``); the answer
goes to the requester's known address.

**Identity conflicts.** An ``Alive`` about ourselves, signed with our key, at an address
not ours and an incarnation not below ours means another process holds our key: it is
counted (``identity_conflicts``) and reported with an
:class:`~meshnode.core.effects.IdentityConflict` effect (once per address per
``IDENTITY_CONFLICT_WINDOW``); so is a refutation war, our incarnation pushed up by
``REFUTATION_WAR_COUNT`` such ``Alive`` within the window. Another member whose address
changes back to the one it had within ``ADDRESS_FLAP_WINDOW`` is counted
(``address_flaps``): two processes are publishing under its id.

Costs: member lookup, rumor application and timer handling are O(1) (O(log s) for the
``s`` pending suspicions); a packet costs O(rumors in it); a probe pass copies the
round-robin list once, O(n) per n probes, and each probe draws its target in O(1) (no
O(n) shuffle at the start of a pass).
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import ipaddress
import math
import random
from collections import OrderedDict
from collections.abc import Hashable, KeysView, Mapping, Sequence
from typing import Final, Literal, TypeVar

from meshnode.core import coordinates, timing
from meshnode.core.broadcast import LANE_APP, LANE_MEMBERS, LANE_OWN, BroadcastQueue
from meshnode.core.config import NodeConfig
from meshnode.core.effects import (
    Address,
    Deliver,
    Effect,
    IdentityConflict,
    MemberChanged,
    MemberEvent,
    SendPacket,
    StartPushPull,
    StartTcpPing,
)
from meshnode.core.health import LocalHealth
from meshnode.core.member import Member, MemberRumor, MemberState
from meshnode.core.metrics import PROBE_BUCKETS_S, Histogram
from meshnode.core.suspicion import Suspicion
from meshnode.core.tables import ConvergedTable, IndexedSet, ProbePass
from protocol import (
    ENVELOPE_OVERHEAD,
    Ack,
    Alive,
    Dead,
    Leave,
    LocalProtocolError,
    Message,
    Nack,
    Ping,
    PingReq,
    Pressure,
    Signer,
    Suspect,
    Verifier,
    public_key_from_node_id,
    short_id,
    signing_bytes,
    verify,
    wire_size,
)
from protocol.messages import PRESSURE_MAX, NetworkCoordinate

__all__ = [
    "MAX_INCARNATION",
    "Member",
    "MemberRumor",
    "MemberState",
    "Membership",
    "address_problem",
]

_R = TypeVar("_R", Alive, Suspect, Dead, Leave)
_T = TypeVar("_T")

MAX_PENDING_RELAYS: Final = 1024
"""Most indirect probes we run for others at once; further ping-reqs are dropped."""

LOAD_MAX: Final = 1_000_000
"""Largest load an ack can advertise (the wire limit of ``Ack.load``)."""

MAX_INCARNATION: Final = 2**64 - 1
"""Largest incarnation (the uint64 wire limit); incarnation arithmetic saturates here."""

IDENTITY_CONFLICT_WINDOW: Final = 60.0
"""Seconds over which refutations forced by our own key are counted toward a refutation
war, and during which one conflicting address is reported once."""

REFUTATION_WAR_COUNT: Final = 3
"""``Alive`` about ourselves at or above our incarnation (signed with our key) within
``IDENTITY_CONFLICT_WINDOW`` that make a refutation war. One is a previous life of ours
(a restart that lost its incarnation); three in a minute is another live process."""

ADDRESS_FLAP_WINDOW: Final = 60.0
"""Seconds within which a member's address changing back to its previous one counts as
an address flap (``address_flaps``). An honest move changes the address once; two
processes sharing a key alternate between two addresses with every refutation."""

MAX_VERIFYING: Final = 4_096
"""Most verification pings awaiting an ack; the oldest is forgotten beyond this (its
member simply gets its next try)."""

_ADDRESS_CACHE: Final = 4_096
"""Most addresses whose identity conflict was reported recently (see ``_conflicts_reported``)."""

_HOST_CHECK_CACHE: Final = 32_768
"""Host strings whose check result (:func:`address_problem`) is memoized, process-wide.
Above the distinct hosts one process meets — a node's table holds up to ``max_members``
(20,000 by default), a simulation of 10,000 nodes sees 10,000 — because a push-pull merge
walks the whole table in one order, and an LRU cache smaller than what it walks misses on
every entry (at 4,096 entries, parsing IP literals was a third of a 10,000-node run).
About 200 bytes an entry."""

_GOOD_HOSTS: Final[dict[int, set[str]]] = {4: set(), 6: set()}
"""Hosts that passed :func:`_host_problem` for each IP version, process-wide: a push-pull
merge asks about every member of the table, and a set lookup costs less than the LRU
cache's call. Emptied when it reaches ``_HOST_CHECK_CACHE`` hosts."""

_NO_SIGNATURE: Final = bytes(64)
_SEQ_MOD: Final = 2**64
_INF: Final = math.inf

# Upper bounds of the encoded size of the probe messages, so a packet's budget for
# piggybacked rumors needs no encoding: fixarray header, tag, uint64 seq (9 bytes at most),
# bin8 node id (34), uint32 load and member count (5 each), str8 host (2 + len), uint16
# port (3).
_PING_BYTES: Final = 1 + 1 + 9 + 34
_ACK_BYTES: Final = 1 + 1 + 9 + 5 + 5
# An ack's coordinate: fixarray header, the vector (fixarray header + 8 float64 of 9 bytes)
# and error, adjustment, height (9 bytes each).
_ACK_COORDINATE_BYTES: Final = 1 + 1 + 9 * coordinates.DIMENSIONS + 3 * 9
_NACK_BYTES: Final = 1 + 1 + 9
_PRESSURE_BYTES: Final = 1 + 1 + 2 + 2
_PING_REQ_FIXED_BYTES: Final = 1 + 1 + 9 + 34 + 2 + 3


@functools.lru_cache(maxsize=_HOST_CHECK_CACHE)
def _host_problem(host: str, ip_version: int) -> str | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "not a numeric IP address"
    if ip.version != ip_version:
        return f"an IPv{ip.version} address on an IPv{ip_version} socket"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "the broadcast address"
    return None


def address_problem(host: object, port: object, ip_version: int) -> str | None:
    """Why ``(host, port)`` may not be used as a peer's address on an IPv``ip_version``
    socket, or None if it may: it must be a numeric IP literal of that version (no host
    names, so nothing is ever resolved), not unspecified (``0.0.0.0``, ``::``), multicast or
    broadcast, with a port in 1–65535. Pure; results for a host are memoized."""
    if type(host) is not str or not host:
        return "host is not a non-empty string"
    if type(port) is not int or not 1 <= port <= 65_535:
        return "port outside 1-65535"
    return _host_problem(host, ip_version)


_RUMOR_TYPES: Final = frozenset((Alive, Suspect, Dead, Leave))
_RUMOR_STATE: Final[dict[type[Message], MemberState]] = {
    Alive: MemberState.ALIVE,
    Suspect: MemberState.SUSPECT,
    Dead: MemberState.DEAD,
    Leave: MemberState.LEFT,
}
_LIVE: Final = (MemberState.ALIVE, MemberState.SUSPECT)
_GONE: Final = (MemberState.DEAD, MemberState.LEFT)
_EVENT_FOR_STATE: Final = {
    MemberState.ALIVE: MemberEvent.ALIVE,
    MemberState.SUSPECT: MemberEvent.SUSPECT,
    MemberState.DEAD: MemberEvent.DEAD,
    MemberState.LEFT: MemberEvent.LEFT,
}


@dataclasses.dataclass(slots=True)
class _Probe:
    """Our probe in progress."""

    target: str
    seq: int
    sent_at: float
    timeout_at: float
    """End of the direct stage: ask relays if no ack by then."""
    end_at: float
    """End of the probe period: suspect the target if no ack by then."""
    helpers: tuple[str, ...] = ()
    nacks: set[str] = dataclasses.field(default_factory=set)
    acked: bool = False
    indirect_sent: bool = False
    tcp_sent: bool = False
    """A TCP fallback ping went out for this probe (at most one per probe)."""
    repinged: bool = False
    """A second direct ping went out: an ack no longer tells which one it answers, so it
    gives no round-trip time (Karn's rule)."""


@dataclasses.dataclass(slots=True)
class _Candidate:
    """A member learned second-hand, waiting to answer us (see "Second-hand members")."""

    alive: Alive
    """Its latest ``Alive`` (signature checked only when it is verified)."""
    source: str
    """The node whose gossip or snapshot introduced it (counted against its quota)."""
    tries: int = 0
    """Verification pings sent so far."""
    pinged_in: int = -1
    """The verification round of its last ping (one ping per round, whichever lane)."""
    vouchers: tuple[str, ...] = ()
    """Distinct current members that named it (up to ``verify_vouchers``): honest members
    pass on only members they verified, so a member named by several is rarely a fake."""


@dataclasses.dataclass(slots=True)
class _Relay:
    """An indirect probe we run for someone else."""

    seq: int
    """The asker's sequence number, to answer with."""
    requester: Address
    target: str
    deadline: float
    """When to give up and answer a nack."""


_COUNTERS: Final = (
    "packets_received",
    "packets_sent",
    "gossip_packets",
    "rumors_sent",
    "probes",
    "probes_failed",
    "indirect_probes",
    "direct_reprobes",
    "tcp_fallback_ok",
    "tcp_fallback_redundant",
    "tcp_fallback_late",
    "tcp_fallback_failed",
    "tcp_fallback_skipped",
    "tcp_pings_answered",
    "tcp_pings_refused",
    "pressure_ignored",
    "ping_reqs_served",
    "ping_reqs_dropped",
    "acks_relayed",
    "acks_unexpected",
    "nacks_sent",
    "nacks_received",
    "pings_wrong_target",
    "suspicions_raised",
    "suspicion_confirmations",
    "members_declared_dead",
    "suspicions_refuted",
    "refutations",
    "rumors_applied",
    "rumors_invalid",
    "rumors_stale",
    "rumors_unknown_subject",
    "rumors_too_big",
    "push_pulls",
    "catch_up_push_pulls",
    "reconnects",
    "seed_reconnects",
    "push_pull_merges",
    "join_attempts",
    "members_forgotten",
    "members_expelled",
    "stalls",
    "addresses_invalid",
    "sends_refused",
    "accusations_by_outsiders",
    "accusations_ahead",
    "unverified_added",
    "unverified_refused",
    "unverified_dropped",
    "unverified_vouched",
    "members_verified",
    "members_refused",
    "verify_pings_sent",
    "ping_reqs_refused",
    "ping_req_address_mismatch",
    "identity_conflicts",
    "refutation_wars",
    "address_flaps",
    "dead_downgraded",
    "coordinate_updates",
    "coordinates_rejected",
    "rtts_rejected",
)


class Membership:
    """One node's SWIM membership. See the module docstring for the protocol."""

    def __init__(
        self,
        config: NodeConfig,
        signer: Signer,
        *,
        host: str,
        port: int,
        rng: random.Random,
        verifier: Verifier = verify,
        incarnation: int = 0,
        now: float = 0.0,
        detect_stalls: bool = True,
        ip_version: Literal[4, 6] = 4,
    ) -> None:
        """Start as an alive member at ``incarnation`` on the clock reading ``now``.

        ``host``/``port`` are the address we advertise. ``detect_stalls=False`` turns off
        the stall guard (for callers that drive ``tick`` by hand at arbitrary times).
        ``ip_version`` is the family of the shell's socket (4 or 6): peers' addresses must
        be IP literals of that family.
        """
        if type(incarnation) is not int or not 0 <= incarnation <= MAX_INCARNATION:
            raise ValueError(f"incarnation must be an integer in [0, 2**64-1], got {incarnation!r}")
        if ip_version not in (4, 6):
            raise ValueError(f"ip_version must be 4 or 6, got {ip_version!r}")
        if not host or not 0 < port <= 65_535:
            raise ValueError(f"bad advertised address {host!r}:{port!r}")
        self._config = config
        self._signer = signer
        self._verifier = verifier
        self._rng = rng
        self._node_id = signer.node_id
        self._host = host
        self._port = port
        self._health = LocalHealth(config.awareness_max_multiplier)
        self._queue = BroadcastQueue()
        self._effects: list[Effect] = []
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        """Monotonic counters by name (a live dict; read, do not write)."""
        self.probe_seconds = Histogram(PROBE_BUCKETS_S)
        """Round trip of every acked probe (direct or through helpers), in seconds."""

        self._members: dict[str, Member] = {}
        self._state_counts: dict[MemberState, int] = dict.fromkeys(MemberState, 0)
        self._alive = IndexedSet()  # ALIVE peers (never ourselves)
        self._suspect = IndexedSet()  # SUSPECT peers
        self._dead = IndexedSet()  # DEAD peers
        self._recently_dead = IndexedSet()  # DEAD peers still within gossip_to_the_dead_time
        self._dead_since: dict[str, float] = {}  # DEAD peers in time order (for the above)
        self._graveyard: dict[str, float] = {}  # DEAD and LEFT peers in time order
        self._suspicions: dict[str, Suspicion] = {}
        self._suspicion_heap: list[tuple[float, int, Suspicion]] = []
        self._heap_counter = 0

        # The rest of this probing pass (over a snapshot of the alive set, see tables).
        self._probe_pass = ProbePass()
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._tcp_pings: dict[int, str] = {}  # TCP fallback pings in flight: seq -> node
        self._seq = rng.getrandbits(32)
        self._load = 0
        self._pressure: Pressure | None = None
        self._left = False
        self._detect_stalls = detect_stalls
        self._ip_version = ip_version

        # Second-hand members waiting to answer us, oldest first (the lane's order).
        self._candidates: OrderedDict[str, _Candidate] = OrderedDict()
        self._candidates_by_source: dict[str, int] = {}
        # The candidates named by at least ``verify_vouchers`` members, in the order of
        # their own lane (see "Second-hand members").
        self._vouched: OrderedDict[str, None] = OrderedDict()
        self._verifying: dict[int, str] = {}  # verification ping seq -> node id
        self._verify_rounds = 0
        # Identity conflicts: when each conflicting address was last reported, and the
        # times of recent refutations forced by an Alive signed with our key.
        self._conflicts_reported: dict[Address, float] = {}
        self._forced_refutations: list[float] = []
        self._previous_address: dict[str, tuple[Address, float]] = {}
        # Vivaldi: our coordinate, and each member's from its last direct ack. Its own
        # random stream (seeded by our id) so coordinates draw nothing from ``rng``.
        self._vivaldi = coordinates.VivaldiClient(random.Random(f"vivaldi:{self._node_id}"))
        self._coordinates: dict[str, coordinates.Coordinate] = {}

        self._join_seeds: tuple[Address, ...] = ()
        self._join_attempt = 0
        self._join_at: float | None = None
        # Catch-up: when the previous probe's ack showed a bigger view than ours, and
        # when the next catch-up push-pull may start.
        self._behind_at: float | None = None
        self._next_catch_up_at = -_INF

        # Random phases, so nodes started together do not probe and gossip in lockstep.
        self._next_probe_at = now + rng.uniform(0.0, config.probe_interval)
        self._next_gossip_at = now + rng.uniform(0.0, config.gossip_interval)
        self._next_push_pull_at = (
            now + rng.uniform(0.0, config.push_pull_interval)
            if config.push_pull_interval > 0
            else _INF
        )

        alive = self._sign(Alive(self._node_id, incarnation, host, port, _NO_SIGNATURE))
        me = Member(self._node_id, host, port, incarnation, MemberState.ALIVE, now, alive, alive)
        self._members[self._node_id] = me
        self._state_counts[MemberState.ALIVE] += 1
        self._enqueue_rumor(alive)

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> NodeConfig:
        return self._config

    @property
    def node_id(self) -> str:
        """Our node id."""
        return self._node_id

    @property
    def incarnation(self) -> int:
        """Our current incarnation (persist it: a restart should pass it + 1)."""
        return self._members[self._node_id].incarnation

    @property
    def address(self) -> Address:
        """The ``(host, port)`` we advertise."""
        return self._host, self._port

    @property
    def left(self) -> bool:
        """True once :meth:`leave` was called."""
        return self._left

    @property
    def health(self) -> int:
        """Lifeguard's local health score (0 is healthy)."""
        return self._health.score

    @property
    def queue_depth(self) -> int:
        """Rumors waiting in the broadcast queue."""
        return len(self._queue)

    @property
    def load(self) -> int:
        """The load we advertise in acks."""
        return self._load

    def coordinate(self) -> coordinates.Coordinate:
        """Our Vivaldi coordinate."""
        return self._vivaldi.coordinate

    def peer_coordinate(self, node_id: str) -> coordinates.Coordinate | None:
        """``node_id``'s coordinate from its last direct ack to us (ours for our id)."""
        if node_id == self._node_id:
            return self._vivaldi.coordinate
        return self._coordinates.get(node_id)

    def estimated_rtt(self, node_id: str) -> float | None:
        """Round trip to ``node_id`` estimated from the coordinates, seconds; None when
        we hold no coordinate for it (0.0 for ourselves)."""
        if node_id == self._node_id:
            return 0.0
        theirs = self._coordinates.get(node_id)
        return None if theirs is None else self._vivaldi.coordinate.distance_s(theirs)

    def members(self) -> list[Member]:
        """Every known member, ourselves included, sorted by node id."""
        return sorted(self._members.values(), key=lambda m: m.node_id)

    def member(self, node_id: str) -> Member | None:
        """The member with ``node_id`` (ourselves included), or None."""
        return self._members.get(node_id)

    def member_ids(self) -> KeysView[str]:
        """The node ids of every member (ourselves included), as a live view."""
        return self._members.keys()

    def alive_count(self) -> int:
        """Members in state alive, ourselves included (unless we left)."""
        return self._state_counts[MemberState.ALIVE]

    def count(self, state: MemberState) -> int:
        """Members in ``state``, ourselves included."""
        return self._state_counts[state]

    def suspicion(self, node_id: str) -> Suspicion | None:
        """The running suspicion about ``node_id``, if any."""
        return self._suspicions.get(node_id)

    def unverified(self) -> list[Alive]:
        """The ``Alive`` of every member learned second-hand that has not answered us yet
        (not members: see "Second-hand members"), oldest first."""
        return [candidate.alive for candidate in self._candidates.values()]

    def unverified_count(self) -> int:
        """How many members learned second-hand wait to answer us."""
        return len(self._candidates)

    def cluster_size(self) -> int:
        """``n`` of the timing formulas: members alive or suspect, ourselves included."""
        return (0 if self._left else 1) + len(self._alive) + len(self._suspect)

    def push_pull_interval(self) -> float:
        """The current anti-entropy period, scaled with the cluster size (0: disabled)."""
        return timing.push_pull_interval(self._config.push_pull_interval, self.cluster_size())

    def retransmit_limit(self) -> int:
        """How many times a rumor is sent at the current cluster size."""
        return timing.retransmit_limit(self._config.retransmit_mult, self.cluster_size())

    # ------------------------------------------------------------------ shell interface

    def take_effects(self) -> list[Effect]:
        """Return and clear the effects produced since the last call, in order."""
        effects, self._effects = self._effects, []
        return effects

    def set_load(self, in_flight: int) -> None:
        """Set the load (tasks in flight) advertised in our acks."""
        if in_flight < 0:
            raise ValueError(f"load must not be negative, got {in_flight}")
        self._load = min(LOAD_MAX, int(in_flight))

    def set_pressure(self, cpu: int, memory: int) -> None:
        """Set the machine pressure (percent of CPU and of memory, 0..100 each) sent
        beside our acks to direct pings; a ValueError for anything else."""
        for name, value in (("cpu", cpu), ("memory", memory)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} pressure must be an integer, got {value!r}")
            if not 0 <= value <= PRESSURE_MAX:
                raise ValueError(f"{name} pressure must be in 0..{PRESSURE_MAX}, got {value}")
        self._pressure = Pressure(cpu, memory)

    @property
    def pressure(self) -> tuple[int, int] | None:
        """Our own machine pressure as last set, ``(cpu, memory)`` percent."""
        p = self._pressure
        return None if p is None else (p.cpu, p.memory)

    def join(self, seeds: Sequence[Address], now: float) -> int:
        """Start a push-pull with every seed (our own address skipped); return how many.

        Until some member is known, the seeds are tried again with exponential backoff
        (``join_retry_initial`` doubling up to ``join_retry_max``) from :meth:`tick`.
        """
        if self._left:
            return 0
        targets: list[Address] = []
        for host, port in seeds:
            addr = (str(host), int(port))
            if address_problem(*addr, self._ip_version) is not None:
                self.counters["addresses_invalid"] += 1
                continue
            if addr != self.address and addr not in targets:
                targets.append(addr)
        self._join_seeds = tuple(targets)
        self._join_attempt = 0
        if not targets:
            self._join_at = None
            return 0
        self._contact_seeds()
        self._join_at = now + timing.join_backoff(
            0, self._config.join_retry_initial, self._config.join_retry_max
        )
        return len(targets)

    def leave(self, now: float) -> None:
        """Leave gracefully: sign a ``Leave``, mark ourselves left and gossip it at once.

        Probing, push-pull and join retries stop; gossip rounds and answers to pings go on
        so the ``Leave`` spreads during ``leave_propagate_time``. Idempotent. To come back,
        start a new :class:`Membership` with a higher incarnation.
        """
        if self._left:
            return
        me = self._members[self._node_id]
        rumor = self._sign(Leave(self._node_id, me.incarnation, _NO_SIGNATURE))
        self._left = True
        self._probe = None
        self._next_probe_at = _INF
        self._next_push_pull_at = _INF
        self._join_at = None
        updated = dataclasses.replace(me, state=MemberState.LEFT, rumor=rumor, state_change=now)
        self._store(me, updated, now)
        self._event(MemberEvent.LEFT, me.state, updated)
        self._enqueue_rumor(rumor)
        self._gossip_round()

    def broadcast(
        self,
        message: Message,
        key: Hashable,
        *,
        cap: int | None = None,
        size: int | None = None,
        admission: bool = False,
    ) -> bool:
        """Queue a non-membership rumor for piggybacking, replacing any queued rumor with
        the same ``key``; with ``cap``, it is sent at most that many times even where
        :meth:`retransmit_limit` is higher. ``size`` is ``wire_size(message)`` when the
        caller knows it already. ``admission`` rumors (certificates and
        revocations) travel in the membership lane: news about a member is taken in only
        once its certificate is known, so the certificate must not queue behind
        application rumors while the member's ``Alive`` spreads. Returns False (and
        counts it) if it can never fit in a packet."""
        lane = LANE_MEMBERS if admission else LANE_APP
        return self._enqueue(("app", key), message, cap, size=size, lane=lane)

    def expel(self, node_id: str, now: float) -> bool:
        """Remove ``node_id`` at once, as if it had left and been forgotten: its admission
        was taken back (its certificate was revoked or expired). Emits ``MemberChanged``
        LEFT (when it was alive or suspect) then FORGOTTEN; returns whether it was held.
        Its rumors are refused from then on by the caller's admission check, not here."""
        self._candidates_discard(node_id)
        self._vouched.pop(node_id, None)
        member = self._members.get(node_id)
        if node_id == self._node_id or member is None:
            return False
        self._suspicions.pop(node_id, None)
        if member.state in (MemberState.ALIVE, MemberState.SUSPECT):
            gone = dataclasses.replace(member, state=MemberState.LEFT, state_change=now)
            self._event(MemberEvent.LEFT, member.state, gone)
        self._forget(node_id)
        self.counters["members_expelled"] += 1
        return True

    def adopt_converged(self, members: Mapping[str, Member], now: float) -> None:
        """Start from the steady state of a converged mesh: ``members`` (every peer, alive,
        keyed by node id; an entry for ourselves is ignored) become our table at once.

        For a fresh instance only (it knows nobody yet): large simulations start this way
        instead of from a join storm. It is as if every join, rumor and anti-entropy
        exchange that taught us these members had already happened: nothing is left
        queued for gossip (our own ``Alive`` included), no event is emitted, and the
        anti-entropy timer gets a random phase over the interval of the new cluster size,
        as on a node that has been running for a while. ``Member`` objects are immutable,
        so many instances may share the same ones. The first probe starts a probing pass
        over the whole new table.
        """
        if self._left or len(self._members) > 1:
            raise ValueError("adopt_converged needs a fresh membership that knows only itself")
        shared = members if isinstance(members, ConvergedTable) else ConvergedTable(members)
        if not shared.states <= {MemberState.ALIVE}:
            raise ValueError("adopt_converged takes alive members only")
        me = self._members[self._node_id]
        table = shared.table()
        table[self._node_id] = me
        self._members = table
        self._alive = shared.ids.without(self._node_id)  # shared with every other core
        self._state_counts[MemberState.ALIVE] = 1 + len(self._alive)
        self._queue.clear()
        interval = self.push_pull_interval()
        if interval > 0:
            self._next_push_pull_at = now + self._rng.uniform(0.0, interval)

    def state_snapshot(self) -> tuple[MemberRumor, ...]:
        """The latest signed rumor of every member, ourselves included, for push-pull.

        A suspect member's ``Alive`` comes first, so a peer that does not know it yet
        learns its address before applying the suspicion.
        """
        if not self._state_counts[MemberState.SUSPECT]:
            return tuple([member.rumor for member in self._members.values()])
        out: list[MemberRumor] = []
        for member in self._members.values():
            if member.state is MemberState.SUSPECT:
                out.append(member.alive)
            out.append(member.rumor)
        return tuple(out)

    def merge_state(
        self, rumors: Sequence[Message], now: float, *, source: str | None = None
    ) -> int:
        """Apply a remote snapshot with exactly the gossip rules; return how many rumors
        changed something. Suspect or dead rumors about ourselves become refutations.

        ``source`` is the node id of the peer whose snapshot this is (the verified sender
        of the push-pull): its own ``Alive`` is first-hand and makes it a member at once;
        every other member it names that we do not know yet is held unverified until it
        answers us (see "Second-hand members")."""
        self.counters["push_pull_merges"] += 1
        applied = 0
        origin = source if source is not None else ""
        first: set[int] = set()
        if source is not None:
            # The source first: once it is a member, it vouches for the others it names.
            for rumor in rumors:
                if type(rumor) is Alive and rumor.node == source:
                    first.add(id(rumor))
                    applied += self._apply(rumor, now, source=origin, direct=True)
            self._verify_by_contact(source, now)
        # A snapshot of a converged peer repeats what we hold: an ``Alive`` about a
        # member we know at the same or a later incarnation is stale whatever its source
        # (``_apply``'s rule, taken here without the call; every other rumor goes through
        # ``_apply``). Counted once at the end.
        # The address check is ``address_problem``'s, written out (one call fewer per
        # rumor of a table of 10,000).
        members = self._members
        me = self._node_id
        ip_version = self._ip_version
        host_problem = _host_problem
        good_hosts = _GOOD_HOSTS.setdefault(ip_version, set())
        stale = 0
        try:
            for rumor in rumors:
                if first and id(rumor) in first:
                    continue
                if type(rumor) is Alive:
                    node = rumor.node
                    if node != me:
                        current = members.get(node)
                        if current is not None and current.rumor is rumor:
                            # The very rumor we hold (shared by a converged start, or
                            # passed on unchanged): stale, and its address was checked
                            # when it was applied.
                            stale += 1
                            continue
                        if current is not None and rumor.incarnation <= current.incarnation:
                            host, port = rumor.host, rumor.port
                            if (
                                type(host) is str
                                and host
                                and type(port) is int
                                and 1 <= port <= 65_535
                            ):
                                if host in good_hosts:
                                    stale += 1
                                    continue
                                if host_problem(host, ip_version) is None:
                                    if len(good_hosts) >= _HOST_CHECK_CACHE:
                                        good_hosts.clear()
                                    good_hosts.add(host)
                                    stale += 1
                                    continue
                applied += self._merge_one(rumor, now, source, origin)
        finally:
            self.counters["rumors_stale"] += stale
        if source is not None:
            self._verify_by_contact(source, now)
        return applied

    def _merge_one(self, rumor: Message, now: float, source: str | None, origin: str) -> int:
        """One rumor of a snapshot (see :meth:`merge_state`); 1 if it changed something."""
        if isinstance(rumor, Dead) and self._dead_as_suspicion(rumor, now):
            return 1
        if type(rumor) in _RUMOR_TYPES:
            direct = source is not None and rumor.node == source  # type: ignore[attr-defined]
            return int(self._apply(rumor, now, source=origin, direct=direct))  # type: ignore[arg-type]
        self.counters["rumors_invalid"] += 1
        return 0

    def _dead_as_suspicion(self, rumor: Dead, now: float) -> bool:
        """A ``Dead`` signed by someone else about a member we hold alive becomes our own
        suspicion, whether it was pushed or gossiped.

        After a partition heals, each side's snapshot declares the other side dead. Taking
        that verbatim would flap live peers to dead until they refute; as memberlist does
        for push-pull merges, we suspect them instead (signed by us), so a live member
        refutes within the suspicion timeout and a truly dead one is confirmed by its
        expiry (or by another ``Dead`` arriving while we suspect it). Gossip gets the same
        rule: a Byzantine member's ``Dead`` at its victim's current incarnation would
        otherwise take the victim out of our probe and gossip lists at once, and we would
        relay that ``Dead`` to others. Returns True if the rumor was handled this way (and
        so must not be applied as a death).
        """
        current = self._members.get(rumor.node)
        if (
            rumor.node == self._node_id
            or current is None
            or current.state is not MemberState.ALIVE
            or rumor.incarnation != current.incarnation
            or not self._may_accuse(rumor.accuser)
            or not self._valid(rumor)
        ):
            return False  # _apply then refuses it, or applies it, with the same rules
        suspect = self._sign(Suspect(rumor.node, rumor.incarnation, self._node_id, _NO_SIGNATURE))
        self.counters["dead_downgraded"] += 1
        self._apply(suspect, now, trusted=True)
        return True

    def receive(self, sender: str, messages: Sequence[Message], addr: Address, now: float) -> None:
        """Handle one decoded packet from ``sender`` (the verified envelope sender) that
        arrived from ``addr``. Membership rumors are applied first, so an ack we send in
        answer already carries a refutation the packet called for."""
        counters = self.counters
        counters["packets_received"] += 1
        candidate = self._candidates.get(sender)
        if candidate is not None and (candidate.alive.host, candidate.alive.port) == addr:
            self._promote(sender, now)  # a signed packet from its advertised address
        others = False
        for message in messages:
            cls = type(message)
            key = _RECEIVED.get(cls)
            if key is None:
                key = _RECEIVED[cls] = f"recv_{cls.__name__.lower()}"
            counters[key] = counters.get(key, 0) + 1
            if cls is Dead and self._dead_as_suspicion(message, now):  # type: ignore[arg-type]
                continue  # someone else's Dead about a member we hold alive: suspect it
            if cls in _RUMOR_TYPES:
                direct = (
                    cls is Alive
                    and message.node == sender  # type: ignore[attr-defined]
                    and (message.host, message.port) == addr  # type: ignore[attr-defined]
                )
                self._apply(message, now, source=sender, direct=direct)  # type: ignore[arg-type]
            else:
                others = True
        if not others:
            return
        effects = self._effects
        for message in messages:
            cls = type(message)
            handling = _HANDLING.get(cls)
            if handling is None:
                handling = _HANDLING[cls] = _handling_of(cls)
            if handling == _DELIVER:  # most messages of a busy mesh: ledger records
                effects.append(Deliver(sender, addr, message))
            elif handling == _ON_PING:
                self._on_ping(message, addr)  # type: ignore[arg-type]
            elif handling == _ON_ACK:
                self._on_ack(sender, message, now)  # type: ignore[arg-type]
            elif handling == _ON_PING_REQ:
                self._on_ping_req(sender, message, addr, now)  # type: ignore[arg-type]
            elif handling == _ON_NACK:
                self._on_nack(sender, message)  # type: ignore[arg-type]
            elif handling == _ON_PRESSURE:
                self._on_pressure(sender, message)  # type: ignore[arg-type]

    def count_received(self, cls: type[Message], count: int, *, packets: int = 0) -> None:
        """Count ``count`` messages of ``cls`` that arrived in a packet but that the layer
        above took out before :meth:`receive` (copies of records it holds already), as
        :meth:`receive` would have counted them; and ``packets`` packets that held nothing
        else, from a sender that is not unverified, which the layer above did not pass on
        at all (:meth:`receive` would only have counted them)."""
        key = _RECEIVED.get(cls)
        if key is None:
            key = _RECEIVED[cls] = f"recv_{cls.__name__.lower()}"
        counters = self.counters
        if packets:
            counters["packets_received"] += packets
        counters[key] = counters.get(key, 0) + count

    def next_deadline(self) -> float:
        """When :meth:`tick` must next be called (``math.inf`` if never).

        Asked after every input a core handles, so the cheap tests come first and the
        failure deadline is :meth:`_failure_deadline` written out."""
        deadline = self._next_probe_at
        if self._suspicion_heap:
            due = self._suspicion_deadline()
            if due < deadline:
                deadline = due
        probe = self._probe
        if (
            probe is not None
            and probe.timeout_at < deadline
            and not probe.acked
            and not probe.indirect_sent
        ):
            deadline = probe.timeout_at
        if self._relays:
            due = next(iter(self._relays.values())).deadline
            if due < deadline:
                deadline = due
        if (
            self._next_gossip_at < deadline
            and self._config.gossip_nodes > 0
            and (self._alive.size or self._suspect.size or self._recently_dead.size)
            and self._queue
        ):
            deadline = self._next_gossip_at
        if self._next_push_pull_at < deadline:
            deadline = self._next_push_pull_at
        if self._join_at is not None and self._join_at < deadline:
            deadline = self._join_at
        if self._dead_since:
            first = next(iter(self._dead_since.values()))
            deadline = min(deadline, first + self._config.gossip_to_the_dead_time)
        if self._graveyard:
            first = next(iter(self._graveyard.values()))
            deadline = min(deadline, first + self._config.dead_member_retention)
        return deadline

    def tick(self, now: float) -> None:
        """Run every timer due at ``now``: probe stages, relay nacks, suspicion expiry,
        gossip, push-pull, join retries, the gossip-to-the-dead window and pruning."""
        if self._detect_stalls:
            lateness = now - self._failure_deadline()
            if lateness > self._config.probe_interval:
                self._stalled(lateness + self._config.probe_timeout)
                return
        self._expire_relays(now)
        probe = self._probe
        if (
            probe is not None
            and not probe.acked
            and not probe.indirect_sent
            and now >= probe.timeout_at
        ):
            self._indirect_probe(probe)
        if now >= self._next_probe_at:
            if self._probe is not None:
                self._finish_probe(self._probe, now)
            self._start_probe(now)
            self._verify_round()
        self._expire_suspicions(now)
        if now >= self._next_gossip_at:
            if self._queue:
                self._gossip_round()
            interval = self._config.gossip_interval
            missed = math.floor((now - self._next_gossip_at) / interval) + 1
            self._next_gossip_at += missed * interval
        if now >= self._next_push_pull_at:
            self._push_pull()
            interval = self.push_pull_interval()
            self._next_push_pull_at = now + interval if interval > 0 else _INF
        if self._join_at is not None and now >= self._join_at:
            self._retry_join(now)
        self._expire_dead_window(now)
        self._prune(now)

    # ------------------------------------------------------------------ rumors

    def _apply(
        self,
        rumor: MemberRumor,
        now: float,
        *,
        trusted: bool = False,
        source: str = "",
        direct: bool = False,
    ) -> bool:
        """Apply one rumor by the ``(incarnation, rank)`` rule; True if it changed state.

        ``source`` is the node that passed it to us; ``direct`` says the rumor is the
        subject's own ``Alive`` straight from the subject (first-hand)."""
        node = rumor.node
        counters = self.counters
        if node == self._node_id:
            return self._apply_about_self(rumor, now, trusted)
        accusation = type(rumor) is Suspect or type(rumor) is Dead
        if accusation and not trusted and not self._may_accuse(rumor.accuser):  # type: ignore[union-attr]
            counters["accusations_by_outsiders"] += 1
            return False
        if type(rumor) is Alive and address_problem(rumor.host, rumor.port, self._ip_version):
            counters["addresses_invalid"] += 1
            return False
        current = self._members.get(node)
        new_state = _RUMOR_STATE[type(rumor)]
        if current is None:
            if new_state is not MemberState.ALIVE:
                counters["rumors_unknown_subject"] += 1
                return False
            if not trusted and not direct:
                return self._hold_unverified(rumor, source)  # type: ignore[arg-type]
            self._candidates_discard(node)
            if len(self._members) >= self._config.max_members:
                counters["members_refused"] += 1
                return False
        else:
            if accusation and rumor.incarnation > current.incarnation:
                counters["accusations_ahead"] += 1  # the accuser cannot have seen it
                return False
            new_key = (rumor.incarnation, new_state)
            old_key = (current.incarnation, current.state)
            if new_key <= old_key:
                if (
                    new_key == old_key
                    and isinstance(rumor, Suspect)
                    and self._confirm(rumor, trusted)
                ):
                    return True
                counters["rumors_stale"] += 1
                return False
        if not trusted and not self._valid(rumor):
            counters["rumors_invalid"] += 1
            return False
        counters["rumors_applied"] += 1
        self._transition(current, rumor, new_state, now)
        return True

    def _confirm(self, rumor: Suspect, trusted: bool) -> bool:
        """A ``Suspect`` at the incarnation of a running suspicion: count the accuser."""
        suspicion = self._suspicions.get(rumor.node)
        if (
            suspicion is None
            or suspicion.accused_by(rumor.accuser)
            or suspicion.confirmations >= suspicion.k
        ):
            return False
        if not trusted and not self._valid(rumor):
            self.counters["rumors_invalid"] += 1
            return False
        suspicion.confirm(rumor.accuser)
        self._push_suspicion(suspicion)
        self.counters["suspicion_confirmations"] += 1
        self._enqueue_rumor(rumor)
        return True

    # ------------------------------------------------------------------ second-hand members

    def is_unverified(self, node_id: str) -> bool:
        """True while ``node_id`` is a member heard of second-hand that has not answered us
        yet (held apart from the table, see the module docstring)."""
        return node_id in self._candidates

    def _hold_unverified(self, rumor: Alive, source: str) -> bool:
        """Hold a second-hand ``Alive`` about a member we do not know until it answers us
        (O(1); its signature is checked when it is verified). Never changes the table."""
        node = rumor.node
        counters = self.counters
        candidate = self._candidates.get(node)
        if candidate is not None:
            if rumor.incarnation > candidate.alive.incarnation:
                candidate.alive = rumor
            else:
                counters["rumors_stale"] += 1
            self._vouch(node, candidate, source)
            return False
        config = self._config
        by_source = self._candidates_by_source
        if (
            len(self._candidates) >= config.max_unverified_members
            or by_source.get(source, 0) >= config.max_unverified_per_source
            or len(self._members) >= config.max_members
        ):
            counters["unverified_refused"] += 1
            return False
        candidate = self._candidates[node] = _Candidate(rumor, source)
        by_source[source] = by_source.get(source, 0) + 1
        counters["unverified_added"] += 1
        self._vouch(node, candidate, source)
        return False

    def _vouch(self, node: str, candidate: _Candidate, source: str) -> None:
        """Count ``source`` among the members that named ``candidate``: only a current
        member counts (a stranger's word costs it nothing, so it is worth nothing), each
        once. At ``verify_vouchers`` distinct members the candidate joins the vouched lane."""
        vouchers = candidate.vouchers
        needed = self._config.verify_vouchers
        if (
            len(vouchers) >= needed
            or source in vouchers
            or source == self._node_id
            or not self._may_accuse(source)
        ):
            return
        vouchers = candidate.vouchers = (*vouchers, source)
        if len(vouchers) >= needed:
            self._vouched[node] = None
            self.counters["unverified_vouched"] += 1

    def _candidates_discard(self, node: str) -> _Candidate | None:
        candidate = self._candidates.pop(node, None)
        if candidate is not None:
            self._vouched.pop(node, None)
            left = self._candidates_by_source[candidate.source] - 1
            if left:
                self._candidates_by_source[candidate.source] = left
            else:
                del self._candidates_by_source[candidate.source]
        return candidate

    def _promote(self, node: str, now: float) -> None:
        """An unverified member answered us: apply its ``Alive`` as a first-hand one."""
        candidate = self._candidates_discard(node)
        if candidate is not None and self._apply(candidate.alive, now, direct=True):
            self.counters["members_verified"] += 1

    def _verify_by_contact(self, node: str, now: float) -> None:
        if node in self._candidates:
            self._promote(node, now)

    def _verify_round(self) -> None:
        """The verification lanes, once per probe period: up to ``verify_pings`` pings to
        unverified members, oldest first, then up to ``verify_vouched_pings`` more to
        those named by at least ``verify_vouchers`` members, oldest first; each ping
        carries only our own ``Alive``. Those out of tries are dropped."""
        config = self._config
        if self._left or not self._candidates:
            return
        me = self._members[self._node_id]
        self._verify_rounds += 1
        if config.verify_pings:
            self._verify_lane(self._candidates, config.verify_pings, me.alive)
        if config.verify_vouched_pings and self._vouched:
            self._verify_lane(self._vouched, config.verify_vouched_pings, me.alive)

    def _verify_lane(self, lane: OrderedDict[str, _T], budget: int, alive: Alive) -> None:
        """Ping up to ``budget`` candidates from the front of ``lane`` (an ordered view of
        the candidates), moving each to its back; drop those out of tries."""
        candidates = self._candidates
        vouched = self._vouched
        tries = self._config.unverified_tries
        sent = 0
        for _ in range(len(lane)):
            if sent >= budget or not lane:
                break
            node = next(iter(lane))
            candidate = candidates[node]
            if candidate.tries >= tries:
                self._candidates_discard(node)
                self.counters["unverified_dropped"] += 1
                continue
            if candidate.pinged_in == self._verify_rounds:
                break  # the front was pinged this round: the lane has come full circle
            candidates.move_to_end(node)
            if node in vouched:
                vouched.move_to_end(node)
            candidate.pinged_in = self._verify_rounds
            candidate.tries += 1
            addr = (candidate.alive.host, candidate.alive.port)
            if not self._sendable(addr):
                continue
            seq = self._next_seq()
            if len(self._verifying) >= MAX_VERIFYING:
                del self._verifying[next(iter(self._verifying))]
            self._verifying[seq] = node
            sent += 1
            self.counters["verify_pings_sent"] += 1
            self.counters["packets_sent"] += 1
            self._effects.append(SendPacket(addr, (Ping(seq, node), alive)))

    # ------------------------------------------------------------------ transitions

    def _transition(
        self, current: Member | None, rumor: MemberRumor, state: MemberState, now: float
    ) -> None:
        node = rumor.node
        if (
            current is not None
            and type(rumor) is Alive
            and (rumor.host, rumor.port) != current.address
        ):
            self._address_changed(node, current.address, (rumor.host, rumor.port), now)
        if current is None:
            assert isinstance(rumor, Alive)  # only an Alive introduces a member
            member = Member(
                node, rumor.host, rumor.port, rumor.incarnation, state, now, rumor, rumor
            )
        else:
            alive = rumor if isinstance(rumor, Alive) else current.alive
            member = Member(
                node,
                alive.host,
                alive.port,
                rumor.incarnation,
                state,
                current.state_change if current.state is state else now,
                rumor,
                alive,
                current.load,
                current.rtt,
                current.pressure,
            )
        suspicion = self._suspicions.pop(node, None)
        if isinstance(rumor, Suspect):
            self._start_suspicion(node, rumor.incarnation, rumor.accuser, now)
        elif suspicion is not None and state is MemberState.ALIVE:
            self.counters["suspicions_refuted"] += 1
        self._store(current, member, now)
        if current is None:
            self._event(MemberEvent.JOINED, None, member)
        elif current.state is not state:
            self._event(_EVENT_FOR_STATE[state], current.state, member)
        elif state is MemberState.ALIVE:
            self._event(MemberEvent.UPDATED, current.state, member)
        self._enqueue_rumor(rumor)

    def _apply_about_self(self, rumor: MemberRumor, now: float, trusted: bool) -> bool:
        """Rumors about ourselves: refute anything that contradicts our current Alive."""
        if self._left or trusted:
            return False
        me = self._members[self._node_id]
        if isinstance(rumor, Alive):
            # Only a previous life of ours, or another process holding our key, can have
            # signed it: announce a newer one (and report the second case).
            stale = rumor.incarnation < me.incarnation or (
                rumor.incarnation == me.incarnation
                and (rumor.host, rumor.port) == (me.host, me.port)
            )
            penalize = False
        else:
            if not isinstance(rumor, Leave) and rumor.incarnation > me.incarnation:
                # Nobody can have seen an incarnation of ours above the current one.
                self.counters["accusations_ahead"] += 1
                return False
            stale = rumor.incarnation < me.incarnation
            # Any signed accusation at our incarnation is refuted (a refutation is always
            # safe, and after a partition the accusers are dead in our view), but only a
            # member's accusation costs us local health.
            penalize = not isinstance(rumor, Leave) and self._may_accuse(rumor.accuser)
        if stale:
            self.counters["rumors_stale"] += 1
            if not isinstance(rumor, Alive) and ("member", self._node_id) not in self._queue:
                # Someone still accuses an older incarnation of ours: our refutation was
                # lost on its way. Announce the current Alive again (the next packet to
                # the accuser, e.g. the ack to its buddy ping, will carry it).
                self._enqueue_rumor(me.rumor)
            return False
        if not self._valid(rumor):
            self.counters["rumors_invalid"] += 1
            return False
        if isinstance(rumor, Alive):
            self._identity_evidence(rumor, now)
        self._refute(rumor.incarnation, now, penalize=penalize)
        return True

    def _identity_evidence(self, rumor: Alive, now: float) -> None:
        """An ``Alive`` about us, signed with our key, that we did not send: another
        address means another process holds our key; several in a short window at our
        own address mean a refutation war."""
        window = IDENTITY_CONFLICT_WINDOW
        forced = [t for t in self._forced_refutations if now - t < window]
        forced.append(now)
        self._forced_refutations = forced[-REFUTATION_WAR_COUNT:]
        other = (rumor.host, rumor.port)
        if other != self.address:
            self.counters["identity_conflicts"] += 1
        elif len(forced) >= REFUTATION_WAR_COUNT:
            self.counters["refutation_wars"] += 1
        else:
            return
        reported = self._conflicts_reported.get(other)
        if reported is not None and now - reported < window:
            return
        if len(self._conflicts_reported) >= _ADDRESS_CACHE:
            self._conflicts_reported.clear()
        self._conflicts_reported[other] = now
        self._effects.append(IdentityConflict(self._node_id, other))

    def _may_accuse(self, accuser: str) -> bool:
        """Only a current member (alive or suspect; ourselves while not left) accuses."""
        member = self._members.get(accuser)
        return member is not None and member.state in _LIVE

    def _refute(self, incarnation: int, now: float, *, penalize: bool) -> None:
        me = self._members[self._node_id]
        new_incarnation = min(max(incarnation, me.incarnation) + 1, MAX_INCARNATION)
        alive = self._sign(
            Alive(self._node_id, new_incarnation, self._host, self._port, _NO_SIGNATURE)
        )
        updated = dataclasses.replace(me, incarnation=new_incarnation, rumor=alive, alive=alive)
        self._store(me, updated, now)
        self._event(MemberEvent.UPDATED, me.state, updated)
        self._enqueue_rumor(alive)
        self.counters["refutations"] += 1
        if penalize:
            self._health.apply(1)

    def _valid(self, rumor: MemberRumor) -> bool:
        """Check the rumor's signature: subject's key for Alive/Leave, accuser's otherwise."""
        if isinstance(rumor, Suspect | Dead):
            if rumor.accuser == rumor.node:
                return False
            signer = rumor.accuser
        else:
            signer = rumor.node
        try:
            key = _public_key(signer)
            data = signing_bytes(rumor)
        except LocalProtocolError:
            return False
        return self._verifier(key, data, rumor.signature)

    def _sign(self, message: _R) -> _R:
        return dataclasses.replace(message, signature=self._signer.sign(signing_bytes(message)))

    # ------------------------------------------------------------------ member table

    def _store(self, old: Member | None, new: Member, now: float) -> None:
        """Put ``new`` in the table and keep every index in step with its state."""
        node = new.node_id
        self._members[node] = new
        old_state = old.state if old is not None else None
        if old_state is new.state:
            return
        if old_state is not None:
            self._state_counts[old_state] -= 1
        self._state_counts[new.state] += 1
        if node == self._node_id:
            return
        if old_state is MemberState.ALIVE:
            self._alive.discard(node)
        elif old_state is MemberState.SUSPECT:
            self._suspect.discard(node)
        elif old_state is MemberState.DEAD:
            self._dead.discard(node)
            self._recently_dead.discard(node)
            self._dead_since.pop(node, None)
            self._graveyard.pop(node, None)
        elif old_state is MemberState.LEFT:
            self._graveyard.pop(node, None)
        if new.state is MemberState.ALIVE:
            self._alive.add(node)
        elif new.state is MemberState.SUSPECT:
            self._suspect.add(node)
        elif new.state is MemberState.DEAD:
            self._dead.add(node)
            self._recently_dead.add(node)
            self._dead_since[node] = now
            self._graveyard[node] = now
        else:
            self._graveyard[node] = now
        if new.state in _LIVE and old_state not in _LIVE:
            self._add_to_probe_list(node)
            if self._join_at is not None:
                self._join_at = None  # we know someone: the join succeeded

    def _address_changed(self, node: str, old: Address, new: Address, now: float) -> None:
        """Count a member that moves back to its previous address within the window."""
        previous = self._previous_address.get(node)
        if previous is not None and previous[0] == new and now - previous[1] <= ADDRESS_FLAP_WINDOW:
            self.counters["address_flaps"] += 1
        self._previous_address[node] = (old, now)

    def _event(self, kind: MemberEvent, old: MemberState | None, member: Member) -> None:
        self._effects.append(MemberChanged(kind, member.node_id, old, member.state, member))

    def _forget(self, node: str) -> None:
        member = self._members.pop(node)
        self._state_counts[member.state] -= 1
        self._alive.discard(node)
        self._suspect.discard(node)
        self._dead.discard(node)
        self._recently_dead.discard(node)
        self._dead_since.pop(node, None)
        self._graveyard.pop(node, None)
        self._queue.discard(("member", node))
        self._previous_address.pop(node, None)
        self._coordinates.pop(node, None)
        self._vivaldi.forget(node)
        self.counters["members_forgotten"] += 1
        self._effects.append(MemberChanged(MemberEvent.FORGOTTEN, node, member.state, None, member))

    def _expire_dead_window(self, now: float) -> None:
        window = self._config.gossip_to_the_dead_time
        while self._dead_since:
            node, since = next(iter(self._dead_since.items()))
            if since + window > now:
                break
            del self._dead_since[node]
            self._recently_dead.discard(node)

    def _prune(self, now: float) -> None:
        retention = self._config.dead_member_retention
        while self._graveyard:
            node, since = next(iter(self._graveyard.items()))
            if since + retention > now:
                break
            self._forget(node)

    # ------------------------------------------------------------------ suspicion

    def _start_suspicion(self, node: str, incarnation: int, accuser: str, now: float) -> None:
        config = self._config
        n = self.cluster_size()
        low, high = timing.suspicion_bounds(
            config.suspicion_mult, config.suspicion_max_timeout_mult, n, config.probe_interval
        )
        suspicion = Suspicion(
            node,
            incarnation,
            accuser,
            start=now,
            k=timing.expected_confirmations(config.suspicion_mult, n),
            min_timeout=low,
            max_timeout=high,
        )
        self._suspicions[node] = suspicion
        self._push_suspicion(suspicion)

    def _push_suspicion(self, suspicion: Suspicion) -> None:
        self._heap_counter += 1
        heapq.heappush(self._suspicion_heap, (suspicion.deadline, self._heap_counter, suspicion))

    def _suspicion_deadline(self) -> float:
        heap = self._suspicion_heap
        while heap:
            deadline, _, suspicion = heap[0]
            if (
                self._suspicions.get(suspicion.node_id) is suspicion
                and suspicion.deadline == deadline
            ):
                return deadline
            heapq.heappop(heap)  # superseded entry
        return _INF

    def _expire_suspicions(self, now: float) -> None:
        while self._suspicion_deadline() <= now:
            _, _, suspicion = heapq.heappop(self._suspicion_heap)
            member = self._members.get(suspicion.node_id)
            if member is None or member.state is not MemberState.SUSPECT:
                self._suspicions.pop(suspicion.node_id, None)
                continue
            dead = self._sign(
                Dead(member.node_id, member.incarnation, self._node_id, _NO_SIGNATURE)
            )
            self.counters["members_declared_dead"] += 1
            self._apply(dead, now, trusted=True)

    # ------------------------------------------------------------------ probing

    def _failure_deadline(self) -> float:
        """The earliest failure-detection timer (probe stages, relays, suspicions)."""
        deadline = self._next_probe_at
        if self._suspicion_heap:
            deadline = min(deadline, self._suspicion_deadline())
        probe = self._probe
        if (
            probe is not None
            and probe.timeout_at < deadline
            and not probe.acked
            and not probe.indirect_sent
        ):
            deadline = probe.timeout_at
        if self._relays:
            deadline = min(deadline, next(iter(self._relays.values())).deadline)
        return deadline

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % _SEQ_MOD
        return self._seq

    def _add_to_probe_list(self, node: str) -> None:
        """Add a newly live member to the rest of this pass (drawn in random order)."""
        self._probe_pass.add(node)

    def _next_probe_target(self) -> Member | None:
        rebuilt = False
        while True:
            probe_pass = self._probe_pass
            i = probe_pass.cursor
            if i >= probe_pass.length:
                if rebuilt:
                    return None
                rebuilt = True
                # The pass starts with every alive member, then the suspects.
                self._probe_pass = ProbePass(self._alive.snapshot(), iter(self._suspect))
                continue
            # One step of a Fisher-Yates shuffle: the next target is drawn uniformly from
            # the rest of the pass, which makes each pass a uniformly random order.
            node = probe_pass.draw(self._rng.randrange(i, probe_pass.length))
            member = self._members.get(node)
            if member is not None and member.state in _LIVE:
                return member

    def _start_probe(self, now: float) -> None:
        interval = self._health.scale(self._config.probe_interval)
        self._next_probe_at = now + interval
        target = self._next_probe_target()
        if target is None:
            self._probe = None
            return
        seq = self._next_seq()
        timeout = self._health.scale(self._config.probe_timeout)
        self._probe = _Probe(target.node_id, seq, now, now + timeout, now + interval)
        self.counters["probes"] += 1
        self._send_ping(seq, target.node_id, target.address)

    def _send_ping(self, seq: int, node: str, addr: Address) -> None:
        """Ping ``node`` at ``addr``; a suspect target also gets its ``Suspect`` (buddy)."""
        messages: list[Message] = [Ping(seq, node)]
        size = _PING_BYTES
        exclude: Hashable | None = None
        target = self._members.get(node)
        if target is not None and target.state is MemberState.SUSPECT:
            messages.append(target.rumor)
            size += self._rumor_size(target.rumor)
            exclude = ("member", node)
        self._send(addr, messages, size, exclude)

    def _indirect_probe(self, probe: _Probe) -> None:
        probe.indirect_sent = True
        target = self._members.get(probe.target)
        if target is None or target.state not in _LIVE:
            return
        for _ in range(self._config.direct_reprobes):
            # Another direct try beside the relays (and the TCP ping below): on a
            # lossy network the first ping or its ack is the likeliest loss, and the
            # relays' paths are twice as long. An ack to either counts; it gives no RTT.
            probe.repinged = True
            self.counters["direct_reprobes"] += 1
            self._send_ping(probe.seq, target.node_id, target.address)
        self._tcp_fallback(probe, target)
        k = self._config.indirect_checks
        if k == 0:
            return
        helpers = [n for n in self._sample(self._alive, k + 1) if n != probe.target][:k]
        probe.helpers = tuple(helpers)
        request = PingReq(probe.seq, target.node_id, target.host, target.port)
        size = _PING_REQ_FIXED_BYTES + len(target.host.encode("utf-8"))
        for node in helpers:
            helper = self._members[node]
            self._send(helper.address, [request], size)
        self.counters["indirect_probes"] += len(helpers)

    def _tcp_fallback(self, probe: _Probe, target: Member) -> None:
        """One TCP ping beside the relays (memberlist's fallback probe): a member behind a
        path that drops UDP still answers over TCP, and that answer counts as an ack. At
        most one per probe, with the probe's timeout (cut to the rest of the probe
        period), and at most ``tcp_fallback_max_concurrent`` in flight, so nothing a peer
        sends can make us open more connections than that."""
        cap = self._config.tcp_fallback_max_concurrent
        if cap == 0 or probe.tcp_sent:
            return
        if len(self._tcp_pings) >= cap:
            self.counters["tcp_fallback_skipped"] += 1
            return
        if not self._sendable(target.address):
            return
        probe.tcp_sent = True
        self._tcp_pings[probe.seq] = target.node_id
        # The probe timeout, but no later than the probe's end: an ack after it is no use
        # (on the WAN profile, 3 s of timeout leave 2 s of a 5 s period).
        timeout = min(
            self._health.scale(self._config.probe_timeout), probe.end_at - probe.timeout_at
        )
        self._effects.append(StartTcpPing(target.address, target.node_id, probe.seq, timeout))

    @property
    def tcp_pings_in_flight(self) -> int:
        """TCP fallback pings started and not yet reported done."""
        return len(self._tcp_pings)

    def tcp_ping_done(self, node: str, seq: int, ack: Ack | None, now: float) -> str:
        """The TCP ping of a :class:`StartTcpPing` ended: ``ack`` is the verified ``Ack``
        signed by ``node`` (None: refused, timed out, unreachable or not an ack). Returns
        the result counted: ``ok`` (it saved the probe: no suspicion), ``redundant`` (a
        UDP or relayed ack came first), ``late`` (the probe was over), ``failed``, or
        ``unexpected`` (no such ping in flight; nothing changes)."""
        if self._tcp_pings.get(seq) != node:
            self.counters["acks_unexpected"] += 1
            return "unexpected"
        del self._tcp_pings[seq]
        if ack is None or ack.seq != seq:
            self.counters["tcp_fallback_failed"] += 1
            return "failed"
        probe = self._probe
        if probe is None or probe.seq != seq or probe.target != node:
            self.counters["tcp_fallback_late"] += 1
            return "late"
        if probe.acked:
            self.counters["tcp_fallback_redundant"] += 1
            return "redundant"
        probe.acked = True
        self.counters["tcp_fallback_ok"] += 1
        self.probe_seconds.observe(now - probe.sent_at)
        member = self._members.get(node)
        if member is not None:  # the load is news; the round trip is not a UDP one
            self._members[node] = dataclasses.replace(member, load=ack.load)
        return "ok"

    def answer_tcp_ping(self, ping: Ping) -> Ack | None:
        """Our ``Ack`` to a ``Ping`` that came over TCP, or None when it is not for us
        (another node's id, or we left)."""
        if ping.target != self._node_id or self._left:
            self.counters["tcp_pings_refused"] += 1
            return None
        self.counters["tcp_pings_answered"] += 1
        return self._ack(ping.seq)

    def _finish_probe(self, probe: _Probe, now: float) -> None:
        self._probe = None
        self._health.apply(
            timing.probe_health_delta(probe.acked, len(probe.helpers), len(probe.nacks))
        )
        if probe.acked:
            return
        self.counters["probes_failed"] += 1
        member = self._members.get(probe.target)
        if member is None or member.state not in _LIVE or self._left:
            return
        if member.state is MemberState.SUSPECT:
            suspicion = self._suspicions.get(member.node_id)
            if suspicion is not None and (
                suspicion.accused_by(self._node_id) or suspicion.confirmations >= suspicion.k
            ):
                return  # our accusation would change nothing
        rumor = self._sign(
            Suspect(member.node_id, member.incarnation, self._node_id, _NO_SIGNATURE)
        )
        if self._apply(rumor, now, trusted=True):
            self.counters["suspicions_raised"] += 1

    def _on_ping(self, ping: Ping, addr: Address) -> None:
        if ping.target != self._node_id:
            self.counters["pings_wrong_target"] += 1
            return
        ack_bytes = _ACK_BYTES + _ACK_COORDINATE_BYTES
        if self._pressure is None:
            self._send(addr, [self._ack(ping.seq)], ack_bytes)
        else:
            self._send(addr, [self._ack(ping.seq), self._pressure], ack_bytes + _PRESSURE_BYTES)

    def _on_pressure(self, sender: str, pressure: Pressure) -> None:
        """A member's own pressure (the envelope is signed by ``sender``; the decoder
        checked both parts are in 0..100). From a non-member: ignored."""
        member = self._members.get(sender)
        if sender == self._node_id or member is None or member.state not in _LIVE:
            self.counters["pressure_ignored"] += 1
            return
        self._members[sender] = dataclasses.replace(
            member, pressure=(pressure.cpu, pressure.memory)
        )

    def _ack(self, seq: int) -> Ack:
        c = self._vivaldi.coordinate
        wire = NetworkCoordinate(c.vec, c.error, c.adjustment, c.height)
        return Ack(seq, self._load, self.cluster_size(), wire)

    def _on_ping_req(self, sender: str, request: PingReq, addr: Address, now: float) -> None:
        """Relay only for members, to members, at the target address we know."""
        counters = self.counters
        if address_problem(request.host, request.port, self._ip_version) is not None:
            counters["addresses_invalid"] += 1
            return
        requester = self._members.get(sender)
        if sender == self._node_id or requester is None or requester.state not in _LIVE:
            counters["ping_reqs_refused"] += 1
            return
        if request.target == self._node_id:
            self._send(
                requester.address, [self._ack(request.seq)], _ACK_BYTES + _ACK_COORDINATE_BYTES
            )
            return
        target = self._members.get(request.target)
        if target is None or target.state not in _LIVE:
            counters["ping_reqs_refused"] += 1
            return
        if (request.host, request.port) != target.address:
            counters["ping_req_address_mismatch"] += 1
        if len(self._relays) >= MAX_PENDING_RELAYS:
            counters["ping_reqs_dropped"] += 1
            return
        seq = self._next_seq()
        deadline = now + timing.nack_timeout(self._config.probe_timeout)
        self._relays[seq] = _Relay(request.seq, requester.address, request.target, deadline)
        counters["ping_reqs_served"] += 1
        self._send_ping(seq, request.target, target.address)

    def _on_ack(self, sender: str, ack: Ack, now: float) -> None:
        verifying = self._verifying.pop(ack.seq, None)
        if verifying is not None:
            if verifying == sender:
                self._promote(sender, now)  # ack to a verification ping
            else:
                self.counters["acks_unexpected"] += 1
            return
        relay = self._relays.get(ack.seq)
        if relay is not None and sender == relay.target:
            del self._relays[ack.seq]
            # The target's coordinate is not relayed: the requester could not use it (the
            # round trip through us is not a direct one) and could not tell it from ours.
            self._send(relay.requester, [Ack(relay.seq, ack.load, ack.members)], _ACK_BYTES)
            self.counters["acks_relayed"] += 1
            return
        probe = self._probe
        if (
            probe is None
            or probe.seq != ack.seq
            or probe.acked
            or (sender != probe.target and sender not in probe.helpers)
        ):
            self.counters["acks_unexpected"] += 1
            return
        probe.acked = True
        self.probe_seconds.observe(now - probe.sent_at)
        member = self._members.get(probe.target)
        if member is not None:
            direct = sender == probe.target and not probe.repinged
            rtt = now - probe.sent_at if direct else member.rtt
            self._members[member.node_id] = member.with_ack(ack.load, rtt)
            if sender == probe.target and ack.coordinate is not None:
                self._on_coordinate(sender, ack.coordinate, now - probe.sent_at if direct else None)
            self._catch_up(ack.members, member, now)

    def _on_coordinate(self, node: str, wire: NetworkCoordinate, rtt: float | None) -> None:
        """Keep ``node``'s coordinate from its own ack; with a direct round trip ``rtt``
        (seconds), move ours. Acks through helpers carry none; after a re-ping it is not
        known which ping an ack answers, so ``rtt`` is None and only theirs is kept."""
        coord = coordinates.Coordinate(wire.vec, wire.error, wire.adjustment, wire.height)
        if coordinates.coordinate_problem(coord) is not None:
            self.counters["coordinates_rejected"] += 1
            return
        self._coordinates[node] = coord
        if rtt is None:
            return
        if coordinates.rtt_problem(rtt) is not None:
            self.counters["rtts_rejected"] += 1
            return
        self._vivaldi.update(node, coord, rtt)
        self.counters["coordinate_updates"] += 1

    def _catch_up(self, theirs: int, member: Member, now: float) -> None:
        """Push-pull with ``member`` when its view and the previous probed member's were
        both bigger than ours: we missed a rumor (see ``NodeConfig.catch_up_interval``)."""
        interval = self._config.catch_up_interval
        if interval <= 0 or self._left or theirs <= self.cluster_size():
            self._behind_at = None
            return
        if self._behind_at is None or now < self._next_catch_up_at:
            self._behind_at = now
            return
        self._behind_at = None
        self._next_catch_up_at = now + interval
        self.counters["catch_up_push_pulls"] += 1
        self._start_push_pull(member.address, False)

    def _on_nack(self, sender: str, nack: Nack) -> None:
        probe = self._probe
        if probe is not None and probe.seq == nack.seq and sender in probe.helpers:
            probe.nacks.add(sender)
            self.counters["nacks_received"] += 1

    def _expire_relays(self, now: float) -> None:
        relays = self._relays
        while relays:
            seq, relay = next(iter(relays.items()))
            if relay.deadline > now:
                break
            del relays[seq]
            self._send(relay.requester, [Nack(relay.seq)], _NACK_BYTES)
            self.counters["nacks_sent"] += 1

    # ------------------------------------------------------------------ dissemination

    def _rumor_size(self, rumor: MemberRumor) -> int:
        queued = self._queue.get(("member", rumor.node))
        if queued is not None and queued.message is rumor:
            return queued.size
        return wire_size(rumor)

    def _enqueue_rumor(self, rumor: MemberRumor) -> None:
        """Queue a membership rumor: ours (a refutation) ahead of everything, the others
        ahead of application rumors (see "Dissemination")."""
        lane = LANE_OWN if rumor.node == self._node_id else LANE_MEMBERS
        self._enqueue(("member", rumor.node), rumor, lane=lane)

    def _enqueue(
        self,
        key: Hashable,
        message: Message,
        cap: int | None = None,
        *,
        lane: int = LANE_APP,
        size: int | None = None,
    ) -> bool:
        if size is None:
            size = wire_size(message)
        if ENVELOPE_OVERHEAD + size > self._config.max_packet_bytes:
            self.counters["rumors_too_big"] += 1
            return False
        self._queue.push(key, message, size, cap=cap, lane=lane)
        return True

    def _send(
        self,
        addr: Address,
        messages: list[Message],
        size: int,
        exclude: Hashable | None = None,
    ) -> None:
        """Emit one packet: ``messages`` (``size`` bytes at most) plus piggybacked rumors."""
        if not self._sendable(addr):
            return
        budget = self._config.max_packet_bytes - ENVELOPE_OVERHEAD - size
        if budget > 0 and self._queue:
            extra = self._queue.take(budget, self.retransmit_limit(), exclude=exclude)
            self.counters["rumors_sent"] += len(extra)
            messages.extend(extra)
        self.counters["packets_sent"] += 1
        self._effects.append(SendPacket(addr, tuple(messages)))

    def _gossip_round(self) -> None:
        config = self._config
        if config.gossip_nodes == 0 or not self._queue:
            return
        budget = config.max_packet_bytes - ENVELOPE_OVERHEAD
        limit = self.retransmit_limit()
        members = self._members
        take = self._queue.take
        effects = self._effects
        ip_version = self._ip_version
        counters = self.counters
        for node in self._gossip_targets(config.gossip_nodes):
            member = members[node]
            addr = (member.host, member.port)
            if address_problem(member.host, member.port, ip_version) is not None:
                counters["sends_refused"] += 1  # as _sendable does
                continue
            rumors = take(budget, limit)
            if not rumors:
                break
            counters["gossip_packets"] += 1
            counters["packets_sent"] += 1
            counters["rumors_sent"] += len(rumors)
            effects.append(SendPacket(addr, tuple(rumors)))

    def _gossip_targets(self, k: int) -> list[str]:
        """Up to ``k`` distinct random members that are alive, suspect or recently dead."""
        pools = (self._alive, self._suspect, self._recently_dead)
        total = pools[0].size + pools[1].size + pools[2].size
        picked: list[str] = []
        for i in self._rng.sample(range(total), min(k, total)):
            for pool in pools:
                if i < pool.size:
                    picked.append(pool[i])
                    break
                i -= pool.size
        return picked

    def _has_gossip_targets(self) -> bool:
        return bool(self._alive.size or self._suspect.size or self._recently_dead.size)

    def _sample(self, pool: IndexedSet, k: int) -> list[str]:
        return [pool[i] for i in self._rng.sample(range(len(pool)), min(k, len(pool)))]

    # ------------------------------------------------------------------ anti-entropy, join

    def _push_pull(self) -> None:
        """Exchange state with a random alive member or, now and then, a lost one.

        Trying a dead member (as Serf's reconnect does) is what heals a partition: each
        side has declared the other dead and no longer probes it. A seed we joined through
        that no live member answers for counts as lost too: once a split outlasts
        ``dead_member_retention`` both sides have forgotten each other, and the seeds are
        the only addresses left to find the other side again. The chance is
        ``lost / (alive + 1)`` (capped at 1), so reconnection attempts grow with the
        number of members lost; a mesh whose seeds are all alive draws as before.
        """
        if self._left:
            return
        alive, dead = len(self._alive), len(self._dead)
        seeds = self.lost_seeds()
        lost = dead + len(seeds)
        if lost and (not alive or self._rng.random() < lost / (alive + 1)):
            pick = self._rng.randrange(lost)
            if pick < dead:
                addr = self._members[self._dead[pick]].address
                self.counters["reconnects"] += 1
            else:
                addr = seeds[pick - dead]
                self.counters["seed_reconnects"] += 1
        elif alive:
            addr = self._members[self._alive[self._rng.randrange(alive)]].address
        else:
            return
        self.counters["push_pulls"] += 1
        self._start_push_pull(addr, False)

    @property
    def join_seeds(self) -> tuple[Address, ...]:
        """The seeds of the last :meth:`join`, our own address left out."""
        return self._join_seeds

    def lost_seeds(self) -> list[Address]:
        """Join seeds at whose address no alive or suspect member is known (one pass over
        the live members, and only for a node that joined through seeds)."""
        if not self._join_seeds:
            return []
        live = {self._members[n].address for n in self._alive}
        live.update(self._members[n].address for n in self._suspect)
        return [addr for addr in self._join_seeds if addr not in live]

    def _contact_seeds(self) -> None:
        self.counters["join_attempts"] += 1
        for addr in self._join_seeds:
            self._start_push_pull(addr, True)

    def _start_push_pull(self, addr: Address, join: bool) -> None:
        if self._sendable(addr):
            self._effects.append(StartPushPull(addr, join))

    def _sendable(self, addr: Address) -> bool:
        """Defence in depth: never emit I/O toward an address the wire checks refuse."""
        if address_problem(addr[0], addr[1], self._ip_version) is None:
            return True
        self.counters["sends_refused"] += 1
        return False

    def _retry_join(self, now: float) -> None:
        if len(self._members) > 1:
            self._join_at = None
            return
        self._join_attempt += 1
        self._contact_seeds()
        self._join_at = now + timing.join_backoff(
            self._join_attempt, self._config.join_retry_initial, self._config.join_retry_max
        )

    # ------------------------------------------------------------------ stalls

    def _stalled(self, delay: float) -> None:
        """We were not scheduled for ``delay`` seconds: push failure detection back."""
        self.counters["stalls"] += 1
        self._health.apply(1)
        probe = self._probe
        if probe is not None:
            probe.sent_at += delay
            probe.timeout_at += delay
            probe.end_at += delay
        self._next_probe_at += delay
        for relay in self._relays.values():
            relay.deadline += delay
        for suspicion in self._suspicions.values():
            suspicion.shift(delay)
        self._suspicion_heap = []
        for suspicion in self._suspicions.values():
            self._push_suspicion(suspicion)
        self._next_gossip_at += delay
        self._next_push_pull_at += delay
        if self._join_at is not None:
            self._join_at += delay

    # ------------------------------------------------------------------ display

    def __repr__(self) -> str:
        counts = self._state_counts
        return (
            f"<Membership {short_id(self._node_id)}@{self.incarnation}"
            f"{' left' if self._left else ''} alive={counts[MemberState.ALIVE]} "
            f"suspect={counts[MemberState.SUSPECT]} dead={counts[MemberState.DEAD]} "
            f"left={counts[MemberState.LEFT]} queue={len(self._queue)} "
            f"health={self._health.score}>"
        )


@functools.lru_cache(maxsize=65_536)
def _public_key(node_id: str) -> bytes:
    """``public_key_from_node_id``, memoized: every rumor check needs one, and decoding
    base32 costs more than the rest of applying a rumor."""
    return public_key_from_node_id(node_id)


_RUMOR, _ON_PING, _ON_ACK, _ON_PING_REQ, _ON_NACK, _ON_PRESSURE, _DELIVER = range(7)
"""How :meth:`Membership.receive` handles a message of one class (see :func:`_handling_of`)."""

_HANDLING: dict[type, int] = {}
"""Message class -> its handling, filled on first sight: the class of a message decides it,
so the ``isinstance`` chain runs once per class instead of once per message."""


def _handling_of(cls: type) -> int:
    """The handling of messages of class ``cls``: the first of Ping, Ack, PingReq, Nack and
    Pressure it is a subclass of; else a rumor (applied in the first pass) or, for anything
    else, delivered to the layer above."""
    for base, handling in (
        (Ping, _ON_PING),
        (Ack, _ON_ACK),
        (PingReq, _ON_PING_REQ),
        (Nack, _ON_NACK),
        (Pressure, _ON_PRESSURE),
    ):
        if issubclass(cls, base):
            return handling
    return _RUMOR if cls in _RUMOR_TYPES else _DELIVER


_RECEIVED: dict[type[Message], str] = {
    Ping: "recv_ping",
    PingReq: "recv_ping_req",
    Ack: "recv_ack",
    Nack: "recv_nack",
    Alive: "recv_alive",
    Suspect: "recv_suspect",
    Dead: "recv_dead",
    Leave: "recv_leave",
}
