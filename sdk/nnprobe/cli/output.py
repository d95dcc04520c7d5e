"""Shared CLI plumbing: client options, tables, JSON, progress bars, errors."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import numpy as np

from nnprobe.cli.parsing import limit
from nnprobe.config import DEFAULT_ADDRESSES, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT, TlsConfig
from nnprobe.json_text import json_text


def add_client_options(parser: argparse.ArgumentParser, service: str) -> None:
    """--address, --timeout, --token, --tls-*, --json for a command that calls ``service``."""
    env, default = DEFAULT_ADDRESSES[service]
    group = parser.add_argument_group("connection")
    group.add_argument("--address", help=f"server address (env {env}, default {default})")
    limit(
        group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="deadline in seconds, > 0"),
        low_open=True,
    )
    group.add_argument("--token", help="bearer token (env NNPROBE_TOKEN)")
    group.add_argument("--tls-ca", help="CA bundle (PEM) to verify the server; enables TLS")
    group.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    group.add_argument("--tls-key", help="client key (PEM) for mutual TLS")
    limit(
        group.add_argument(
            "--max-message-bytes",
            type=int,
            default=DEFAULT_MAX_MESSAGE_BYTES,
            metavar="N",
            help="largest message sent or received, in bytes (the server has its own --max-message-bytes)",
        ),
        low=1,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(client_service=service)  # names the server in "no server at ..." messages


def client_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for a client constructor from the connection options."""
    import os

    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        tls = TlsConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    return {
        "timeout": args.timeout,
        "token": args.token or os.environ.get("NNPROBE_TOKEN"),
        "tls": tls,
        "max_message_bytes": getattr(args, "max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES),
    }


def to_jsonable(value: Any) -> Any:
    """Dataclasses, numpy arrays and scalars to plain JSON values (``raw`` fields are dropped)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "raw"
        }
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up at call time: the stream may have been replaced
    out.write(json_text(to_jsonable(value)) + "\n")  # strict JSON: "inf" and "nan" as text


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)} {value.dtype}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def print_table(rows: Iterable[Sequence[Any]], headers: Sequence[str], out: TextIO | None = None) -> None:
    """A plain aligned table; numbers right-aligned."""
    out = out or sys.stdout
    cells = [[format_value(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out.write(line(headers) + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in cells:
        out.write(line(row) + "\n")


def print_fields(pairs: Iterable[tuple[str, Any]], out: TextIO | None = None) -> None:
    """``name  value`` lines for a single result."""
    out = out or sys.stdout
    pairs = list(pairs)
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        out.write(f"{key.ljust(width)}  {format_value(value)}\n")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ProgressBar:
    """A one-line progress bar on stderr (silent when stderr is not a terminal unless forced)."""

    def __init__(self, total: int, label: str = "", *, out: TextIO | None = None, force: bool = False):
        self.total = max(total, 1)
        self.label = label
        self.out = out or sys.stderr
        self.enabled = force or self.out.isatty()
        self.start = time.monotonic()

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        fraction = min(done / self.total, 1.0)
        filled = int(fraction * 30)
        elapsed = time.monotonic() - self.start
        self.out.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
            f"{elapsed:5.1f}s {note}".ljust(100)[:160]
        )
        self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.out.write("\n")
            self.out.flush()


def fail(message: str, status: int = 1) -> int:
    """Print ``message`` on standard error; return the exit ``status``."""
    print(message, file=sys.stderr)
    return status
