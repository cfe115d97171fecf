"""The node core's liveness check against real ``meshnode run`` processes.

A provider that stops answering mid-task (SIGSTOP: its sockets stay open, nothing reads
them) must not hold the requester's delegation until its deadline: SWIM declares it dead,
the core asks for a ping on its task channel, no pong comes, and the core fails the
attempt and closes the channel.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.adversarial.attack import wait_until
from tests.adversarial.test_task_attacks import (
    PROVIDER,
    READY_S,
    delegate,
    knows_manifest,
    processes,
    sees_alive,
    start,
    task_counter,
)

pytestmark = pytest.mark.slow

DEADLINE_S = 45.0
"""The delegation's deadline: far beyond the time the check needs."""


async def test_a_provider_silent_on_its_channel_fails_the_attempt_long_before_the_deadline(
    tmp_path: Path,
) -> None:
    """A delegates a 60-second task to B; B is stopped (SIGSTOP) once it has started. A's
    membership declares B dead, A's core emits ``CheckPeer``, the ping on the task channel
    goes unanswered for ``task_liveness_timeout``, and the core fails the attempt
    (``member dead; silent on its task channel``) and closes the channel: the caller gets
    its answer in seconds, not after 45."""
    with processes() as running:
        b = start(running, tmp_path, "b", [], PROVIDER)
        a = start(running, tmp_path, "a", [b.address])
        await asyncio.to_thread(
            wait_until,
            lambda: knows_manifest(a, b) and sees_alive(a, b),
            READY_S,
            "A knows B's manifest and sees B alive",
        )
        marker = tmp_path / "started"
        payload = {"text": "never", "sleep_s": 60.0, "marker": str(marker)}
        job = asyncio.create_task(asyncio.to_thread(delegate, a, "slow_echo", payload, DEADLINE_S))
        await asyncio.to_thread(wait_until, marker.exists, 15, "B started the task")
        b.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            status, body = await job
            waited = time.monotonic() - stopped_at
            confirmed = task_counter(a, "dead_confirmed_on_channel")
            refuted = task_counter(a, "dead_refuted_on_channel")
        finally:
            b.signal(signal.SIGCONT)

    assert status == 502, body
    assert "silent on its task channel" in str(body), body
    assert waited < DEADLINE_S / 2, waited
    assert confirmed == 1
    assert refuted == 0
