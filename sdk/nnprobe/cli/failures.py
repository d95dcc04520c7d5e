"""What the command line says when a command fails: one ``error:`` line a user can act on.

- No server at the address (the call's UNAVAILABLE before any server answered): which address, and how to
  start one.
- A name the server does not know (a model, a layer) that is close to one it lists in its answer: the
  closest, as "did you mean ...?" (the server's message names the ones it has).
- A file that does not exist: its path.
"""

from __future__ import annotations

import argparse
import difflib
import re

import grpc

from nnprobe.config import default_address
from nnprobe.errors import NnprobeError

#: Words of gRPC's own messages when no connection could be made (not a server's UNAVAILABLE answer).
NO_CONNECTION = (
    "failed to connect",
    "backends failing",
    "connection refused",
    "dns resolution failed",
    "name resolution",
    "no address",
    "connect failed",
)
#: A server's message naming an unknown name and listing the ones it has: (the name, the list).
UNKNOWN_NAME = re.compile(
    r"(?:no|unknown) (?:model|layer) '(?P<name>[^']*)'.*?"
    r"(?:available:|available models are|layers are) (?P<names>[^;()]*)",
    re.DOTALL,
)


def no_server(error: NnprobeError, args: argparse.Namespace) -> str | None:
    """``no server at ADDRESS (start one with: nnprobe serve SERVICE)`` when ``error`` says that no
    connection could be made to the command's server; ``None`` otherwise."""
    service = getattr(args, "client_service", None)
    if error.code != grpc.StatusCode.UNAVAILABLE or service is None:
        return None
    text = error.message.lower()
    if not any(words in text for words in NO_CONNECTION) or "handshake" in text or "ssl" in text:
        return None
    address = getattr(args, "address", None) or default_address(service)
    return f"no server at {address} (start one with: nnprobe serve {service})"


def closest_name(message: str) -> str | None:
    """The name the server listed that is closest to the unknown one its ``message`` names, if any is."""
    match = UNKNOWN_NAME.search(message)
    if match is None:
        return None
    names = [n.strip().strip("'\"") for n in re.split(r",\s*|\s+or\s+", match.group("names"))]
    close = difflib.get_close_matches(match.group("name"), [n for n in names if n], n=1, cutoff=0.6)
    return close[0] if close else None


def describe(error: NnprobeError, args: argparse.Namespace) -> str:
    """The one ``error:`` line (plus any field violations below it) for a failed call."""
    absent = no_server(error, args)
    if absent is not None:
        return f"error: {absent}"
    first, newline, rest = f"error: {error}".partition("\n")
    suggestion = closest_name(error.message)
    if suggestion is not None:
        first += f" (did you mean {suggestion}?)"
    return first + newline + rest


def missing_file(error: FileNotFoundError) -> str:
    """``file not found: PATH`` (``image not found`` for an image file)."""
    path = str(error.filename) if error.filename is not None else str(error)
    kind = "image" if path.lower().endswith((".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")) else "file"
    return f"{kind} not found: {path}"
