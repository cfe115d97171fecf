"""docs/configuration.md lists every ``NodeConfig`` field and is current, and
``meshnode run --set KEY=VALUE`` sets any field with a clear refusal for a bad one."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshnode.cli import config_setting, parse_setting
from meshnode.core.config import NodeConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_reference_is_current_and_names_every_field() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    text = (ROOT / "docs" / "configuration.md").read_text()
    for field in dataclasses.fields(NodeConfig):
        assert f"| `{field.name}` |" in text, field.name
    assert "(no docstring)" not in text


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("a2a_max_live_tasks=64", ("a2a_max_live_tasks", 64)),
        ("probe_timeout=0.25", ("probe_timeout", 0.25)),
        ("lifeguard=False", ("lifeguard", False)),
        ("name=edge-7", ("name", "edge-7")),
        (" tags = ('a', 'b')", ("tags", ("a", "b"))),
        ("x=" + "(" * 200, ("x", "(" * 200)),  # not a literal: kept as text
    ],
)
def test_parse_setting(text: str, parsed: tuple[str, Any]) -> None:
    assert parse_setting(text) == parsed


@pytest.mark.parametrize("text", ["no_equals", "=3", " =3"])
def test_parse_setting_refuses_what_is_not_key_value(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        parse_setting(text)


BASE = NodeConfig.lan()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("a2a_max_live_tasks", 64, 64),
        ("probe_timeout", 0.25, 0.25),
        ("probe_interval", 2, 2),  # an integer number of seconds
        ("advertise_host", "10.0.0.7", "10.0.0.7"),  # default None: any kind
    ],
)
def test_config_setting_takes_values_of_the_fields_kind(
    key: str, value: Any, expected: Any
) -> None:
    assert config_setting(BASE, key, value, flagged={}) == expected
    NodeConfig.lan(**{key: expected})  # and the config accepts it


@pytest.mark.parametrize(
    ("key", "value", "flagged", "message"),
    [
        ("probe_timout", 0.2, {}, "no field 'probe_timout' (did you mean probe_timeout?)"),
        ("a2a_max_live_tasks", "many", {}, "expected int like the default 256"),
        ("a2a_max_live_tasks", True, {}, "expected int like the default 256"),
        ("probe_timeout", "fast", {}, "expected float like the default 0.5"),
        ("port", 7000, {"port": 7946}, "port is set by its own flag of meshnode run"),
    ],
)
def test_config_setting_refuses_with_the_reason(
    key: str, value: Any, flagged: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match="--set") as err:
        config_setting(BASE, key, value, flagged=flagged)
    assert message in str(err.value)


def test_run_set_reaches_the_config_and_ranges_are_the_configs() -> None:
    from meshnode.cli import _config_from_args, build_parser

    args = build_parser().parse_args(
        ["run", "--set", "a2a_max_live_tasks=64", "--set", "suspicion_mult=5"]
    )
    config = _config_from_args(args)
    assert (config.a2a_max_live_tasks, config.suspicion_mult) == (64, 5)
    args = build_parser().parse_args(["run", "--set", "a2a_max_live_tasks=0"])
    with pytest.raises(ValueError, match="a2a_max_live_tasks must be in"):
        _config_from_args(args)
