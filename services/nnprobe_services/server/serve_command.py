"""``nnprobe serve vision|sequence|attention|all``: run servers in this process.

The SDK's command line (distribution ``nnprobe``) does not import this package: it finds ``main`` through the
``nnprobe.serve`` entry point that this distribution registers, and hands it the arguments after ``serve``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nnprobe_services.server.config import DEFAULT_PORTS, ServerConfig, add_server_flags, load_config

SERVICES = tuple(DEFAULT_PORTS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnprobe serve",
        usage="%(prog)s {vision,sequence,attention,all} [--SETTING VALUE ...]",
        description="Run nnprobe servers until SIGTERM/SIGINT. Settings come from their defaults, then "
        "NNPROBE_* variables, then flags. With `all`, each server listens on its own default port (vision "
        "50051, sequence 50052, attention 50053); with `all` and --port P they listen on P, P+1 and P+2 (and "
        "--metrics-port M gives M, M+1, M+2).",
    )
    parser.add_argument("service", choices=[*SERVICES, "all"], help="the server to run, or all three")
    add_server_flags(parser)
    return parser


def configs_for(args: argparse.Namespace) -> list[ServerConfig]:
    """One configuration per server that ``args`` asks for."""
    if args.service != "all":
        return [load_config(args.service, flags=args)]
    configs = [load_config(name, flags=args) for name in SERVICES]
    first = configs[0]
    return [
        config.replace(
            port=config.common.port if args.port is None else (first.common.port or 0) + offset,
            metrics_port=first.common.metrics_port + offset if first.common.metrics_port else 0,
        )
        for offset, config in enumerate(configs)
    ]


def main(argv: Sequence[str]) -> int:
    """Run the servers ``argv`` (the words after ``nnprobe serve``) asks for; the exit status."""
    args = build_parser().parse_args(list(argv))
    try:
        configs = configs_for(args)
        from nnprobe_services.server.app import serve

        serve(configs if len(configs) > 1 else configs[0])
    except (ValueError, OSError) as error:
        print(f"nnprobe serve: {error}", file=sys.stderr)
        return 2
    return 0
