"""Messages too large for a channel, refused with what to do instead of gRPC's own words.

A request larger than the client's ``max_message_bytes`` is refused here before it is sent
(``check_request``); one larger than the server's limit, or a response larger than the client's, comes back
as RESOURCE_EXHAUSTED with gRPC's text ("Received message larger than max (N vs. M)"), which
``explain`` rewrites. Both say how large the message is, which limit it met, and how to raise the limits on
both sides; a method adds its own remedy (``hint``: send an ONNX model weightless, upload it to the model
repository).
"""

from __future__ import annotations

import re
from typing import Any

import grpc

from nnprobe.errors import NnprobeError

#: gRPC's message when a message is over a channel's limit.
GRPC_TOO_LARGE = re.compile(
    r"(?P<side>Sent|Received) message larger than max \((?P<size>\d+) vs\. (?P<limit>\d+)\)"
)
#: How to raise the limits, on both sides.
RAISE_LIMITS = (
    "raise the limit on both sides: the client's max_message_bytes (nnprobe --max-message-bytes) and the "
    "server's --max-message-bytes (NNPROBE_MAX_MESSAGE_BYTES)"
)


def too_large(size: int, limit: int, whose: str, hint: str = "") -> NnprobeError:
    """RESOURCE_EXHAUSTED for a message of ``size`` bytes over ``whose`` ``limit``, with the remedies."""
    remedy = f"{hint}, or {RAISE_LIMITS}" if hint else RAISE_LIMITS
    return NnprobeError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"the {whose} is {size} bytes, over the message limit of {limit} bytes; {remedy}",
    )


def check_request(request: Any, limit: int, hint: str = "") -> None:
    """Raise ``too_large`` when ``request`` (a protobuf message) would not fit this client's ``limit``."""
    size = request.ByteSize()
    if size > limit:
        raise too_large(size, limit, "request", hint)


def explain(error: NnprobeError, hint: str = "") -> NnprobeError:
    """``error`` itself, or, when it is gRPC's refusal of a message over a limit, ``too_large`` naming
    which message it was (a received request is the server's, a received response this client's)."""
    match = GRPC_TOO_LARGE.search(error.message) if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED else None
    if match is None:
        return error
    whose = (
        "request"
        if match.group("side") == "Sent"
        else "request (or the response) as the server (or this client) received it"
    )
    return too_large(int(match.group("size")), int(match.group("limit")), whose, hint)
