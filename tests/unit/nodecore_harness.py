"""An in-memory shell for :class:`~meshnode.core.node.NodeCore` tests: real signers, a
virtual clock, task messages carried between cores in order, handlers answered by
plain functions. No asyncio, no sockets.

Membership is not started (nobody joins): the cores know each other's manifests because
the harness hands them over, which is all the task side needs."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshnode.core.authorization import Allow, CapabilityPolicy
from meshnode.core.config import NodeConfig
from meshnode.core.effects import (
    CheckPeer,
    DelegationFinished,
    NodeEffect,
    PersistRecords,
    RunHandler,
    SendTask,
    StopHandler,
)
from meshnode.core.node import NodeCore
from meshnode.errors import InvalidInput
from protocol import Capability, Identity, Manifest

PUBLIC = CapabilityPolicy(Allow.anyone())

Handler = Callable[[Any], Any]
"""``handler(input) -> output``; raising makes the task fail with the error's text (raising
``InvalidInput`` reports the input refused); the special value :data:`SILENT` never
answers."""

SILENT = object()
"""A handler result that means: never call ``handler_done``."""


def identity(i: int) -> Identity:
    return Identity.from_seed(bytes([i + 1]) * 32)


@dataclass
class Host:
    core: NodeCore
    handlers: dict[str, Handler] = field(default_factory=dict)
    effects: list[NodeEffect] = field(default_factory=list)
    finished: dict[str, DelegationFinished] = field(default_factory=dict)
    running: dict[tuple[str, str], RunHandler] = field(default_factory=dict)
    stopped: list[StopHandler] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    durable: list[PersistRecords] = field(default_factory=list)
    fail_durable: bool = False
    """Make every durable write fail (as a full disk would)."""

    @property
    def node_id(self) -> str:
        return self.core.node_id


class World:
    """Cores on one virtual clock; :meth:`settle` carries effects until nothing moves."""

    def __init__(self, config: NodeConfig | None = None) -> None:
        self.config = config or NodeConfig.local()
        self.now = 1_000.0
        self.hosts: list[Host] = []
        self.by_id: dict[str, Host] = {}
        self.dropped: set[str] = set()
        """Node ids whose incoming task messages are lost (a silent or cut-off peer)."""
        self.handler_delay: dict[str, float] = {}
        self._pending: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def add(self, i: int, capabilities: tuple[Capability, ...] = ()) -> Host:
        signer = identity(i)
        core = NodeCore(
            self.config,
            signer,
            host="127.0.0.1",
            port=7000 + i,
            rng=random.Random(i),
            now=self.now,
            capabilities={c.name: c for c in capabilities},
            # The cores of this harness never join one another (membership is not what
            # it exercises), so their capabilities serve anyone; authorization has its
            # own tests (test_authorization.py).
            policies={c.name: PUBLIC for c in capabilities},
        )
        manifest = Manifest.create(
            signer,
            name=f"n{i}",
            endpoint=f"127.0.0.1:{7000 + i}",
            capabilities=list(capabilities),
            version=1,
        )
        core.publish_manifest(manifest, self.now)
        host = Host(core)
        for other in self.hosts:
            other.core.manifests.apply(manifest, self.now)
            mine = other.core.manifests.get(other.node_id)
            if mine is not None:
                core.manifests.apply(mine, self.now)
        self.hosts.append(host)
        self.by_id[host.node_id] = host
        self.drain(host)
        return host

    # ------------------------------------------------------------------ carrying effects

    def drain(self, host: Host) -> None:
        """Carry out ``host``'s effects until the core has none left."""
        while effects := host.core.take_effects():
            self._carry_out(host, effects)

    def _carry_out(self, host: Host, effects: list[NodeEffect]) -> None:
        for effect in effects:
            host.effects.append(effect)
            if isinstance(effect, SendTask):
                self._deliver(host, effect)
            elif isinstance(effect, RunHandler):
                host.running[(effect.requester, effect.task_id)] = effect
                self._run(host, effect)
            elif isinstance(effect, StopHandler):
                host.running.pop((effect.requester, effect.task_id), None)
                host.stopped.append(effect)
            elif isinstance(effect, DelegationFinished):
                host.finished[effect.task_id] = effect
            elif isinstance(effect, CheckPeer):
                host.checks.append(effect.node)
            elif isinstance(effect, PersistRecords) and effect.durable:
                host.durable.append(effect)
                if host.fail_durable:
                    host.core.durable_failed(effect.records)

    def _deliver(self, host: Host, send: SendTask) -> None:
        if send.node in self.dropped:
            return
        target = self.by_id.get(send.node)
        if target is None:
            host.core.send_failed(send.node, send.task_id, "unknown peer", self.now)
            return

        def arrive() -> None:
            target.core.task_message(host.node_id, send.message, self.now)
            self.drain(target)

        self._later(0.0, arrive)

    def _run(self, host: Host, run: RunHandler) -> None:
        handler = host.handlers.get(run.capability)

        def finish() -> None:
            if (run.requester, run.task_id) not in host.running:
                return  # stopped meanwhile
            del host.running[(run.requester, run.task_id)]
            if handler is None:
                host.core.handler_done(run.requester, run.task_id, self.now, error="no handler")
            else:
                try:
                    output = handler(run.input)
                except InvalidInput as exc:
                    host.core.handler_done(
                        run.requester, run.task_id, self.now, error=str(exc), invalid_input=True
                    )
                except Exception as exc:
                    host.core.handler_done(
                        run.requester, run.task_id, self.now, error=f"{type(exc).__name__}: {exc}"
                    )
                else:
                    if output is SILENT:
                        host.running[(run.requester, run.task_id)] = run
                        return
                    host.core.handler_done(run.requester, run.task_id, self.now, output=output)
            self.drain(host)

        self._later(self.handler_delay.get(host.node_id, 0.0), finish)

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        self._seq += 1
        self._pending.append((self.now + delay, self._seq, action))

    # ------------------------------------------------------------------ running

    def settle(self, until: float | None = None) -> None:
        """Run actions and timers in time order until nothing is left before ``until``
        (default: 60 virtual seconds from now)."""
        stop = self.now + 60.0 if until is None else until
        while True:
            self._pending.sort()
            next_action = self._pending[0][0] if self._pending else float("inf")
            next_tick = min((self._task_deadline(h) for h in self.hosts), default=float("inf"))
            at = min(next_action, next_tick)
            if at > stop:
                self.now = max(self.now, stop)
                return
            self.now = max(self.now, at)
            if next_action <= next_tick:
                _, _, action = self._pending.pop(0)
                action()
            else:
                for host in self.hosts:
                    if self._task_deadline(host) <= self.now:
                        host.core.tick(self.now)
                        self.drain(host)

    @staticmethod
    def _task_deadline(host: Host) -> float:
        """The core's next task deadline (membership's own timers are not run: nobody
        joined)."""
        deadline = host.core.task_deadline()
        return float("inf") if deadline is None else deadline
