"""``--help`` of ``asynctoken`` and ``python -m asynctoken.testing`` states every default."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from asynctoken.cli import build_parser
from asynctoken.testing.__main__ import _parser


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


@pytest.mark.parametrize(
    "parser", [*_parsers(build_parser()), _parser()], ids=lambda p: p.prog.replace(" ", "-")
)
def test_every_option_states_its_default(parser: argparse.ArgumentParser) -> None:
    unstated = [
        "/".join(action.option_strings)
        for action in parser._actions
        if action.option_strings
        and action.help != argparse.SUPPRESS
        and not action.required
        and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        # a flag that is off unless given, or an option that is unset unless given, has no
        # default to state
        and action.default not in (False, None, argparse.SUPPRESS)
        and "default" not in (action.help or "")
    ]
    assert not unstated, f"{parser.prog}: options whose help says no default: {unstated}"


def test_fake_server_help_lists_defaults_units_and_control_routes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "asynctoken.testing", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(result.stdout.split())
    for expected in (
        "--expires-in SECONDS access-token lifetime (default: 3600)",
        "(default: test-client)",
        "(default: test-secret)",
        "--lifetime SECONDS exit after this long (default: 600)",
        "POST /_fake/refresh-token",
        "GET /_fake/stats",
    ):
        assert expected in text, expected
