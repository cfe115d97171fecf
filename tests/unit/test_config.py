"""NodeConfig: defaults, presets, validation and address parsing."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from meshnode.core import timing
from meshnode.core.config import NodeConfig, format_address, parse_address


def test_defaults_are_memberlist_lan() -> None:
    """The base profile carries memberlist's LAN values."""
    c = NodeConfig()
    assert (c.name, c.host, c.port, c.advertise_host, c.seeds, c.data_dir) == (
        "node",
        "127.0.0.1",
        7946,
        None,
        (),
        None,
    )
    assert (c.probe_interval, c.probe_timeout, c.indirect_checks) == (1.0, 0.5, 3)
    assert (c.suspicion_mult, c.suspicion_max_timeout_mult, c.retransmit_mult) == (4, 6, 4)
    assert (c.gossip_interval, c.gossip_nodes, c.gossip_to_the_dead_time) == (0.2, 3, 30.0)
    assert (c.push_pull_interval, c.awareness_max_multiplier, c.max_packet_bytes) == (
        30.0,
        8,
        1400,
    )
    assert NodeConfig.lan() == c


def test_wan_preset() -> None:
    """memberlist's WAN profile."""
    c = NodeConfig.wan()
    assert (c.probe_interval, c.probe_timeout, c.suspicion_mult) == (5.0, 3.0, 6)
    assert (c.push_pull_interval, c.gossip_interval, c.gossip_nodes) == (60.0, 0.5, 4)
    assert c.awareness_max_multiplier == 8
    assert c.indirect_checks == 3  # inherited from the base


def test_local_preset_detects_within_seconds() -> None:
    """The local profile is fast, and a 10–20 node mesh bounds a suspicion to a few
    seconds while still leaving over a second (4+ probe periods) to refute."""
    c = NodeConfig.local()
    assert (c.probe_interval, c.probe_timeout, c.gossip_interval, c.push_pull_interval) == (
        0.3,
        0.1,
        0.05,
        2.0,
    )
    for n in (10, 20):
        low, high = timing.suspicion_bounds(
            c.suspicion_mult, c.suspicion_max_timeout_mult, n, c.probe_interval
        )
        assert 1.2 <= low <= 1.6
        assert high <= 6.5


def test_presets_take_overrides_and_validate_them() -> None:
    """Overrides win over the profile; an invalid override fails at once."""
    c = NodeConfig.wan(name="edge", probe_interval=10.0)
    assert (c.name, c.probe_interval, c.probe_timeout) == ("edge", 10.0, 3.0)
    assert NodeConfig.local(port=0).port == 0
    with pytest.raises(ValueError, match="probe_timeout"):
        NodeConfig.local(probe_timeout=0.5)


def test_config_is_frozen_and_seeds_become_a_tuple() -> None:
    """The config cannot be mutated; seeds given as a list are stored as a tuple."""
    c = NodeConfig(seeds=["10.0.0.5:7946", "[::1]:7000"])  # type: ignore[arg-type]
    assert c.seeds == ("10.0.0.5:7946", "[::1]:7000")
    assert c.seed_addresses == (("10.0.0.5", 7946), ("::1", 7000))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.port = 1  # type: ignore[misc]
    assert hash(c) == hash(dataclasses.replace(c))


def test_advertise_address() -> None:
    """advertise_host/port default to the bind address."""
    assert NodeConfig(host="10.1.1.1", port=8000).advertise_address == ("10.1.1.1", 8000)
    c = NodeConfig(host="0.0.0.0", advertise_host="203.0.113.9", advertise_port=9000)
    assert c.advertise_address == ("203.0.113.9", 9000)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 129}, "name"),
        ({"host": ""}, "host"),
        ({"port": 70000}, "port"),
        ({"port": 1.5}, "port"),
        ({"advertise_port": 0}, "advertise_port"),
        ({"seeds": "10.0.0.1:7946"}, "seeds"),
        ({"seeds": ("10.0.0.1",)}, "seeds"),
        ({"seeds": ("10.0.0.1:0",)}, "seeds"),
        ({"seeds": ("::1:7946",)}, "brackets"),
        ({"probe_interval": 0}, "probe_interval"),
        ({"probe_interval": float("nan")}, "probe_interval"),
        ({"probe_timeout": 1.0}, "probe_timeout"),
        ({"probe_timeout": True}, "probe_timeout"),
        ({"indirect_checks": -1}, "indirect_checks"),
        ({"suspicion_mult": 0}, "suspicion_mult"),
        ({"suspicion_max_timeout_mult": 0}, "suspicion_max_timeout_mult"),
        ({"retransmit_mult": 0}, "retransmit_mult"),
        ({"gossip_interval": -0.1}, "gossip_interval"),
        ({"gossip_nodes": -1}, "gossip_nodes"),
        ({"gossip_to_the_dead_time": -1.0}, "gossip_to_the_dead_time"),
        ({"push_pull_interval": -1.0}, "push_pull_interval"),
        ({"awareness_max_multiplier": 0}, "awareness_max_multiplier"),
        ({"max_packet_bytes": 100}, "max_packet_bytes"),
        ({"max_packet_bytes": 70_000}, "max_packet_bytes"),
        ({"dead_member_retention": 10.0}, "dead_member_retention"),
        ({"join_retry_initial": 5.0, "join_retry_max": 1.0}, "join_retry_max"),
        ({"leave_propagate_time": -1.0}, "leave_propagate_time"),
        ({"tcp_timeout": 0.0}, "tcp_timeout"),
        ({"data_dir": ""}, "data_dir"),
        ({"embedder": "word2vec"}, "embedder"),
        ({"embedding_precision": "fp16"}, "embedding_precision"),
    ],
)
def test_invalid_values_are_refused(overrides: dict[str, Any], message: str) -> None:
    """Every check names the field it refuses."""
    with pytest.raises(ValueError, match=message):
        NodeConfig(**overrides)


def test_zero_disables_push_pull_and_gossip() -> None:
    """0 is a valid 'off' for push-pull, gossip fan-out and indirect probes."""
    c = NodeConfig(push_pull_interval=0.0, gossip_nodes=0, indirect_checks=0)
    assert (c.push_pull_interval, c.gossip_nodes, c.indirect_checks) == (0.0, 0, 0)


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("10.0.0.1:7946", ("10.0.0.1", 7946)),
        ("node-3.example:1", ("node-3.example", 1)),
        (" localhost:65535 ", ("localhost", 65535)),
        ("[::1]:7946", ("::1", 7946)),
        ("[fe80::1]:80", ("fe80::1", 80)),
    ],
)
def test_parse_address(text: str, addr: tuple[str, int]) -> None:
    """host:port, with bracketed IPv6; format_address is its inverse."""
    assert parse_address(text) == addr
    assert parse_address(format_address(addr)) == addr


@pytest.mark.parametrize(
    "text", ["", "10.0.0.1", ":7946", "10.0.0.1:", "10.0.0.1:x", "a:65536", "::1:80", "[]:80"]
)
def test_parse_address_refuses(text: str) -> None:
    """Anything else is a ValueError naming the input."""
    with pytest.raises(ValueError, match="address"):
        parse_address(text)


def test_cli_run_passes_the_embedder_settings_to_the_config() -> None:
    """``meshnode run --embedder/--embedding-precision`` reach ``NodeConfig``; without
    them the defaults hold; an unknown precision is refused by the parser."""
    from meshnode.cli import _config_from_args, build_parser

    parser = build_parser()
    args = parser.parse_args(["run", "--embedder", "minilm", "--embedding-precision", "fp32"])
    config = _config_from_args(args)
    assert (config.embedder, config.embedding_precision) == ("minilm", "fp32")
    assert _config_from_args(parser.parse_args(["run"])).embedding_precision == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--embedding-precision", "fp16"])
