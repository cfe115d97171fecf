"""The TCP fallback probe in the membership core (sans-I/O): when a direct UDP probe gets
no ack within the probe timeout, one ``StartTcpPing`` goes out beside the ping-reqs; its
ack counts as alive, and it is bounded (one per probe, a concurrency cap)."""

from __future__ import annotations

import dataclasses

import pytest

from meshnode.core import Effect, Membership, MemberState, NodeConfig, SendPacket, StartTcpPing
from meshnode.core.config import ConfigError
from protocol import Ack, Ping, PingReq, Signer
from tests.unit.test_membership import alive_of, introduce, lonely, peer

LAN = NodeConfig.lan()


@dataclasses.dataclass
class Probe:
    """One probe of the only peer, driven by hand up to the end of its direct stage."""

    m: Membership
    target: Signer
    seq: int
    started: float
    tcp: list[StartTcpPing]
    now: float
    end: float
    next_effects: list[Effect] = dataclasses.field(default_factory=list)


def _pings_to(effects: list[Effect], node: str) -> list[Ping]:
    return [
        msg
        for e in effects
        if isinstance(e, SendPacket)
        for msg in e.messages
        if isinstance(msg, Ping) and msg.target == node
    ]


def probe_until_fallback(
    config: NodeConfig = LAN, *, m: Membership | None = None, started: Probe | None = None
) -> Probe:
    """A node with one peer: tick to its next probe (a UDP ``Ping``), give no ack, tick
    past the probe timeout, and return what came out. ``started``: a probe whose
    :func:`finish_period` already started the next one."""
    target = peer(1)
    if started is not None:
        m = started.m
        pings = _pings_to(started.next_effects, target.node_id)
        now = started.end
    else:
        if m is None:
            m, _ = lonely(config)
            introduce(m, [alive_of(target)], 0.0)
            m.take_effects()
        pings = []
        now = 0.0
        for _ in range(20):  # gossip timers come first; step until the ping leaves
            now = m.next_deadline()
            m.tick(now)
            pings = _pings_to(m.take_effects(), target.node_id)
            if pings:
                break
    assert pings, "no probe was sent"
    end = now + config.probe_interval * (m.health + 1)  # Lifeguard stretches both
    timeout_at = now + config.probe_timeout * (m.health + 1)
    m.tick(timeout_at)
    tcp = [e for e in m.take_effects() if isinstance(e, StartTcpPing)]
    return Probe(m, target, pings[0].seq, now, tcp, timeout_at, end)


def finish_period(p: Probe) -> None:
    """Tick to the end of the probe period (where the probe is judged and the next one
    starts; what that tick emits is kept in ``p.next_effects``)."""
    p.m.tick(p.end)
    p.next_effects = p.m.take_effects()


# --------------------------------------------------------------------------- emission


def test_a_failed_direct_probe_starts_one_tcp_ping_beside_the_relays() -> None:
    """No UDP ack within the probe timeout: exactly one StartTcpPing, to the target's
    address, for the probe's seq, with the probe timeout, and no more later in the same
    probe (the ping-reqs still go to relays when there are any)."""
    p = probe_until_fallback()
    member = p.m.member(p.target.node_id)
    assert member is not None
    assert p.tcp == [StartTcpPing(member.address, p.target.node_id, p.seq, LAN.probe_timeout)]
    assert p.m.tcp_pings_in_flight == 1
    p.m.tick(p.now + 0.1)
    assert not [e for e in p.m.take_effects() if isinstance(e, StartTcpPing)]


def test_relays_and_tcp_ping_go_out_together() -> None:
    """With a second member as relay, the failed probe sends a PingReq to it and the
    StartTcpPing to the target in the same tick."""
    m, _ = lonely()
    introduce(m, [alive_of(peer(1)), alive_of(peer(2))], 0.0)
    m.take_effects()
    now = m.next_deadline()
    target = None
    for _ in range(20):
        m.tick(now)
        for e in m.take_effects():
            if isinstance(e, SendPacket):
                for msg in e.messages:
                    if isinstance(msg, Ping):
                        target, seq = msg.target, msg.seq
        if target is not None:
            break
        now = m.next_deadline()
    assert target is not None
    m.tick(now + LAN.probe_timeout)
    effects = m.take_effects()
    reqs = [
        msg
        for e in effects
        if isinstance(e, SendPacket)
        for msg in e.messages
        if isinstance(msg, PingReq)
    ]
    tcp = [e for e in effects if isinstance(e, StartTcpPing)]
    assert [r.target for r in reqs] == [target]
    assert [(t.node, t.seq) for t in tcp] == [(target, seq)]


# --------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(
    ("name", "udp_ack_first", "tcp_answer", "after_period", "result", "suspected"),
    [
        # the TCP ack is the only one: alive, no suspicion
        ("tcp_only", False, "ack", False, "ok", False),
        # the TCP ping failed (refused, timed out, not an ack): the probe fails as before
        ("tcp_failed", False, None, False, "failed", True),
        # an Ack for another seq is no answer to this probe
        ("wrong_seq", False, "other_seq", False, "failed", True),
        # a UDP ack came first: the TCP ack changes nothing
        ("udp_first", True, "ack", False, "redundant", False),
        # the probe period was over (suspicion raised): a late ack does not undo it
        ("late", False, "ack", True, "late", True),
    ],
)
def test_fallback_decision_table(
    name: str,
    udp_ack_first: bool,
    tcp_answer: str | None,
    after_period: bool,
    result: str,
    suspected: bool,
) -> None:
    p = probe_until_fallback()
    m, target = p.m, p.target.node_id
    if udp_ack_first:
        m.receive(target, [Ack(p.seq, 0, 2)], ("10.0.0.1", 7946), p.now + 0.01)
    if after_period:
        finish_period(p)
    if tcp_answer == "ack":
        ack: Ack | None = Ack(p.seq, 9, 2)
    elif tcp_answer == "other_seq":
        ack = Ack(p.seq + 1, 9, 2)
    else:
        ack = None
    assert m.tcp_ping_done(target, p.seq, ack, p.now + 0.05) == result, name
    assert m.tcp_pings_in_flight == 0
    if not after_period:
        finish_period(p)
    member = m.member(target)
    assert member is not None
    assert (member.state is MemberState.SUSPECT) is suspected, name
    assert m.counters[f"tcp_fallback_{result}"] == 1
    assert m.counters["probes_failed"] == (1 if suspected else 0)
    if result == "ok":
        assert member.load == 9  # the load in the TCP ack is news like a UDP ack's


def test_unknown_or_mismatched_report_changes_nothing() -> None:
    """A report for a seq never started, or naming another node than the ping's, is
    counted as unexpected and leaves the ping in flight and the probe unacked."""
    p = probe_until_fallback()
    m = p.m
    before = dict(m.counters)
    assert m.tcp_ping_done(p.target.node_id, p.seq + 7, Ack(p.seq + 7, 0, 2), p.now) == (
        "unexpected"
    )
    assert m.tcp_ping_done(peer(2).node_id, p.seq, Ack(p.seq, 0, 2), p.now) == "unexpected"
    assert m.tcp_pings_in_flight == 1
    assert m.counters["acks_unexpected"] == before["acks_unexpected"] + 2
    finish_period(p)
    member = m.member(p.target.node_id)
    assert member is not None and member.state is MemberState.SUSPECT


# --------------------------------------------------------------------------- bounds


def test_concurrency_cap_skips_further_tcp_pings() -> None:
    """With the cap at 1 and the first ping never reported (a hung connection), the
    next failed probes start no TCP ping and count ``tcp_fallback_skipped``; once the
    first is reported, the next failed probe starts one again."""
    config = NodeConfig.lan(tcp_fallback_max_concurrent=1)
    first = probe_until_fallback(config)
    assert len(first.tcp) == 1
    m = first.m
    finish_period(first)
    second = probe_until_fallback(config, started=first)
    assert second.tcp == []
    assert m.counters["tcp_fallback_skipped"] == 1
    assert m.tcp_pings_in_flight == 1
    assert m.tcp_ping_done(first.target.node_id, first.seq, None, second.now) == "failed"
    finish_period(second)
    third = probe_until_fallback(config, started=second)
    assert len(third.tcp) == 1


def test_zero_turns_the_fallback_off_and_bad_caps_are_refused() -> None:
    p = probe_until_fallback(NodeConfig.lan(tcp_fallback_max_concurrent=0))
    assert p.tcp == []
    assert p.m.tcp_pings_in_flight == 0
    for bad in (-1, 65, True, 1.5):
        with pytest.raises(ConfigError, match="tcp_fallback_max_concurrent"):
            NodeConfig.lan(tcp_fallback_max_concurrent=bad)


# --------------------------------------------------------------------------- answering


def test_answer_tcp_ping_only_for_ourselves() -> None:
    m, _ = lonely()
    assert m.answer_tcp_ping(Ping(5, m.node_id)) == Ack(5, 0, 1)
    assert m.answer_tcp_ping(Ping(6, peer(3).node_id)) is None
    assert m.counters["tcp_pings_answered"] == 1
    assert m.counters["tcp_pings_refused"] == 1
    m.leave(1.0)
    assert m.answer_tcp_ping(Ping(7, m.node_id)) is None


def test_tcp_ping_timeout_ends_with_the_probe_period() -> None:
    """On the WAN profile (3 s timeout, 5 s period) the TCP ping gets the 2 s left of the
    period, not 3 s: an ack after the probe ended could not save it."""
    wan = NodeConfig.wan()
    p = probe_until_fallback(wan)
    (tcp,) = p.tcp
    assert tcp.timeout == pytest.approx(wan.probe_interval - wan.probe_timeout)
    lan = probe_until_fallback(LAN)
    assert lan.tcp[0].timeout == pytest.approx(LAN.probe_timeout)
