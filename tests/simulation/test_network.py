"""The network model: loss, duplication, latency bounds, partitions and TCP timing."""

from __future__ import annotations

import math
import random

import pytest

from simulations.network import LinkModel, Network


def _net(**kw: float) -> Network:
    net = Network(LinkModel(**kw), random.Random(1))
    for _ in range(4):
        net.add_host()
    return net


def test_latency_is_min_plus_a_tail() -> None:
    """Every delay is at least the minimum; the mean is close to the configured mean."""
    net = _net(min_latency=0.001, mean_latency=0.003)
    delays = [net.delay(0, 1) for _ in range(20_000)]
    assert min(delays) >= 0.001
    assert abs(sum(delays) / len(delays) - 0.003) < 0.0002


def test_loss_and_duplication_rates() -> None:
    net = _net(loss=0.2, duplicate=0.1)
    fates = [net.datagram(0, 1) for _ in range(20_000)]
    lost = sum(1 for f in fates if not f) / len(fates)
    doubled = sum(1 for f in fates if len(f) == 2) / len(fates)
    assert abs(lost - 0.2) < 0.02
    assert abs(doubled - 0.08) < 0.015  # 10 % of the 80 % delivered


def test_symmetric_and_one_way_partitions() -> None:
    net = _net()
    net.partition([[0, 1]])  # {0, 1} against {2, 3}
    assert net.reachable(0, 1) and net.reachable(2, 3)
    assert not net.reachable(0, 2) and not net.reachable(3, 1)
    assert net.datagram(0, 2) == ()
    net.partition_one_way([0], [1])
    assert not net.reachable(0, 1)
    assert net.reachable(1, 0)
    assert net.reachable(2, 3)
    net.heal()
    net.cut_link(3, 2)
    assert not net.reachable(3, 2) and net.reachable(2, 3)
    net.heal()
    assert all(net.reachable(a, b) for a in range(4) for b in range(4))


def test_tcp_retransmits_instead_of_failing() -> None:
    """With loss, TCP legs take longer (retransmission timeouts) but arrive."""
    clean = _net(min_latency=0.001, mean_latency=0.001)
    lossy = _net(min_latency=0.001, mean_latency=0.001, loss=0.5)
    assert clean.tcp_connect(0, 1) == pytest.approx(0.002)
    legs = [lossy.tcp_leg(0, 1) for _ in range(2000)]
    assert all(math.isfinite(x) for x in legs)
    assert max(legs) > 0.2  # some needed a retransmission
    total_loss = _net(loss=1.0)
    assert total_loss.tcp_leg(0, 1) == math.inf


def test_model_validation() -> None:
    with pytest.raises(ValueError):
        LinkModel(loss=1.5)
    with pytest.raises(ValueError):
        LinkModel(min_latency=0.01, mean_latency=0.001)
