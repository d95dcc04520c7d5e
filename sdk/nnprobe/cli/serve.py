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
        "--port P they listen on P, P+1 and P+2.",
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
    base = getattr(args, "port", None)
    configs = []
    for offset, name in enumerate(SERVICES):
        if base is not None:
            args.port = base + offset
        configs.append(load_config(name, flags=args))
    serve(configs)
    return 0
