"""``MeshNode.wait_for``: waiting for the mesh without polling.

Invariants: it returns as soon as ``discover`` with the same arguments finds ``count``
candidates, woken by the manifest (or member, or ledger) change that made it true; on
timeout it raises ``WaitTimeout`` (a ``MeshError`` and a ``TimeoutError``) saying what it
waited for and what the node knew; bad arguments are refused before anything waits.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from meshnode import (
    InvalidRequest,
    MeshError,
    MeshNode,
    NodeConfig,
    NodeNotRunning,
    WaitTimeout,
    format_address,
)


def _config(**kw: Any) -> NodeConfig:
    return NodeConfig.local(port=0, embedder="hashing", **kw)


async def _echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def _dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_wait_returns_when_the_capability_is_published_later() -> None:
    """The wait starts before any provider offers the capability; adding it on the provider
    (a new manifest version spread by gossip) ends the wait with that provider."""
    async with MeshNode(_config(name="provider")) as provider:
        seed = format_address(provider.address)
        async with MeshNode(_config(name="app", seeds=[seed])) as app:
            waiting = asyncio.create_task(
                app.wait_for("summarize a long document", capability_name="summarize", within=20)
            )
            await asyncio.sleep(0)  # the wait has looked once and found nothing
            assert not waiting.done()
            assert await app.discover(capability_name="summarize") == []
            provider.add_capability(
                _echo, name="summarize", description="Summarize a long document"
            )
            found = await asyncio.wait_for(waiting, 20)
            assert [c.node_id for c in found] == [provider.node_id]
            assert found[0].capability.name == "summarize"
            assert app.driver is not None and not app.driver.change_events  # cleaned up


async def test_a_trust_filter_is_met_when_a_ledger_record_raises_trust() -> None:
    """The provider is known at once but below ``min_trust``; the wait ends when this
    node's own signed opinion of it (a ledger record) lifts its trust above the filter.
    With the ledger-record wake-up disabled, the same wait timed out after 3 s."""
    async with MeshNode(_config(name="provider")) as provider:
        provider.add_capability(_echo, name="echo", description="Echo the input back")
        seed = format_address(provider.address)
        async with MeshNode(_config(name="app", seeds=[seed])) as app:
            (known,) = await app.wait_for(capability_name="echo", within=20)
            assert known.trust == 0.5
            waiting = asyncio.create_task(
                app.wait_for(capability_name="echo", min_trust=0.52, within=20)
            )
            await asyncio.sleep(0)
            assert await app.discover(capability_name="echo", min_trust=0.52) == []
            assert not waiting.done()
            app.record_outcome(provider.node_id, 1.0)
            (found,) = await asyncio.wait_for(waiting, 20)
            assert found.node_id == provider.node_id and found.trust > 0.52


async def test_count_waits_for_as_many_providers() -> None:
    async with MeshNode(_config(name="p1")) as p1:
        seed = format_address(p1.address)
        p1.add_capability(_echo, name="echo", description="Echo the input back")
        async with (
            MeshNode(_config(name="app", seeds=[seed])) as app,
            MeshNode(_config(name="p2", seeds=[seed])) as p2,
        ):
            p2.add_capability(_echo, name="echo", description="Echo the input back")
            found = await app.wait_for(capability_name="echo", count=2, within=20)
            assert {c.node_id for c in found} == {p1.node_id, p2.node_id}


async def test_timeout_says_what_was_awaited_and_what_is_known() -> None:
    async with MeshNode(_config(name="provider")) as provider:
        provider.add_capability(_echo, name="echo", description="Echo the input back")
        seed = format_address(provider.address)
        async with MeshNode(_config(name="app", seeds=[seed])) as app:
            await app.wait_for(capability_name="echo", within=20)
            with pytest.raises(WaitTimeout) as caught:
                await app.wait_for(capability_name="echo", count=2, min_trust=0.4, within=0.3)
    error = caught.value
    assert isinstance(error, MeshError) and isinstance(error, TimeoutError)
    assert [c.node_id for c in error.found] == [provider.node_id]
    text = str(error)
    assert "waited 0.3 s for 2 provider(s) of capability 'echo'" in text
    assert "min_trust 0.4" in text and "found 1" in text
    assert "1 other alive member(s) and 1 peer manifest(s) with 1 capabilities" in text
    assert "1 of them offering 'echo'" in text


async def test_timeout_of_an_isolated_node_names_its_dead_seed() -> None:
    port = _dead_port()
    async with MeshNode(_config(name="alone", seeds=[f"127.0.0.1:{port}"])) as app:
        with pytest.raises(WaitTimeout) as caught:
            await app.wait_for("anything at all", within=1.0)
        assert app.health()["isolated"] is True
    text = str(caught.value)
    assert "0 other alive member(s)" in text
    assert "isolated: none of the 1 seed(s) answered" in text and f"127.0.0.1:{port}" in text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"count": 0}, "count must be a positive integer"),
        ({"count": True}, "count must be a positive integer"),
        ({"within": 0}, "within must be a number of seconds"),
        ({"within": float("nan")}, "within must be a number of seconds"),
        ({"within": 1e9}, "within must be a number of seconds"),
        ({"top_k": 0}, "top_k"),
        ({"description": None}, "needs a description"),
    ],
)
async def test_bad_arguments_are_refused_before_waiting(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"description": "echo", "within": 5.0, **kwargs}
    async with MeshNode(_config(name="app")) as app:
        with pytest.raises((InvalidRequest, ValueError), match=match):
            await asyncio.wait_for(app.wait_for(**args), 2.0)
        assert app.driver is not None and not app.driver.change_events


async def test_wait_needs_a_running_node() -> None:
    with pytest.raises(NodeNotRunning):
        await MeshNode(_config(name="idle")).wait_for("echo", within=1)
