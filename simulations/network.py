"""The simulated network: per-link latency, loss, duplication, reordering and partitions.

Theory of operation
-------------------
Hosts are numbered slots. The network decides, for each datagram, whether and when it
arrives, and for each TCP leg, how long it takes or whether the connection fails. It never
looks inside a message; the simulation asks it for a *fate* and schedules the delivery.

**Latency.** A datagram's one-way delay is the link's minimum plus an exponential tail,
``min + a[src] + a[dst] + Exp(mean − min)``. ``a`` is a per-host access delay drawn once
from ``U(0, spread)`` (0 by default), so links differ without a table of N² entries. The
tail alone reorders packets now and then; ``reorder`` adds, with that probability, an extra
``U(0, reorder_delay)`` to a datagram so it overtakes nothing and is overtaken by the
packets sent after it.

**Regions.** With ``regions > 1`` host ``slot`` sits in region ``slot % regions`` and a
datagram between two regions takes an extra ``region_latency`` each way: each host has a
position (its region and its access delay), which network coordinates should learn.
:meth:`Network.expected_rtt` is the mean round trip of a link, the truth they are measured
against.

**Loss and duplication.** Each datagram is lost with probability ``loss`` (plus the
sender's and receiver's own extra loss, for a flaky host); a datagram that survives is
delivered twice with probability ``duplicate``, each copy with its own delay.

**TCP.** A connection costs one round trip to set up (SYN, SYN-ACK), then each leg of the
exchange one one-way delay. A lost segment is retransmitted after a retransmission timeout
(``syn_rto`` for the handshake, ``rto`` doubling for data, as Linux does), so loss slows a
TCP exchange down instead of breaking it; the exchange fails once it would take longer
than the caller's timeout.

**Partitions.** Every host belongs to a group (0 by default). A symmetric partition puts
hosts in different groups and blocks traffic between groups both ways; an asymmetric one
blocks a single direction (``src group → dst group``). Single links can be cut one way.
Healing clears all of it. Reachability is checked when a datagram is sent and again when a
TCP leg arrives, so a partition that starts mid-exchange breaks the exchange.

**Slow hosts.** A host can be given extra loss on everything it sends or receives, and
an *inbound lag*: everything arriving at it is delayed by an extra ``U(low, high)``, as if
its receive path were congested or its process starved of CPU while its timers still ran.

Every random choice comes from the one ``random.Random`` the network is given, in the
order the simulation asks, so the fate of every packet is a function of the seed.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable, Sequence

__all__ = ["LinkModel", "Network", "Traffic"]


@dataclasses.dataclass(frozen=True, slots=True)
class LinkModel:
    """Parameters of every link. Times in seconds, probabilities in [0, 1]."""

    min_latency: float = 0.0005
    """Smallest one-way delay, default 0.5 ms (a LAN)."""
    mean_latency: float = 0.001
    """Mean one-way delay (minimum plus the mean of the exponential tail), default 1 ms."""
    loss: float = 0.0
    """Probability that a datagram is lost, default 0."""
    duplicate: float = 0.0
    """Probability that a delivered datagram arrives twice, default 0."""
    reorder: float = 0.0
    """Probability that a datagram is held back by an extra ``U(0, reorder_delay)``."""
    reorder_delay: float = 0.05
    """Largest extra delay of a held-back datagram, default 50 ms."""
    spread: float = 0.0
    """Range of the per-host access delay added at both ends of a link, default 0."""
    rto: float = 0.2
    """First TCP retransmission timeout for data, doubling per loss (Linux's minimum)."""
    syn_rto: float = 1.0
    """TCP handshake retransmission timeout (Linux's initial RTO)."""
    regions: int = 1
    """Regions the hosts are dealt into (``slot % regions``), default 1 (a flat network)."""
    region_latency: float = 0.0
    """Extra one-way delay between two different regions, seconds, default 0."""

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not 0.0 <= self.min_latency <= self.mean_latency:
            raise ValueError(
                f"latency needs 0 <= min ({self.min_latency}) <= mean ({self.mean_latency})"
            )
        if type(self.regions) is not int or self.regions < 1:
            raise ValueError(f"regions must be a positive integer, got {self.regions!r}")
        for name in ("reorder_delay", "spread", "rto", "syn_rto", "region_latency"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite non-negative number of seconds")

    def describe(self) -> dict[str, float]:
        """The model as JSON-ready numbers (latencies in milliseconds)."""
        return {
            "latency_min_ms": self.min_latency * 1e3,
            "latency_mean_ms": self.mean_latency * 1e3,
            "loss": self.loss,
            "duplicate": self.duplicate,
            "reorder": self.reorder,
            "reorder_delay_ms": self.reorder_delay * 1e3,
            "access_spread_ms": self.spread * 1e3,
            "tcp_rto_ms": self.rto * 1e3,
            "tcp_syn_rto_ms": self.syn_rto * 1e3,
            "regions": self.regions,
            "region_latency_ms": self.region_latency * 1e3,
        }


class Network:
    """Fates of datagrams and TCP legs between host slots."""

    __slots__ = (
        "_access",
        "_blocked",
        "_cut",
        "_extra_loss",
        "_group",
        "_inbound_lag",
        "_rng",
        "_tail",
        "model",
    )

    def __init__(self, model: LinkModel, rng: random.Random) -> None:
        self.model = model
        self._rng = rng
        self._tail = model.mean_latency - model.min_latency
        self._access: list[float] = []
        self._group: list[int] = []
        self._blocked: set[tuple[int, int]] = set()  # (src group, dst group); lookups only
        self._cut: set[tuple[int, int]] = set()  # (src slot, dst slot); lookups only
        self._extra_loss: dict[int, float] = {}
        self._inbound_lag: dict[int, tuple[float, float]] = {}

    # ------------------------------------------------------------------ hosts

    def add_host(self) -> int:
        """Register a new host; returns its slot."""
        spread = self.model.spread
        self._access.append(self._rng.uniform(0.0, spread) if spread > 0 else 0.0)
        self._group.append(0)
        return len(self._group) - 1

    def set_extra_loss(self, slot: int, loss: float) -> None:
        """Extra loss probability on every datagram to or from ``slot`` (0 removes it)."""
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"loss must be in [0, 1], got {loss}")
        if loss:
            self._extra_loss[slot] = loss
        else:
            self._extra_loss.pop(slot, None)

    def set_inbound_lag(self, slot: int, low: float, high: float) -> None:
        """Delay everything that arrives at ``slot`` by an extra ``U(low, high)`` seconds
        (a host whose receive path is congested or starved); ``high == 0`` removes it."""
        if not 0.0 <= low <= high:
            raise ValueError(f"lag needs 0 <= low <= high, got {low}, {high}")
        if high > 0:
            self._inbound_lag[slot] = (low, high)
        else:
            self._inbound_lag.pop(slot, None)

    # ------------------------------------------------------------------ partitions

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Split the hosts: ``groups[k]`` go to group ``k + 1``, the rest stay in group 0,
        and no traffic crosses between any two groups."""
        self._group = [0] * len(self._group)
        for k, group in enumerate(groups, start=1):
            for slot in group:
                self._group[slot] = k
        count = len(groups) + 1
        self._blocked = {(a, b) for a in range(count) for b in range(count) if a != b}

    def partition_one_way(self, senders: Iterable[int], receivers: Iterable[int]) -> None:
        """Asymmetric partition: datagrams and TCP segments from ``senders`` to
        ``receivers`` are dropped; the other direction still works."""
        self._group = [0] * len(self._group)
        for slot in senders:
            self._group[slot] = 1
        for slot in receivers:
            self._group[slot] = 2
        self._blocked = {(1, 2)}

    def cut_link(self, src: int, dst: int) -> None:
        """Drop everything from ``src`` to ``dst`` (one direction)."""
        self._cut.add((src, dst))

    def heal(self) -> None:
        """Remove every partition and cut link."""
        self._group = [0] * len(self._group)
        self._blocked = set()
        self._cut = set()

    @property
    def partitioned(self) -> bool:
        """True while any partition or cut is in force."""
        return bool(self._blocked or self._cut)

    def reachable(self, src: int, dst: int) -> bool:
        """Can a packet from ``src`` reach ``dst`` right now (ignoring random loss)?"""
        if self._blocked and (self._group[src], self._group[dst]) in self._blocked:
            return False
        return not (self._cut and (src, dst) in self._cut)

    # ------------------------------------------------------------------ fates

    def region(self, slot: int) -> int:
        """The region of host ``slot``."""
        return slot % self.model.regions

    def _base_delay(self, src: int, dst: int) -> float:
        model = self.model
        d = model.min_latency + self._access[src] + self._access[dst]
        if model.regions > 1 and src % model.regions != dst % model.regions:
            d += model.region_latency
        return d

    def expected_rtt(self, src: int, dst: int) -> float:
        """Mean round trip between ``src`` and ``dst``, seconds (no loss, lag or reorder)."""
        return 2.0 * (self._base_delay(src, dst) + self._tail)

    def delay(self, src: int, dst: int) -> float:
        """One one-way delay sample on the link ``src → dst``."""
        rng = self._rng
        d = self._base_delay(src, dst)
        if self._tail > 0:
            d += rng.expovariate(1.0 / self._tail)
        if self._inbound_lag:
            lag = self._inbound_lag.get(dst)
            if lag is not None:
                d += rng.uniform(*lag)
        return d

    def datagram(self, src: int, dst: int) -> tuple[float, ...]:
        """Delays of the copies of one datagram that arrive (empty: lost)."""
        if (self._blocked or self._cut) and not self.reachable(src, dst):
            return ()
        model = self.model
        rng = self._rng
        if not (
            model.loss
            or model.reorder
            or model.duplicate
            or self._extra_loss
            or self._inbound_lag
            or model.regions > 1
        ):
            # The common case (a clean network) written out: the same draws as below.
            access = self._access
            d = model.min_latency + access[src] + access[dst]
            tail = self._tail
            if tail > 0:
                d += rng.expovariate(1.0 / tail)
            return (d,)
        loss = model.loss
        if self._extra_loss:
            loss = 1.0 - (1.0 - loss) * (1.0 - self._extra_loss.get(src, 0.0)) * (
                1.0 - self._extra_loss.get(dst, 0.0)
            )
        if loss and rng.random() < loss:
            return ()
        first = self.delay(src, dst)
        if model.reorder and rng.random() < model.reorder:
            first += rng.uniform(0.0, model.reorder_delay)
        if model.duplicate and rng.random() < model.duplicate:
            return (first, self.delay(src, dst))
        return (first,)

    def tcp_connect(self, src: int, dst: int) -> float:
        """Seconds to set up a connection (SYN and SYN-ACK, with handshake retransmissions)."""
        return self._tcp_segment(src, dst, self.model.syn_rto, False) + self._tcp_segment(
            dst, src, self.model.syn_rto, False
        )

    def tcp_leg(self, src: int, dst: int) -> float:
        """Seconds for one message of an open connection to get from ``src`` to ``dst``."""
        return self._tcp_segment(src, dst, self.model.rto, True)

    def _tcp_segment(self, src: int, dst: int, rto: float, backoff: bool) -> float:
        rng = self._rng
        loss = self.model.loss
        waited = 0.0
        # A segment is retransmitted until it gets through; the caller's timeout decides
        # when the exchange has failed. Bounded so that loss = 1 cannot loop forever.
        for attempt in range(16):
            if not loss or rng.random() >= loss:
                return waited + self.delay(src, dst)
            waited += rto * (2**attempt if backoff else 1)
        return math.inf


@dataclasses.dataclass(slots=True)
class Traffic:
    """Counters of everything sent, by channel.

    ``probe``: UDP packets carrying a probe message (ping, ack, ping-req, nack) and their
    piggybacked rumors; ``gossip``: UDP packets of rumors only; ``push_pull``: TCP frames
    of anti-entropy exchanges (all three legs); ``fetch``: manifest fetches over TCP
    (request line and response body); ``attack``: what Byzantine nodes send beside their
    cores (see :mod:`simulations.byzantine`), counted apart from the honest channels.
    Bytes are payload bytes: the signed envelope for UDP and push-pull, the request path
    and packed manifest for fetches; IP, UDP, TCP and HTTP headers are not counted.
    """

    probe_packets: int = 0
    probe_messages: int = 0
    probe_bytes: int = 0
    gossip_packets: int = 0
    gossip_messages: int = 0
    gossip_bytes: int = 0
    push_pull_frames: int = 0
    push_pull_exchanges: int = 0
    push_pull_failures: int = 0
    push_pull_bytes: int = 0
    fetch_requests: int = 0
    fetch_failures: int = 0
    fetch_bytes: int = 0
    datagrams_lost: int = 0
    datagrams_duplicated: int = 0
    datagrams_to_nobody: int = 0
    attack_packets: int = 0
    """Datagrams injected by Byzantine nodes outside their cores (floods, replays)."""
    attack_bytes: int = 0
    attack_push_pulls: int = 0
    """Push-pull exchanges opened by Byzantine nodes outside their cores."""
    attack_push_pull_bytes: int = 0

    def copy(self) -> Traffic:
        return dataclasses.replace(self)

    def minus(self, earlier: Traffic) -> Traffic:
        """The counts between ``earlier`` and now."""
        return Traffic(
            **{
                f.name: getattr(self, f.name) - getattr(earlier, f.name)
                for f in dataclasses.fields(self)
            }
        )

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
