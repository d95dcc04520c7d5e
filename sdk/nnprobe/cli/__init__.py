"""The ``nnprobe`` command line: one sub-command per service, plus ``serve`` and ``health``.

Each module in this package adds its sub-commands with ``add_commands(subparsers)``; a command is a
function ``run(args) -> int`` stored as the parser's ``handler`` default.

Exit status: 0 success; 1 the server refused or failed the call (or none answered); 2 the command line
itself is wrong (an unknown option, a number out of its range, a file that does not exist), reported before
any request; 130 interrupted. Every failure is one ``error:`` line on standard error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nnprobe.cli import (
    attack,
    attention,
    classify,
    extras,
    health,
    lm,
    models,
    robustness,
    sequence,
    serve,
    vision,
)
from nnprobe.cli.failures import describe, missing_file
from nnprobe.cli.option_help import describe_options
from nnprobe.cli.output import fail
from nnprobe.cli.parsing import CommandParser, UsageError
from nnprobe.errors import NnprobeError

COMMAND_MODULES = [serve, health, attention, sequence, vision, classify, models, attack, robustness, lm]


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="nnprobe", description="Classic analyses of deep networks, as a service.")
    parser.is_root = True
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.set_defaults(needs=lambda args: ())  # the extras a command's arguments need (cli.extras)
    for module in COMMAND_MODULES:
        module.add_commands(subparsers)
    describe_options(parser)  # every option: a description and its default
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        extras.require(args.needs(args), f"nnprobe {args.command}")  # before any RPC
        return int(args.handler(args) or 0)
    except NnprobeError as error:
        return fail(describe(error, args))
    except (UsageError, FileNotFoundError) as error:
        message = missing_file(error) if isinstance(error, FileNotFoundError) else str(error)
        return fail(f"{args.command_parser.prog}: error: {message}", status=2)
    except (ValueError, OSError) as error:
        return fail(f"error: {error}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
