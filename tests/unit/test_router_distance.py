"""Routing with distance and machine load: the latency factor, pressure folded into
availability, the ``max_rtt_ms`` filter, and the defaults' two promises (the near one
wins among equals; a far idle provider beats a near saturated one), with numbers."""

from __future__ import annotations

import math
import random
from pathlib import Path

import msgpack
import pytest

from meshnode.core import SendPacket
from meshnode.core.config import ConfigError, NodeConfig
from meshnode.core.router import (
    LATENCY_REFERENCE_MS,
    UNKNOWN_RTT_MS,
    LoadInfo,
    ScoredCandidate,
    latency_factor,
    machine_availability,
    rank,
)
from meshnode.runtime.pressure import cpu_pressure, memory_pressure, read_pressure
from protocol import (
    Ack,
    Identity,
    MessageType,
    Ping,
    Pressure,
    RemoteProtocolError,
    decode,
    fast_verify,
)
from tests.unit.test_membership import Network, alive_of, all_alive, lonely, peer
from tests.unit.test_router import Entry, entry

DEFAULTS = NodeConfig()


def rank_defaults(
    hits: list[tuple[Entry, float]],
    *,
    rtt: dict[str, float],
    load: dict[str, LoadInfo] | None = None,
    pressure: dict[str, float] | None = None,
    **kwargs: object,
) -> list[ScoredCandidate]:
    """``rank`` as ``NodeCore.route`` calls it with the NodeConfig defaults."""
    return rank(
        hits,
        trust={e.node_id: 0.6 for e, _ in hits},
        load=load or {},
        rtt_ms=rtt,
        pressure=pressure or {},
        latency_weight=DEFAULTS.routing_latency_weight,
        latency_reference_ms=DEFAULTS.routing_latency_reference_ms,
        pressure_weight=DEFAULTS.routing_pressure_weight,
        **kwargs,  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------- factors


@pytest.mark.parametrize(
    ("rtt_ms", "advertised_ms", "expected"),
    [
        (0.0, 0.0, 1.0),
        (1.0, 0.0, 1 / 1.01),  # a LAN neighbour
        (30.0, 0.0, 1 / 1.3),  # the same region
        (100.0, 0.0, 0.5),  # the reference: about a continent away
        (300.0, 0.0, 0.25),  # the other side of the world
        (50.0, 50.0, 0.5),  # round trip and advertised latency add up
        (None, 0.0, 1 / (1 + UNKNOWN_RTT_MS / LATENCY_REFERENCE_MS)),  # unknown: typical
        (-5.0, 0.0, 1.0),  # nonsense counts as 0
        (math.nan, math.nan, 1.0),
    ],
)
def test_latency_factor_table(rtt_ms: float | None, advertised_ms: float, expected: float) -> None:
    assert latency_factor(rtt_ms, advertised_ms) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("task", "pressure", "weight", "expected"),
    [
        (1.0, None, 0.8, 1.0),  # nothing advertised: the task part alone
        (1.0, 0.0, 0.8, 1.0),
        (1.0, 0.5, 0.8, 0.6),
        (1.0, 1.0, 0.8, 0.2),  # a saturated machine keeps a fifth
        (0.5, 1.0, 0.8, 0.1),
        (0.0, 0.0, 0.8, 0.0),  # every task slot taken
        (1.0, 1.0, 0.0, 1.0),  # weight 0 ignores pressure
        (1.0, 7.0, 0.8, 0.2),  # out of range: clamped
    ],
)
def test_machine_availability_table(
    task: float, pressure: float | None, weight: float, expected: float
) -> None:
    assert machine_availability(task, pressure, weight) == pytest.approx(expected)


# --------------------------------------------------------------------------- the promises


# Every candidate: similarity 0.8, trust 0.6, free (cost factor 1), no advertised latency,
# so with the defaults (weights 0.35/0.35/0.15/0.15, latency weight 0.10, reference
# 100 ms, pressure weight 0.8):
#   total = 0.9 × (0.64 + 0.15 × availability) + 0.1 / (1 + rtt_ms / 100)
@pytest.mark.parametrize(
    ("case", "near", "far", "winner", "near_total", "far_total"),
    [
        # equal but for distance: the near one wins
        ("equals", {}, {}, "near", 0.809039, 0.751),
        # near: every task slot taken (4 of 4); far idle at 150 ms
        ("tasks_full", {"load": LoadInfo(4, 4)}, {}, "far", 0.674039, 0.751),
        # near: machine saturated (CPU or memory at 100 %), no task running
        ("machine_full", {"pressure": 1.0}, {}, "far", 0.701039, 0.751),
        # near: a little busy (30 % pressure): not worth crossing an ocean
        ("machine_30", {"pressure": 0.3}, {}, "near", 0.776639, 0.751),
        # far at 300 ms still beats a near one with every slot taken
        ("far_300", {"load": LoadInfo(4, 4)}, {"rtt": 300.0}, "far", 0.674039, 0.736),
    ],
)
def test_defaults_prefer_near_and_avoid_saturated(
    case: str,
    near: dict[str, object],
    far: dict[str, object],
    winner: str,
    near_total: float,
    far_total: float,
) -> None:
    rtt = {"near": float(near.get("rtt", 2.0)), "far": float(far.get("rtt", 150.0))}  # type: ignore[arg-type]
    load = {n: v["load"] for n, v in (("near", near), ("far", far)) if "load" in v}
    pressure = {n: v["pressure"] for n, v in (("near", near), ("far", far)) if "pressure" in v}
    ranked = rank_defaults(
        [(entry("near"), 0.8), (entry("far"), 0.8)],
        rtt=rtt,
        load=load,  # type: ignore[arg-type]
        pressure=pressure,  # type: ignore[arg-type]
    )
    by_node = {c.node_id: c for c in ranked}
    assert ranked[0].node_id == winner, case
    assert by_node["near"].total == pytest.approx(near_total, abs=1e-6), case
    assert by_node["far"].total == pytest.approx(far_total, abs=1e-6), case
    # every part is reported
    assert by_node["near"].rtt_ms == rtt["near"]
    assert by_node["near"].latency == pytest.approx(latency_factor(rtt["near"], 0.0))
    assert by_node["near"].machine_pressure == pressure.get("near")


def test_advertised_latency_counts_with_distance() -> None:
    """Two providers at the same distance: the one advertising 400 ms loses to the one
    advertising 20 ms; a near provider advertising 400 ms loses to a far one at 100 ms
    advertising 20 ms (latency 1/5 against 1/2.2)."""
    ranked = rank_defaults(
        [(entry("slow", latency=400.0), 0.8), (entry("quick", latency=20.0), 0.8)],
        rtt={"slow": 2.0, "quick": 100.0},
    )
    assert [c.node_id for c in ranked] == ["quick", "slow"]
    assert ranked[0].latency == pytest.approx(1 / 2.2)
    assert ranked[1].latency == pytest.approx(1 / 5.02)


def test_weights_zero_leave_the_four_factor_score() -> None:
    """``rank`` without the distance arguments scores exactly as before."""
    hits = [(entry("a"), 0.8)]
    plain = rank(hits, trust={"a": 0.6}, load={})
    with_parts = rank(hits, trust={"a": 0.6}, load={}, rtt_ms={"a": 250.0}, pressure={"a": 1.0})
    assert plain[0].total == with_parts[0].total == pytest.approx(0.79)


# --------------------------------------------------------------------------- filter


@pytest.mark.parametrize(
    ("max_rtt_ms", "kept"),
    [
        (None, ["a", "b", "unknown"]),  # no filter
        (500.0, ["a", "b"]),  # a node of unknown distance never passes a filter
        (40.0, ["a"]),
        (40.1, ["a"]),
        (10.0, []),
        (0.0, []),
    ],
)
def test_max_rtt_filter(max_rtt_ms: float | None, kept: list[str]) -> None:
    ranked = rank_defaults(
        [(entry("a"), 0.8), (entry("b"), 0.8), (entry("unknown"), 0.8)],
        rtt={"a": 40.0, "b": 120.0},
        max_rtt_ms=max_rtt_ms,
    )
    assert sorted(c.node_id for c in ranked) == kept


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_rtt_ms": -1.0}, "max_rtt_ms"),
        ({"max_rtt_ms": math.inf}, "max_rtt_ms"),
        ({"max_rtt_ms": math.nan}, "max_rtt_ms"),
        ({"latency_weight": 1.5}, "latency_weight"),
        ({"pressure_weight": -0.1}, "pressure_weight"),
        ({"latency_reference_ms": 0.0}, "latency_reference_ms"),
    ],
)
def test_bad_distance_arguments_are_refused(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rank([(entry("a"), 0.8)], trust={}, load={}, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("routing_latency_weight", 1.1),
        ("routing_latency_weight", -0.1),
        ("routing_latency_weight", True),
        ("routing_pressure_weight", 2.0),
        ("routing_latency_reference_ms", 0.0),
        ("routing_latency_reference_ms", math.inf),
    ],
)
def test_config_refuses_bad_routing_fields(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        NodeConfig(**{field: value})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the advertisement


def test_pressure_travels_beside_acks_and_lands_on_the_member() -> None:
    """B sets its pressure; A's probes of B get it beside the ack (real encoded, signed
    packets) and keep it on B's member record; it never reaches A's own acks."""
    net = Network(wire=True, real_crypto=True)
    a, b = net.cluster(2)
    b.membership.set_pressure(30, 60)
    net.run_until_true(all_alive([a, b]), timeout=2.0)
    net.run_for(3.0)
    member = a.membership.member(b.id)
    assert member is not None and member.pressure == (30, 60)
    seen_by_b = b.membership.member(a.id)
    assert seen_by_b is not None and seen_by_b.pressure is None  # A never set one
    assert b.membership.pressure == (30, 60)


def test_pressure_from_a_stranger_is_ignored() -> None:
    m, _ = lonely()
    stranger = peer(9).node_id
    m.receive(stranger, [Pressure(90, 90)], ("10.1.1.1", 7946), 0.0)
    assert m.counters["pressure_ignored"] == 1
    assert m.member(stranger) is None


@pytest.mark.parametrize(("cpu", "memory"), [(-1, 0), (0, 101), (True, 0), (1.5, 0)])
def test_set_pressure_refuses_out_of_range(cpu: object, memory: object) -> None:
    m, _ = lonely()
    with pytest.raises(ValueError, match="pressure"):
        m.set_pressure(cpu, memory)  # type: ignore[arg-type]
    assert m.pressure is None


@pytest.mark.parametrize(("cpu", "memory"), [(101, 0), (0, -1), (1_000, 0), (50, 50)])
def test_pressure_out_of_range_is_refused_by_the_decoder(cpu: int, memory: int) -> None:
    """A peer cannot advertise more than 100 % (or less than 0): a correctly signed
    envelope carrying it is refused at decode; 50/50 decodes (the control)."""
    signer = Identity.from_seed(b"\x05" * 32)
    raw = msgpack.packb(
        [1, signer.public_key, [[int(MessageType.PRESSURE), cpu, memory]]], use_bin_type=True
    )
    frame = raw + b"\xc4\x40" + signer.sign(raw)
    if 0 <= cpu <= 100 and 0 <= memory <= 100:
        assert decode(frame).messages == (Pressure(cpu, memory),)
    else:
        with pytest.raises(RemoteProtocolError):
            decode(frame)


# --------------------------------------------------------------------------- through NodeCore


def test_node_core_routes_with_the_probe_rtt_and_the_advertised_pressure() -> None:
    """Without a coordinate estimate (``estimated_rtt_ms`` is None) ``NodeCore.route``
    uses the last direct probe's round trip, and the pressure that came beside the ack."""
    from meshnode.core.node import NodeCore

    a_signer, b_signer = peer(1), peer(2)
    core = NodeCore(
        NodeConfig.lan(), a_signer, host="10.0.0.1", port=7946, rng=random.Random(0),
        verifier=fast_verify,
    )  # fmt: skip
    b_alive = alive_of(b_signer)
    b_addr = (b_alive.host, b_alive.port)
    core.receive(b_signer.node_id, [b_alive], b_addr, 0.0)
    now, seq = 0.0, None
    for _ in range(50):
        now = core.next_deadline()
        core.tick(now)
        for effect in core.take_effects():
            if isinstance(effect, SendPacket) and effect.addr == b_addr:
                for msg in effect.messages:
                    if isinstance(msg, Ping) and msg.target == b_signer.node_id:
                        seq = msg.seq
        if seq is not None:
            break
    assert seq is not None
    assert core.estimated_rtt_ms(b_signer.node_id) is None
    core.receive(b_signer.node_id, [Ack(seq, 0, 2), Pressure(10, 70)], b_addr, now + 0.004)
    assert core.rtt_ms(b_signer.node_id) == pytest.approx(4.0)
    (candidate,) = core.route([(entry(b_signer.node_id), 0.8)], now + 0.01)
    assert candidate.rtt_ms == pytest.approx(4.0)
    assert candidate.latency == pytest.approx(1 / 1.04)
    assert candidate.machine_pressure == pytest.approx(0.7)
    assert candidate.availability == pytest.approx(1 - 0.8 * 0.7)
    assert core.route([(entry(b_signer.node_id), 0.8)], now + 0.01, max_rtt_ms=3.0) == []


# --------------------------------------------------------------------------- measuring


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MemTotal:  1000 kB\nMemFree: 100 kB\nMemAvailable:  250 kB\n", 75),
        ("MemTotal:  1000 kB\nMemAvailable:  1000 kB\n", 0),
        ("MemTotal:  1000 kB\nMemAvailable:  0 kB\n", 100),
        ("MemTotal:  1000 kB\n", 0),  # no MemAvailable (a very old kernel): unmeasured
        ("MemTotal:  0 kB\nMemAvailable: 5 kB\n", 0),
        ("garbage\x00\nMemTotal: x kB\n", 0),
    ],
)
def test_memory_pressure_from_meminfo(tmp_path: Path, text: str, expected: int) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(text)
    assert memory_pressure(meminfo) == expected


def test_pressure_of_this_machine_is_in_range(tmp_path: Path) -> None:
    cpu, memory = read_pressure()
    assert 0 <= cpu <= 100 and 0 <= memory <= 100
    assert memory_pressure(tmp_path / "missing") == 0
    assert 0 <= cpu_pressure() <= 100
