"""``nnprobe health [vision|sequence|attention|all]``: ask each server's grpc.health.v1 service."""

from __future__ import annotations

import argparse

from nnprobe.attention import AttentionClient
from nnprobe.cli.output import client_kwargs, print_json, print_table
from nnprobe.config import DEFAULT_ADDRESSES, DEFAULT_TIMEOUT
from nnprobe.errors import NnprobeError
from nnprobe.sequence import SequenceClient
from nnprobe.vision import VisionClient

CLIENTS = {"vision": VisionClient, "sequence": SequenceClient, "attention": AttentionClient}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("health", help="health of the servers")
    parser.add_argument("service", nargs="?", default="all", choices=[*CLIENTS, "all"])
    parser.add_argument("--address", help="address (only with a single service)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--token")
    parser.add_argument("--tls-ca")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    services = list(CLIENTS) if args.service == "all" else [args.service]
    rows = []
    for name in services:
        address = args.address if args.address and len(services) == 1 else None
        with CLIENTS[name](address, **client_kwargs(args)) as client:
            try:
                status = client.health(timeout=min(args.timeout, 5.0))
            except NnprobeError as error:
                status = error.code.name
            rows.append((name, client.address, status))
    if args.json:
        print_json([{"service": s, "address": a, "status": st} for s, a, st in rows])
    else:
        print_table(rows, ["service", "address", "status"])
    return 0 if all(status == "SERVING" for _, _, status in rows) else 1


__all__ = ["DEFAULT_ADDRESSES", "add_commands"]
