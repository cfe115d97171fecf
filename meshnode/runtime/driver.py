"""The driver: feeds the node's one :class:`~meshnode.core.node.NodeCore`, carries out its
effects, and keeps one timer at its ``next_deadline()``.

Theory of operation
-------------------
The driver decides nothing. It does three things:

1. **Feed the core.** Every verified UDP envelope goes to ``core.receive`` as soon as it is
   decoded; one driver task calls ``core.tick(now)`` whenever ``core.next_deadline()``
   passes, or earlier when an input moved the deadline (:meth:`Driver.poke`). The task
   service and the HTTP handlers feed their inputs the same way and then poke.
2. **Carry out effects** in order (:meth:`Driver.dispatch`): packets go out on the UDP
   socket; push-pull exchanges and manifest fetches run as background tasks (the core
   emits them only within its caps, :data:`~meshnode.core.mesh.MAX_CONCURRENT_PUSH_PULLS`
   and :data:`~meshnode.core.mesh.MAX_CONCURRENT_FETCHES`, so the driver keeps no
   semaphore: it reports each exchange's end with ``push_pull_done``, and each fetched
   answer with ``fetch_answered``, which names the next source or ends the fetch);
   records, members and manifests go
   to :class:`~meshnode.runtime.persistence.Persistence`; task effects go to the
   :class:`~meshnode.runtime.tasks.TaskService`; membership changes are logged and handed
   to listeners.
3. **Contain failures.** Every effect is carried out on its own: one that raises is
   counted in :attr:`Driver.effect_failures` by (effect kind, error class), logged at most
   every :data:`FAILURE_LOG_INTERVAL_S`, and the rest still run. The driver task is
   supervised: if it dies it is logged, counted and restarted after a backoff
   (:data:`DRIVER_RESTART_INITIAL` … :data:`DRIVER_RESTART_MAX`).

Replies read from peers are capped (:data:`MAX_PUSH_PULL_REPLY_BYTES`,
``protocol.limits.MAX_MANIFEST_BYTES``, :data:`MAX_RECORDS_REPLY_BYTES`): past the cap the
connection is aborted and the drop counted. Frames over :data:`DECODE_INLINE_MAX_BYTES` are
decoded in a one-thread pool so the loop keeps answering probes.

Every body sent to a peer is sealed and every reply opened by the node's
:class:`~meshnode.runtime.transport.WireSeal` (before anything is decoded, in the same
thread as the decode); each cap above allows for the seal's
``protocol.limits.SEAL_OVERHEAD_BYTES``. Cluster-wide key operations are fanned out from
here (:meth:`Driver.key_operation`, decisions in :mod:`meshnode.core.keys`).

What stays here, and why (every protocol decision is the core's): the restart backoff
and the failure-log interval supervise this asyncio task and its logs; the reply caps and
the inline-decode threshold bound raw bytes read from a socket before anything is decoded;
the push-pull reply's shape (one ``PushPull``) is checked as it is decoded, at the boundary.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
from nacl.utils import random as nacl_random

from meshnode.core.config import format_address
from meshnode.core.effects import (
    CheckPeer,
    CloseChannels,
    DelegationFinished,
    FetchManifest,
    IdentityConflict,
    ManifestChanged,
    MemberChanged,
    MemberEvent,
    PersistRecords,
    RunHandler,
    SendPacket,
    SendTask,
    StartPushPull,
    StartTcpPing,
    StopHandler,
)
from meshnode.core.health import SeedReachability, SeedTransition
from meshnode.core.keys import (
    KEY_OP_FANOUT,
    Action,
    KeyOpLog,
    KeyOpSummary,
    handle_key_op,
    is_member,
    key_op_targets,
    summarize,
)
from meshnode.core.membership import IDENTITY_CONFLICT_WINDOW
from meshnode.core.node import NodeCore
from meshnode.runtime.api import WIRE_CONTENT_TYPE
from meshnode.runtime.logging import get_logger
from meshnode.runtime.pressure import PRESSURE_SAMPLE_S, read_pressure
from meshnode.runtime.transport import BodyTooLarge, UdpEndpoint, WireSeal, read_capped
from protocol import (
    Ack,
    Envelope,
    Manifest,
    Message,
    Ping,
    PushPull,
    RemoteProtocolError,
    Signer,
    Verifier,
    decode,
    encode,
    short_id,
    unpack,
)
from protocol.certificate import CertificateError, open_sealed_to_me
from protocol.errors import KeyringError, SealRejected
from protocol.identity import Identity
from protocol.keyring import Keyring
from protocol.limits import (
    MAX_FRAME_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_MESSAGES_PER_ENVELOPE,
    SEAL_OVERHEAD_BYTES,
)
from protocol.messages import KeyOp, KeyOpReply, RejoinReply, RejoinRequest

if TYPE_CHECKING:
    from meshnode.runtime.persistence import Persistence
    from meshnode.runtime.tasks import TaskService

__all__ = [
    "DECODE_INLINE_MAX_BYTES",
    "DEGRADED_WINDOW_S",
    "DRIVER_RESTART_INITIAL",
    "DRIVER_RESTART_MAX",
    "FAILURE_LOG_INTERVAL_S",
    "IDENTITY_CONFLICT_REPORT_S",
    "MAX_KEY_OP_REPLY_BYTES",
    "MAX_PUSH_PULL_REPLY_BYTES",
    "MAX_RECORDS_REPLY_BYTES",
    "MAX_REJOIN_REPLY_BYTES",
    "MAX_TCP_PING_REPLY_BYTES",
    "READ_CHUNK_BYTES",
    "REJOIN_RETRY_S",
    "Driver",
]

DRIVER_RESTART_INITIAL = 0.05
"""Seconds before the driver task is restarted after it died; doubles with each restart
in a row, up to :data:`DRIVER_RESTART_MAX`, and resets once it has run for
:data:`DEGRADED_WINDOW_S`."""
DRIVER_RESTART_MAX = 5.0
"""Longest wait before restarting a driver that keeps dying, seconds."""
DEGRADED_WINDOW_S = 60.0
"""``/v1/health`` says ``degraded`` while the driver restarted or an effect failed within
this many seconds (persistence failures count for as long as they last)."""
FAILURE_LOG_INTERVAL_S = 60.0
"""A failing effect is logged at most once per (effect kind, error class) per this many
seconds; every failure is counted."""
IDENTITY_CONFLICT_REPORT_S = 2 * IDENTITY_CONFLICT_WINDOW
"""Seconds an identity conflict keeps ``/v1/health`` degraded after the core last reported
it (the core reports an ongoing one at most once per ``IDENTITY_CONFLICT_WINDOW``, so a
conflict that goes on keeps the node degraded without a gap)."""
MAX_PUSH_PULL_REPLY_BYTES = MAX_FRAME_BYTES + SEAL_OVERHEAD_BYTES
"""Longest push-pull reply read from a peer, bytes (16 MiB): the reply carries the peer's
whole state and the ledger records we lack. The read stops and the connection is aborted
as soon as more arrives."""
MAX_RECORDS_REPLY_BYTES = 64 * 1024
"""Longest answer read to a ``/v1/wire/records`` post (a small JSON object), bytes."""
MAX_KEY_OP_REPLY_BYTES = 4 * 1024
"""Longest answer read to a ``/v1/wire/keys`` post (one signed, sealed ``KeyOpReply``:
about 400 bytes), bytes."""
DECODE_INLINE_MAX_BYTES = 64 * 1024
"""Frames up to this size are decoded on the event loop (well under a millisecond);
larger ones in a one-thread pool, so that the loop keeps answering probes while a
multi-megabyte frame is checked."""
REJOIN_RETRY_S = 5.0
"""Seconds between two rejoin attempts of a node whose push-pulls fail as they do with a
stale keyring (the members answer each at most every 5 s per address too)."""
MAX_REJOIN_REPLY_BYTES = 4 * 1024
STALE_KEYRING_FIX = (
    "a member refused our sealed traffic: our keyring is likely stale (a key rotation "
    "happened while we were down) and without a mesh authority nobody can hand us the "
    "new keys; copy the current keyring file from a member and restart with "
    "--keyring FILE (or run with --authority/--cert to rejoin on your own)"
)
"""One line naming the fix, logged and shown in ``/v1/health`` when a node without an
authority finds its keyring stale."""
"""Longest answer read to a ``/v1/wire/rejoin`` post (a certificate and a sealed keyring
in one signed envelope: under 2 KiB), bytes."""
READ_CHUNK_BYTES = 64 * 1024
"""Bytes read at a time from a peer's HTTP body when its size is capped."""
MAX_TCP_PING_REPLY_BYTES = 1024 + SEAL_OVERHEAD_BYTES
"""Longest answer read to a ``/v1/wire/ping`` post, bytes: one signed ``Ack`` envelope is
about 150 bytes; anything longer is not an ack and the connection is aborted."""

log = get_logger("meshnode")

_EVENT_NAMES = {
    MemberEvent.JOINED: "member_joined",
    MemberEvent.ALIVE: "member_recovered",
    MemberEvent.SUSPECT: "member_suspected",
    MemberEvent.DEAD: "member_died",
    MemberEvent.LEFT: "member_left",
    MemberEvent.UPDATED: "member_updated",
    MemberEvent.FORGOTTEN: "member_forgotten",
}

_TASK_EFFECTS = (SendTask, RunHandler, StopHandler, CheckPeer, CloseChannels, DelegationFinished)


class Driver:
    """Feeds one NodeCore and carries out its effects (see the module docstring)."""

    def __init__(
        self,
        core: NodeCore,
        *,
        signer: Signer,
        verifier: Verifier,
        udp: Callable[[], UdpEndpoint | None],
        session: Callable[[], aiohttp.ClientSession | None],
        accepting: Callable[[], bool],
        log: Any,
        drops: Counter[str],
        persistence: Persistence | None,
        manifest_listeners: list[Callable[[str, Manifest | None], None]],
        member_listeners: list[Callable[[MemberChanged], None]],
        tick: Callable[[float], None] | None = None,
        seal: WireSeal | None = None,
    ) -> None:
        self.core = core
        self.seal = seal or WireSeal()
        """Seals what goes to peers and opens what comes back."""
        self._next_rejoin_at = 0.0  # monotonic time before which no rejoin is tried
        self._pressure_due = 0.0  # monotonic time of the next machine pressure reading
        self.keyring_stale: float | None = None
        """Monotonic time a member last refused our sealed push-pull while we run without
        a mesh authority (our keyring is likely stale; ``/v1/health`` says how to fix it)."""
        self.key_ops = KeyOpLog(core.config.key_op_window)
        """Key operation ids seen (replays refused); the rules are the core module's."""
        self.tick: Callable[[float], None] = tick or core.tick
        """What the drive loop calls when the deadline passes (``core.tick`` by default)."""
        self._signer = signer
        self._verifier = verifier
        self._udp = udp
        self._session = session
        self._accepting = accepting
        self._log = log
        self.drops = drops
        self.persistence = persistence
        self.tasks: TaskService | None = None
        """Set once the task service exists; task effects go to it."""
        self._manifest_listeners = manifest_listeners
        self._member_listeners = member_listeners
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        self._decoder: concurrent.futures.ThreadPoolExecutor | None = (
            concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="meshnode-decode"
            )
        )
        self.effect_failures: Counter[tuple[str, str]] = Counter()
        """Failures of carried-out effects, by (effect kind, error class)."""
        self.effect_failed_at: float | None = None
        self.effect_last_failed: dict[tuple[str, str], float] = {}
        self._failure_logged: dict[tuple[str, str], float] = {}
        self.restarts = 0
        self.died_at: float | None = None
        self.error = ""
        self.identity_conflict: tuple[float, tuple[str, int]] | None = None
        """When (monotonic) the core last reported our id at another address, and where."""
        self.seeds = SeedReachability()
        """Whether every seed failed while no other member is known (on the monotonic
        clock); checked after each exchange and each tick, reported by ``/v1/health``."""
        self.change_events: set[asyncio.Event] = set()
        """Set (not cleared) whenever a manifest or a member changed: what discovery
        finds. ``MeshNode.wait_for`` waits on one of these."""
        self.record_events: set[asyncio.Event] = set()
        """Set (not cleared) whenever ledger records were applied: what trust, and so a
        ``min_trust`` filter, follows. Kept apart so a flood of records wakes only the
        waits that filter by trust."""

    # ------------------------------------------------------------------ the loop

    async def supervise(self) -> None:
        """Run the drive loop; if it ever dies, log it, count a restart and start it again
        after a backoff. Cancellation (close) ends it."""
        delay = DRIVER_RESTART_INITIAL
        while True:
            started = time.monotonic()
            try:
                await self._drive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts += 1
                self.died_at = time.monotonic()
                self.error = f"{type(exc).__name__}: {exc}"
                if time.monotonic() - started >= DEGRADED_WINDOW_S:
                    delay = DRIVER_RESTART_INITIAL
                self._log.error(
                    "driver_restarted",
                    error=self.error,
                    restarts=self.restarts,
                    backoff_s=delay,
                    exc_info=exc,
                )
                await asyncio.sleep(delay)
                delay = min(DRIVER_RESTART_MAX, delay * 2)

    def sample_pressure(self) -> None:
        """Read this machine's pressure into the core every :data:`PRESSURE_SAMPLE_S`."""
        now = time.monotonic()
        if now < self._pressure_due:
            return
        self._pressure_due = now + PRESSURE_SAMPLE_S
        cpu, memory = read_pressure()
        self.core.set_pressure(cpu, memory)

    async def _drive(self) -> None:
        core = self.core
        while True:
            try:
                self.sample_pressure()
            except Exception as exc:  # one effect's failure never stops the loop
                self.effect_failed("sample_pressure", exc)
            self.tick(time.time())
            self.dispatch()
            self.check_seeds()
            delay = core.next_deadline() - time.time()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def check_seeds(self) -> None:
        """Re-evaluate whether the node is cut off from all its seeds; log the warning when
        it becomes so (and every ``SEEDS_UNREACHABLE_WARN_INTERVAL_S`` while it stays so),
        and once when a seed or a member is heard again."""
        membership = self.core.membership
        seeds = self.seeds
        transition = seeds.update(
            membership.join_seeds, membership.cluster_size() <= 1, time.monotonic()
        )
        if transition is SeedTransition.ISOLATED:
            self._log.warning(
                "seeds_unreachable",
                seeds=len(membership.join_seeds),
                errors=seeds.errors(),  # the first few, each bounded
                isolated_s=round(seeds.isolated_for(time.monotonic())),
                hint="no seed answered and no other member is known: check the --seed "
                "addresses and that a node listens there; retrying",
            )
        elif transition is SeedTransition.RECONNECTED:
            self._log.info("seeds_reachable", members=membership.cluster_size())

    def _changed(self, events: set[asyncio.Event] | None = None) -> None:
        for event in self.change_events if events is None else events:
            event.set()

    def poke(self) -> None:
        """An input reached the core: carry out its effects and re-arm the timer."""
        self.dispatch()
        self._wake.set()

    def on_envelope(self, envelope: Envelope, addr: tuple[str, int]) -> None:
        """A verified UDP envelope arrived."""
        try:
            self.core.receive(envelope.sender, envelope.messages, addr, time.time())
        except Exception as exc:
            self.effect_failed("receive", exc)
        self.poke()

    # ------------------------------------------------------------------ effects

    def dispatch(self) -> None:
        """Carry out the core's effects in order, until it has none left (carrying one out
        may feed the core). Each is contained: one that raises is counted
        (:attr:`effect_failures`) and the rest still run."""
        while effects := self.core.take_effects():
            for effect in effects:
                try:
                    self._carry_out(effect)
                except Exception as exc:
                    self.effect_failed(type(effect).__name__, exc)

    def _carry_out(self, effect: object) -> None:
        if isinstance(effect, SendPacket):
            udp = self._udp()
            if udp is not None:
                udp.send(effect.addr, effect.messages)
        elif isinstance(effect, _TASK_EFFECTS):
            if self.tasks is not None:
                self.tasks.carry_out(effect)
        elif isinstance(effect, StartPushPull):
            if self._accepting():
                self.spawn(self.push_pull(effect.addr, effect.join))
            else:  # closing: the exchange will not run, its slot goes back
                self.core.push_pull_done(time.time())
        elif isinstance(effect, StartTcpPing):
            if self._accepting():
                self.spawn(self.tcp_ping(effect))
            else:  # closing: the ping will not run, its slot goes back
                self.core.tcp_ping_done(effect.node, effect.seq, None, time.time())
        elif isinstance(effect, FetchManifest):
            if self._accepting():
                self.spawn(self.fetch_manifest(effect))
            else:
                self.core.fetch_abandoned(effect, time.time())
        elif isinstance(effect, ManifestChanged):
            if self.persistence is not None:
                self.persistence.manifest_changed(effect.node, effect.manifest)
            for listener in self._manifest_listeners:
                try:
                    listener(effect.node, effect.manifest)
                except Exception as exc:
                    self.effect_failed("manifest_listener", exc)
            self._changed()
        elif isinstance(effect, PersistRecords):
            self._changed(self.record_events)
            if self.persistence is not None:
                self.persistence.carry_out(effect)
        elif isinstance(effect, MemberChanged):
            self._changed()
            self._member_changed(effect)
        elif isinstance(effect, IdentityConflict):
            self.identity_conflict = (time.monotonic(), effect.other_address)
            self._log.error(
                "identity_conflict",
                other_address=format_address(effect.other_address),
                hint="another process announces this node's id: is a copy of its data dir "
                "or key running elsewhere?",
            )

    def _member_changed(self, change: MemberChanged) -> None:
        if self.persistence is not None:
            self.persistence.member_changed(change, self.core.node_id)
        member = change.member
        if change.node_id == self.core.node_id:
            if change.kind is MemberEvent.UPDATED:
                self._log.warning("refuted_suspicion", incarnation=member.incarnation)
        else:
            self._log.info(
                _EVENT_NAMES.get(change.kind, "member_changed"),
                peer=short_id(change.node_id),
                address=format_address(member.address),
                incarnation=member.incarnation,
                state=member.state.name.lower(),
            )
        for listener in self._member_listeners:
            try:
                listener(change)
            except Exception as exc:
                self.effect_failed("member_listener", exc)

    def effect_failed(self, kind: str, exc: BaseException) -> None:
        """Count (and at most every :data:`FAILURE_LOG_INTERVAL_S`, log) one failure."""
        key = (kind, type(exc).__name__)
        self.effect_failures[key] += 1
        now = time.monotonic()
        self.effect_failed_at = now
        self.effect_last_failed[key] = now
        last = self._failure_logged.get(key)
        if last is None or now - last >= FAILURE_LOG_INTERVAL_S:
            self._failure_logged[key] = now
            self._log.error(
                "effect_failed",
                effect=kind,
                error=f"{type(exc).__name__}: {exc}",
                count=self.effect_failures[key],
            )

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def background(self) -> int:
        """Background exchanges (push-pulls, fetches) running."""
        return len(self._background)

    async def close(self) -> None:
        """Cancel and await every background exchange; stop the decoder thread."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._background.clear()
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self._decoder = None

    # ------------------------------------------------------------------ TCP exchanges

    async def decode_frame(self, data: bytes) -> Envelope:
        """``protocol.decode`` of a TCP frame: on the loop when small, in the decoder
        thread above :data:`DECODE_INLINE_MAX_BYTES` so the loop keeps serving probes."""
        if len(data) <= DECODE_INLINE_MAX_BYTES or self._decoder is None:
            return self._open_and_decode(data)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoder, self._open_and_decode, data)

    def _open_and_decode(self, data: bytes) -> Envelope:
        """Open ``data`` with the keyring (by its rule) and decode the plaintext: raises
        only :class:`~protocol.errors.RemoteProtocolError` subclasses."""
        return decode(self.seal.open(data), verifier=self._verifier)

    def _client(self) -> aiohttp.ClientSession:
        session = self._session()
        if session is None:
            raise ConnectionError("the node's HTTP client is closed")
        return session

    async def _post_envelope(
        self, addr: tuple[str, int], path: str, body: bytes, cap: int, *, sealed: bool = False
    ) -> bytes:
        """POST ``body`` and return the reply, read with a hard cap of ``cap`` bytes: a
        longer reply aborts the connection and raises
        :class:`~meshnode.runtime.transport.BodyTooLarge`."""
        async with self._client().post(
            f"http://{format_address(addr)}{path}",
            data=body if sealed else self.seal.seal(body),
            headers={"Content-Type": WIRE_CONTENT_TYPE},
        ) as resp:
            resp.raise_for_status()
            try:
                return await read_capped(resp.content, cap, resp.content_length, READ_CHUNK_BYTES)
            except BodyTooLarge:
                resp.close()
                raise

    async def push_pull(self, addr: tuple[str, int], join: bool) -> None:
        """Run one anti-entropy exchange with ``addr`` (three legs); however it ends, tell
        the core (``push_pull_done``), which may then start the next one waiting."""
        core = self.core
        started = time.perf_counter()
        try:
            request = core.push_pull_request(join)
            data = await self._post_envelope(
                addr,
                "/v1/wire/pushpull",
                encode([request], self._signer),
                MAX_PUSH_PULL_REPLY_BYTES,
            )
            envelope = await self.decode_frame(data)
            if len(envelope.messages) != 1 or not isinstance(envelope.messages[0], PushPull):
                raise RemoteProtocolError("push-pull reply is not one PushPull")
            reply = envelope.messages[0]
            missing = core.finish_push_pull(envelope.sender, reply, addr, time.time())
            self.dispatch()
            for start in range(0, len(missing), MAX_MESSAGES_PER_ENVELOPE):
                chunk: list[Message] = list(missing[start : start + MAX_MESSAGES_PER_ENVELOPE])
                await self._post_envelope(
                    addr,
                    "/v1/wire/records",
                    encode(chunk, self._signer),
                    MAX_RECORDS_REPLY_BYTES,
                )
            core.metrics.push_pull.observe(time.perf_counter() - started)
            self.seeds.exchange_succeeded(addr)
        except (aiohttp.ClientError, TimeoutError, OSError, RemoteProtocolError) as exc:
            if addr in core.membership.join_seeds:
                self.seeds.exchange_failed(addr, f"{type(exc).__name__}: {exc}")
            self.drops[f"push_pull_{type(exc).__name__}"] += 1
            self._log.debug("push_pull_failed", peer=format_address(addr), error=str(exc))
            if self._keyring_may_be_stale(exc):
                self.spawn(self._rejoin(addr))
        finally:
            core.push_pull_done(time.time())
            self._wake.set()
        self.dispatch()
        self.check_seeds()

    async def tcp_ping(self, effect: StartTcpPing) -> None:
        """The TCP fallback probe: one signed ``Ping`` posted to ``/v1/wire/ping``, one
        ``Ack`` signed by the target expected back within ``effect.timeout``; however it
        ends, the core hears of it once (``tcp_ping_done``)."""
        ack: Ack | None = None
        try:
            async with asyncio.timeout(effect.timeout):
                data = await self._post_envelope(
                    effect.addr,
                    "/v1/wire/ping",
                    encode([Ping(effect.seq, effect.node)], self._signer),
                    MAX_TCP_PING_REPLY_BYTES,
                )
                envelope = await self.decode_frame(data)
            messages = envelope.messages
            if (
                envelope.sender == effect.node
                and len(messages) == 1
                and isinstance(messages[0], Ack)
                and messages[0].seq == effect.seq
            ):
                ack = messages[0]
            else:
                self.drops["tcp_ping_not_an_ack"] += 1
        except (aiohttp.ClientError, TimeoutError, OSError, RemoteProtocolError) as exc:
            self.drops[f"tcp_ping_{type(exc).__name__}"] += 1
        finally:
            self.core.tcp_ping_done(effect.node, effect.seq, ack, time.time())
            self._wake.set()
        self.dispatch()

    # ------------------------------------------------------------------ rejoin

    def _keyring_may_be_stale(self, exc: BaseException) -> bool:
        """Did a push-pull fail the way it does when our keyring is stale (the peer
        refused our body, or its reply did not open), with an authority to vouch for us
        and no rejoin tried within :data:`REJOIN_RETRY_S`?"""
        if self.seal.keyring is None:
            return False
        refused = isinstance(exc, aiohttp.ClientResponseError) and exc.status == 400
        if not (refused or isinstance(exc, SealRejected)):
            return False
        now = time.monotonic()
        if now < self._next_rejoin_at:
            return False
        self._next_rejoin_at = now + REJOIN_RETRY_S
        if self.core.admission is None:
            # Nobody can vouch for us to hand over the new keys: say what fixes it.
            self.keyring_stale = now
            self._log.error("keyring_stale", error=STALE_KEYRING_FIX)
            return False
        return True

    async def _rejoin(self, addr: tuple[str, int]) -> None:
        await self.rejoin(addr)

    async def rejoin(self, addr: tuple[str, int]) -> bool:
        """Ask the member at ``addr`` for the current keyring (``POST /v1/wire/rejoin``,
        unsealed, signed by us, with our certificate, a fresh timestamp and nonce). The
        answer counts only if it is signed by a node whose certificate (in the answer) our
        authority issued and has not revoked; the keyring in it must open with our key.
        It is then swapped in (and persisted by the keyring's listeners) and the join is
        tried again at once. Returns whether a keyring was installed."""
        core = self.core
        admission = core.admission
        if admission is None or not isinstance(self._signer, Identity):
            return False
        self.drops["rejoin_attempts"] += 1
        request = RejoinRequest(admission.own.signed, time.time(), nacl_random(16))
        try:
            async with self._client().post(
                f"http://{format_address(addr)}/v1/wire/rejoin",
                data=encode([request], self._signer),
                headers={"Content-Type": WIRE_CONTENT_TYPE},
            ) as resp:
                resp.raise_for_status()
                raw = await read_capped(
                    resp.content, MAX_REJOIN_REPLY_BYTES, resp.content_length, READ_CHUNK_BYTES
                )
            envelope = decode(raw, verifier=self._verifier)
            got = envelope.messages
            if len(got) != 1 or not isinstance(got[0], RejoinReply):
                raise RemoteProtocolError("rejoin reply is not one RejoinReply")
            reply = got[0]
            now = time.time()
            core.offer_certificate(reply.certificate, now)
            if not core.admits(envelope.sender, now):
                raise RemoteProtocolError("rejoin reply from a node our authority did not admit")
            ring = Keyring.decode(open_sealed_to_me(self._signer.to_seed(), reply.sealed_keyring))
        except (
            aiohttp.ClientError,
            TimeoutError,
            OSError,
            RemoteProtocolError,
            KeyringError,
            CertificateError,
        ) as exc:
            self.drops[f"rejoin_{type(exc).__name__}"] += 1
            self._log.warning("rejoin_failed", peer=format_address(addr), error=str(exc))
            return False
        self.seal.replace(ring)
        self.drops["rejoins"] += 1
        self._log.info(
            "rejoined",
            peer=format_address(addr),
            by=short_id(envelope.sender),
            keys=ring.fingerprints(),
        )
        core.join([addr, *core.membership.join_seeds], time.time())
        self.dispatch()
        return True

    async def fetch_manifest(self, effect: FetchManifest) -> None:
        """Fetch a manifest: ask the effect's sources one at a time, handing each answer
        to the core, which says which source to try next or that the fetch is over. If
        this task ends otherwise (cancelled, a bug), the core is told it was abandoned."""
        over = False
        try:
            source: tuple[str, int] | None = effect.sources[0] if effect.sources else None
            while source is not None:
                manifest = await self._get_manifest(source, effect.node)
                step = self.core.fetch_answered(effect, source, manifest, time.time())
                over = step.source is None
                source = step.source
                self.dispatch()
        finally:
            if not over:
                self.core.fetch_abandoned(effect, time.time())
                self._wake.set()

    async def _get_manifest(self, source: tuple[str, int], node: str) -> Manifest | None:
        """GET ``node``'s manifest from ``source``, read with a hard cap; None if it could
        not be had (the reason is counted in :attr:`drops`)."""
        try:
            async with self._client().get(
                f"http://{format_address(source)}/v1/wire/manifests/{node}"
            ) as resp:
                resp.raise_for_status()
                try:
                    raw = await read_capped(
                        resp.content,
                        MAX_MANIFEST_BYTES + SEAL_OVERHEAD_BYTES,
                        resp.content_length,
                        READ_CHUNK_BYTES,
                    )
                except BodyTooLarge:
                    resp.close()
                    raise
            return unpack(self.seal.open(raw), Manifest)
        except (aiohttp.ClientError, TimeoutError, OSError, RemoteProtocolError) as exc:
            self.drops[f"fetch_{type(exc).__name__}"] += 1
            return None

    # ------------------------------------------------------------------ key operations

    def answer_key_op(self, sender: str, op: KeyOp) -> KeyOpReply:
        """Apply a member's key operation to our keyring (the core module decides) and
        say how it went; a changed keyring is swapped in and persisted."""
        ring = self.seal.keyring
        if ring is None:
            return KeyOpReply(op.op_id, False, "this node has no keyring", ())
        member = self.core.membership.member(sender)
        new, reply = handle_key_op(
            ring, op, sender_is_member=is_member(member), log=self.key_ops, now=time.time()
        )
        if new is not None:
            self.seal.replace(new)
            self._log.info(
                "keyring_changed",
                action=Action(op.action).name.lower(),
                by=short_id(sender),
                keys=new.fingerprints(),
            )
        return reply

    async def key_operation(self, action: Action, key: bytes) -> KeyOpSummary:
        """Apply ``action`` here, then ask every other member to apply it (at most
        :data:`~meshnode.core.keys.KEY_OP_FANOUT` at once, each within
        ``NodeConfig.key_op_timeout``) and count the answers."""
        op = KeyOp(op_id=nacl_random(16), action=int(action), key=key, issued_at=time.time())
        own = self.answer_key_op(self.core.node_id, op)
        answers: dict[str, KeyOpReply | None] = {self.core.node_id: own}
        if action is not Action.LIST and not own.ok:
            return summarize(action, key, answers)  # refused here: nobody else is asked
        slots = asyncio.Semaphore(KEY_OP_FANOUT)
        targets = key_op_targets(self.core.membership.members(), self.core.node_id)

        async def ask(node: str, addr: tuple[str, int]) -> None:
            async with slots:
                answers[node] = await self._ask_key_op(node, addr, op)

        await asyncio.gather(*(ask(node, addr) for node, addr in targets))
        return summarize(action, key, answers)

    async def _ask_key_op(self, node: str, addr: tuple[str, int], op: KeyOp) -> KeyOpReply | None:
        """One member's answer to ``op``, or None when it could not be had. The request is
        sealed whatever ``encrypt_outgoing`` says: members accept key operations only
        sealed."""
        ring = self.seal.keyring
        if ring is None:
            return None
        try:
            async with asyncio.timeout(self.core.config.key_op_timeout):
                data = await self._post_envelope(
                    addr,
                    "/v1/wire/keys",
                    ring.seal(encode([op], self._signer)),
                    MAX_KEY_OP_REPLY_BYTES,
                    sealed=True,
                )
                envelope = self._open_and_decode(data)
        except (aiohttp.ClientError, TimeoutError, OSError, RemoteProtocolError) as exc:
            self.drops[f"key_op_{type(exc).__name__}"] += 1
            return None
        got = envelope.messages
        if (
            envelope.sender != node
            or len(got) != 1
            or not isinstance(got[0], KeyOpReply)
            or got[0].op_id != op.op_id
        ):
            self.drops["key_op_bad_reply"] += 1
            return None
        return got[0]
