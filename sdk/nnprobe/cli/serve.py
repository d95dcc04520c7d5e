"""``nnprobe serve vision|sequence|attention|all``: run servers in this process (needs nnprobe-services)."""

from __future__ import annotations

import argparse

SERVICES = ("vision", "sequence", "attention")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a server (or all three) until SIGTERM/SIGINT",
        description="Run nnprobe servers. Every flag also reads NNPROBE_<NAME>; with `all`, each server "
        "listens on its own default port (vision 50051, sequence 50052, attention 50053); with `all` and "
        "--port P they listen on P, P+1 and P+2 (and --metrics-port M gives M, M+1, M+2).",
    )
    parser.add_argument("service", choices=[*SERVICES, "all"])
    try:
        from nnprobe_services.server.config import add_server_flags
    except ImportError:  # the SDK alone: `run` explains what to install
        pass
    else:
        add_server_flags(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        from nnprobe_services.server.app import serve
        from nnprobe_services.server.config import load_config
    except ImportError:
        raise OSError(
            "`nnprobe serve` needs the server package: pip install nnprobe-services "
            "(or run the containers in deploy/)"
        ) from None
    if args.service != "all":
        serve(load_config(args.service, flags=args))
        return 0
    import dataclasses

    configs = [load_config(name, flags=args) for name in SERVICES]
    base = getattr(args, "port", None)
    metrics = configs[0].metrics_port
    configs = [
        dataclasses.replace(
            config,
            port=config.port if base is None else base + offset,
            metrics_port=metrics + offset if metrics else 0,
        )
        for offset, config in enumerate(configs)
    ]
    serve(configs)
    return 0
