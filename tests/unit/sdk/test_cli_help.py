"""Every option of every command says what it is and its default in ``--help``."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest
from nnprobe.cli import build_parser


def commands(parser: argparse.ArgumentParser, path: str = "nnprobe"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{path} {name}")


COMMANDS = list(commands(build_parser()))


def test_the_walk_reaches_the_commands_of_every_service():
    names = {path for path, _ in COMMANDS}
    assert {"nnprobe rf", "nnprobe attack", "nnprobe lm train", "nnprobe attention ffn"} <= names
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_option_has_a_description_and_its_default(path, parser):
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and len(action.help.replace("(default: %(default)s)", "").strip()) >= 5, (
            f"{path} {name} has no description"
        )
        if action.option_strings:
            assert "default" in action.help, f"{path} {name} does not say its default"
    assert "%(default)" not in text  # every template was filled in


def test_help_prints_the_actual_default():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["rnn", "truncation", "--help"])
    help_text = " ".join(out.getvalue().split())
    assert "(default: 1024)" in help_text and "(default: [1, 2, 4, 8])" in help_text
