"""``nnprobe serve vision|sequence|attention|all``: run servers in this process (needs nnprobe-services)."""

from __future__ import annotations

import argparse

SERVICES = ("vision", "sequence", "attention")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a server (or all three) until SIGTERM/SIGINT",
        description="Run nnprobe servers. Every flag also reads NNPROBE_<NAME>; with `all`, each server "
        "listens on its own default port (vision 50051, sequence 50052, attention 50053) unless --port "
        "is given, which then applies to the single service only.",
    )
    parser.add_argument("service", choices=[*SERVICES, "all"])
    try:
        from nnprobe_services.server.config import add_server_flags
    except ImportError:
        add_server_flags = None
    if add_server_flags is not None:
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
    services = SERVICES if args.service == "all" else (args.service,)
    if args.service == "all" and getattr(args, "port", None) is not None:
        raise ValueError("--port applies to a single service; with `all` use NNPROBE_*_ADDR defaults")
    configs = [load_config(name, flags=args) for name in services]
    serve(configs)
    return 0
