"""The node's seal on real UDP sockets and in-process nodes (127.0.0.1).

Invariants: a sealed endpoint delivers what a peer with the same keyring sends and drops
(and counts) plaintext, a wrong key or a wrong label, before decoding; with
``encrypt_incoming`` off it accepts both sealed and plaintext datagrams; two in-process
nodes sharing a keyring join, and a node with another keyring does not; a keyring a key
operation installs is written to the keyring file.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshnode import MeshNode, NodeConfig, wait_for
from meshnode.core.keys import Action
from meshnode.runtime.store import load_keyring, save_keyring
from meshnode.runtime.transport import UdpEndpoint, WireSeal
from protocol import Envelope, Identity, Ping
from protocol.keyring import Keyring, generate_key

K1, K2 = generate_key(), generate_key()


async def _endpoint(
    seal: WireSeal | None, got: list[Envelope]
) -> tuple[UdpEndpoint, tuple[str, int]]:
    ep = await UdpEndpoint.open(
        "127.0.0.1", 0, Identity.generate(), lambda env, _: got.append(env), seal=seal
    )
    return ep, ep.local_address


@pytest.mark.parametrize(
    ("sender", "receiver", "delivered", "counter"),
    [
        (WireSeal(Keyring((K1,), "a")), WireSeal(Keyring((K1,), "a")), True, "opened"),
        (WireSeal(Keyring((K1,), "a")), WireSeal(Keyring((K2, K1), "a")), True, "opened"),
        (None, WireSeal(Keyring((K1,), "a")), False, "plaintext_refused"),
        (WireSeal(Keyring((K2,), "a")), WireSeal(Keyring((K1,), "a")), False, "open_failed"),
        (WireSeal(Keyring((K1,), "b")), WireSeal(Keyring((K1,), "a")), False, "open_failed"),
        (WireSeal(Keyring((K1,), "a")), None, False, "sealed_without_keyring"),
        (
            None,
            WireSeal(Keyring((K1,), "a"), encrypt_incoming=False),
            True,
            "plaintext_accepted",
        ),
        (
            WireSeal(Keyring((K1,), "a")),
            WireSeal(Keyring((K1,), "a"), encrypt_incoming=False),
            True,
            "opened",
        ),
        (
            WireSeal(Keyring((K1,), "a"), encrypt_outgoing=False),
            WireSeal(Keyring((K1,), "a")),
            False,
            "plaintext_refused",
        ),
    ],
)
async def test_udp_seal_rules(
    sender: WireSeal | None, receiver: WireSeal | None, delivered: bool, counter: str
) -> None:
    got: list[Envelope] = []
    rx_seal = receiver or WireSeal()
    rx, rx_addr = await _endpoint(rx_seal, got)
    tx, _ = await _endpoint(sender, [])
    try:
        for n in range(5):
            tx.send(rx_addr, [Ping(n, Identity.generate().node_id)])
        await wait_for(lambda: rx_seal.counters[counter] >= 5, 5.0)
        assert len(got) == (5 if delivered else 0)
        if not delivered:
            assert rx.dropped["SealRejected"] == 5
            assert rx.received == 0
    finally:
        tx.close()
        rx.close()


def _local(tmp_path: Path, name: str, ring: Keyring | None, **kw: object) -> NodeConfig:
    keyring_file = None
    if ring is not None:
        keyring_file = str(tmp_path / f"{name}.keyring.json")
        save_keyring(keyring_file, ring)
    return NodeConfig.local(name=name, port=0, embedder="hashing", keyring_file=keyring_file, **kw)


async def test_in_process_nodes_share_a_keyring_and_rotate(tmp_path: Path) -> None:
    """Two nodes with the keyring join; a third with another key stays out. A key
    installed and used through one node reaches the other, and both keyring files then
    hold it as the primary."""
    ring = Keyring((K1,), "lab")
    async with MeshNode(_local(tmp_path, "a", ring)) as a:
        seed = f"127.0.0.1:{a.address[1]}"
        b_cfg = _local(tmp_path, "b", ring, seeds=(seed,))
        c_cfg = _local(tmp_path, "c", Keyring((K2,), "lab"), seeds=(seed,))
        async with MeshNode(b_cfg) as b, MeshNode(c_cfg) as c:

            def both() -> bool:
                return len(a.core.membership.members()) == len(b.core.membership.members()) == 2

            await wait_for(both, 10.0)
            await asyncio.sleep(1.0)
            assert c.node_id not in {m.node_id for m in a.core.membership.members()}
            assert [m.node_id for m in c.core.membership.members()] == [c.node_id]

            assert a.driver is not None
            summary = await a.driver.key_operation(Action.INSTALL, K2)
            assert (summary.acked, summary.unreachable, summary.failed) == (2, [], {})
            summary = await a.driver.key_operation(Action.USE, K2)
            assert summary.acked == 2
            for name, node in (("a", a), ("b", b)):
                assert node.seal.keyring is not None
                assert node.seal.keyring.keys == (K2, K1)
                assert load_keyring(tmp_path / f"{name}.keyring.json").keys == (K2, K1)


async def test_key_operations_need_a_sealed_exchange_from_a_member(tmp_path: Path) -> None:
    """``POST /v1/wire/keys``: a member's plaintext operation is refused (403) even with
    ``encrypt_incoming`` off; a stranger that holds the key but is not a member gets a
    refusal; neither changes the keyring."""
    import os
    import time

    import aiohttp

    from protocol import decode, encode
    from protocol.messages import KeyOp, KeyOpReply

    ring = Keyring((K1,), "lab")
    cfg = _local(tmp_path, "a", ring, encrypt_incoming=False)
    async with MeshNode(cfg) as a, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{a.address[1]}/v1/wire/keys"
        op = KeyOp(os.urandom(16), int(Action.INSTALL), K2, time.time())
        stranger = Identity.generate()
        async with session.post(url, data=encode([op], a.identity)) as resp:
            assert resp.status == 403  # plaintext, though signed by the node itself
        async with session.post(url, data=ring.seal(encode([op], stranger))) as resp:
            assert resp.status == 200
            reply = decode(ring.open(await resp.read())).messages[0]
        assert isinstance(reply, KeyOpReply)
        assert not reply.ok and "not a member" in reply.error
        assert a.seal.keyring is not None and a.seal.keyring.keys == (K1,)
        assert load_keyring(tmp_path / "a.keyring.json").keys == (K1,)
