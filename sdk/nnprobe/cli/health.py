"""``nnprobe health [vision|sequence|attention|all]``: ask each server's grpc.health.v1 service."""

from __future__ import annotations

import argparse

from nnprobe.attention import AttentionClient
from nnprobe.cli.output import client_kwargs, print_json, print_table
from nnprobe.config import DEFAULT_ADDRESSES
from nnprobe.errors import NnprobeError
from nnprobe.sequence import SequenceClient
from nnprobe.vision import VisionClient

#: Default deadline of one health check, in seconds: a server that is up answers at once.
HEALTH_TIMEOUT = 5.0
CLIENTS = {"vision": VisionClient, "sequence": SequenceClient, "attention": AttentionClient}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("health", help="health of the servers")
    parser.add_argument("service", nargs="?", default="all", choices=[*CLIENTS, "all"])
    parser.add_argument(
        "--address",
        help="address to ask (every service named, `all` included; default: each service's own address from "
        "NNPROBE_<SERVICE>_ADDR or its default port)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=HEALTH_TIMEOUT,
        help=f"deadline in seconds (default {HEALTH_TIMEOUT:g})",
    )
    parser.add_argument("--token", help="bearer token (env NNPROBE_TOKEN)")
    parser.add_argument("--tls-ca", help="CA bundle (PEM) to verify the servers; enables TLS")
    parser.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--tls-key", help="client key (PEM) for mutual TLS")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    services = list(CLIENTS) if args.service == "all" else [args.service]
    rows = []
    for name in services:
        with CLIENTS[name](args.address or None, **client_kwargs(args)) as client:
            try:
                status = client.health(timeout=args.timeout)
            except NnprobeError as error:
                status = error.code.name
            rows.append((name, client.address, status))
    if args.json:
        print_json([{"service": s, "address": a, "status": st} for s, a, st in rows])
    else:
        print_table(rows, ["service", "address", "status"])
    return 0 if all(status == "SERVING" for _, _, status in rows) else 1


__all__ = ["DEFAULT_ADDRESSES", "add_commands"]
