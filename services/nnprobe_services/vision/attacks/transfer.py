"""Transfer checks against other VisionService servers: which addresses are acceptable, how long one remote
call may take and how it is retried. The calls themselves are made by ``remote`` (on the event loop); what an
answer means is ``verdicts``'.

A server behind a transfer address may be restarting. The channel then waits for it (at most the configured
``transfer_connect_timeout``), reconnecting with gRPC's own exponential backoff with jitter, bounded by
``MAX_RECONNECT_BACKOFF_MS``; the ListModels and Classify calls are retried by gRPC's retry policy (service
config) on UNAVAILABLE only, which is safe since both are read-only. All stay within the call's deadline,
which ends ``ANSWER_MARGIN_SECONDS`` before the request's own so that the transfer's failure can still be
answered.
"""

from __future__ import annotations

import ipaddress
import json
import re

#: Most transfer models and addresses one request may name.
MAX_TARGETS = 8
#: Longest wait for one remote server's answer, within the request's own deadline.
REMOTE_TIMEOUT_SECONDS = 30.0
#: Time kept back from the request's remaining deadline to answer after a transfer fails.
ANSWER_MARGIN_SECONDS = 1.0
#: Reconnection backoff of a transfer channel: first wait and bound (gRPC adds jitter), in milliseconds.
INITIAL_RECONNECT_BACKOFF_MS = 100
MAX_RECONNECT_BACKOFF_MS = 2000
#: gRPC's retry policy of the transfer call (attempts include the first; gRPC allows at most 5).
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
_ADDRESS = re.compile(r"[A-Za-z0-9._:/\[\]%-]+")
#: gRPC target name schemes (https://grpc.github.io/grpc/core/md_doc_naming.html).
_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock")


def address_problem(address: str) -> str:
    """Why ``address`` cannot be a server address (empty when it can)."""
    if not address:
        return "is empty"
    if len(address) > 255:
        return f"is {len(address)} characters long; an address has at most 255"
    if not _ADDRESS.fullmatch(address):
        return f"{address[:64]!r} is not a host:port address"
    scheme, sep, rest = address.partition(":")
    if sep and rest and scheme in _SCHEMES:  # a gRPC target name (dns:///host:port, unix:path, ...)
        return ""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{address[:64]!r} is not a host:port address (a port in 1..65535 after the last ':')"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1] if host.endswith("]") else "")
        except ValueError:
            return f"{address[:64]!r}: the host in brackets is not an IPv6 address"
    elif ":" in host or "[" in host or "]" in host:
        return f"{address[:64]!r}: an IPv6 address goes in brackets, [::1]:50051"
    return ""


def call_timeout(remaining: float | None) -> float:
    """The deadline of one remote call, in seconds: what is left of the request's deadline (``remaining``
    seconds; None: none) less ``ANSWER_MARGIN_SECONDS``, at most ``REMOTE_TIMEOUT_SECONDS``, at least 1 ms."""
    if remaining is None:
        return REMOTE_TIMEOUT_SECONDS
    return max(min(remaining - ANSWER_MARGIN_SECONDS, REMOTE_TIMEOUT_SECONDS), 0.001)


def channel_options() -> list[tuple[str, object]]:
    """Options of a transfer channel: gRPC's retry policy for VisionService.ListModels and Classify on
    UNAVAILABLE and a bounded reconnection backoff."""
    service = "nnprobe.vision.v1.VisionService"
    config = {
        "methodConfig": [
            {
                "name": [{"service": service, "method": m} for m in ("ListModels", "Classify")],
                "retryPolicy": RETRY_POLICY,
            }
        ]
    }
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]


def unreachable(address: str, waited: float) -> str:
    """The transfer error of an address where no gRPC connection came up within ``waited`` seconds:
    nothing listens there, or what listens does not speak gRPC (HTTP/2)."""
    return (
        f"UNAVAILABLE: no gRPC server answered at {address} within {waited:.3g}s (nothing listening, or "
        "not a gRPC server)"
    )
