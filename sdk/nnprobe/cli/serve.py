"""``nnprobe serve vision|sequence|attention|all``: run servers in this process.

The servers are another distribution (``nnprobe-services``), which registers its command under the
``nnprobe.serve`` entry point; this module finds it there and hands it the words after ``serve`` (its own
``--help`` lists every setting). The SDK itself never imports the servers.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from collections.abc import Callable, Sequence

#: The entry point group where ``nnprobe-services`` registers ``serve``: a callable taking the words after
#: ``nnprobe serve`` and returning an exit status.
ENTRY_POINT_GROUP = "nnprobe.serve"
MISSING = (
    "nnprobe serve needs the nnprobe-services distribution: pip install nnprobe-services "
    "(or run the containers in deploy/)"
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a server (or all three) until SIGTERM/SIGINT",
        usage="nnprobe serve {vision,sequence,attention,all} [--SETTING VALUE ...]",
        description="Run nnprobe servers (needs nnprobe-services); `nnprobe serve --help` lists every "
        "setting.",
        prefix_chars="+",  # every word, --help included, goes to the servers' own parser
        add_help=False,
    )
    parser.add_argument("arguments", nargs="*", help="the service and its settings")
    parser.set_defaults(handler=run)


def find_command() -> Callable[[Sequence[str]], int] | None:
    """The ``serve`` command of the installed ``nnprobe-services``, or ``None`` when it is not installed."""
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name="serve"):
        try:
            return entry.load()
        except ImportError as error:
            raise OSError(
                f"nnprobe serve: nnprobe-services is installed but does not import ({error}); reinstall it "
                "with its dependencies: pip install nnprobe-services"
            ) from None
    return None


def run(args: argparse.Namespace) -> int:
    command = find_command()
    if command is None:
        raise OSError(MISSING)
    return int(command(list(args.arguments)) or 0)
