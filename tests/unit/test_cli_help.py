"""Every command line explains itself.

Invariants: every ``meshnode`` subcommand (at every level) has a description and an
example (its epilog shows the command being run); every option and positional argument
has a help text; every option that takes a value and is not required says what it
defaults to. ``python -m simulations --help`` names and describes every scenario, and its
options obey the same rule.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from meshnode.cli import build_parser
from simulations import cli as sim_cli
from simulations.scenarios import SCENARIOS


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """``(path, parser)`` for ``parser`` and every subcommand under it, depth first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subcommands(child, (*path, name))


def in_required_group(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    return any(
        group.required and action in group._group_actions
        for group in parser._mutually_exclusive_groups
    )


def option_problems(parser: argparse.ArgumentParser, where: str) -> list[str]:
    """What is missing from the help of ``parser``'s own options and arguments."""
    problems = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help or action.help == argparse.SUPPRESS:
            problems.append(f"{where} {name}: no help")
            continue
        takes_value = action.nargs != 0
        optional = bool(action.option_strings) and not action.required
        if (
            takes_value
            and optional
            and not in_required_group(parser, action)
            and "default" not in action.help.lower()
        ):
            problems.append(f"{where} {name}: help does not state the default")
    return problems


def test_every_meshnode_subcommand_has_a_description_and_an_example() -> None:
    """A subcommand without description or example is named (the test walks them all)."""
    found = list(subcommands(build_parser()))
    assert len(found) > 20  # the walk reaches nested commands (keys init, authority issue)
    problems = []
    for path, parser in found[1:]:
        command = "meshnode " + " ".join(path)
        if not parser.description:
            problems.append(f"{command}: no description")
        if not parser.epilog or command not in parser.epilog:
            problems.append(f"{command}: no example running {command!r} in its epilog")
    assert problems == []


def test_every_meshnode_option_has_help_and_its_default() -> None:
    problems = []
    for path, parser in subcommands(build_parser()):
        problems += option_problems(parser, "meshnode " + " ".join(path))
    assert problems == []


def test_node_option_names_its_default_address() -> None:
    """``--node`` defaults to 127.0.0.1:7946, and every command taking it says so."""
    seen = 0
    for path, parser in subcommands(build_parser()):
        for action in parser._actions:
            if "--node" in action.option_strings and action.default is not None:
                seen += 1
                assert action.default == "127.0.0.1:7946", path
                assert action.help is not None and "127.0.0.1:7946" in action.help, path
    assert seen >= 10


def test_simulator_help_describes_every_scenario_and_option() -> None:
    parser = sim_cli.build_parser()
    text = parser.format_help()
    for scenario in SCENARIOS:
        assert f"  {scenario}" in text, scenario  # listed, with its description beside it
    assert parser.epilog is not None and "python -m simulations --scenario" in parser.epilog
    assert option_problems(parser, "python -m simulations") == []


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["-m", "meshnode.cli", "--help"], "meshnode run"),
        (["-m", "meshnode.cli", "members", "--help"], "(default 127.0.0.1:7946)"),
        (["-m", "simulations", "--help"], "partition-heal"),
    ],
)
def test_help_runs(command: list[str], expected: str) -> None:
    """``--help`` exits 0 and prints the example or default (real process)."""
    done = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
