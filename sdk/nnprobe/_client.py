"""The base every service client is built on: channel, deadlines, retries, errors."""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nnprobe import message_limits
from nnprobe._pool import ChannelPool
from nnprobe.api.common.v1 import common_pb2
from nnprobe.config import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT, TlsConfig, default_address
from nnprobe.errors import NnprobeError, Unavailable

#: The float dtypes a request may ask for (``None``: the server's default).
FLOAT_DTYPES = {
    None: common_pb2.DTYPE_UNSPECIFIED,
    "float32": common_pb2.DTYPE_FLOAT32,
    "float64": common_pb2.DTYPE_FLOAT64,
}


def choice(table: Mapping[Any, Any], value: Any, name: str) -> Any:
    """``table[value]``, or ``ValueError`` listing the accepted values of option ``name``."""
    try:
        return table[value]
    except KeyError:
        raise ValueError(
            f"{name} must be one of {[k for k in table if k is not None]}, not {value!r}"
        ) from None


class UseClientDefault:
    """The type of ``USE_CLIENT_DEFAULT``."""

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


#: A call's ``timeout`` default: use the client's deadline (``client.timeout``). ``timeout=None`` means no
#: deadline at all and a number is that many seconds, so the client's own default needs a value of its own.
USE_CLIENT_DEFAULT = UseClientDefault()


def _service_config(full_service_name: str) -> str:
    """Retry only on UNAVAILABLE (the server not reachable yet, or restarting)."""
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [
                {
                    "name": [{"service": full_service_name}, {"service": "grpc.health.v1.Health"}],
                    "retryPolicy": {
                        "maxAttempts": 4,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ],
        }
    )


def channel_targets(address: str) -> list[str]:
    """The gRPC target of every entry of ``address``: one for ``host:port``, ``dns:///host:port`` or any
    other gRPC target; one per entry of a comma-separated list ``host1:port,[::1]:port,...``, in order.

    Raises:
        ValueError: a list entry that is not ``host:port`` (IPv6 literals in brackets), or an empty list.
    """
    if "," not in address:
        return [address]
    targets = []
    for part in (p.strip() for p in address.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not (port.isascii() and port.isdigit()) or not host:
            raise ValueError(f"address list entries must be host:port, not {part!r}")
        if ":" in host.strip("[]"):  # an IPv6 literal
            try:
                ipaddress.IPv6Address(host.strip("[]"))
            except ValueError:
                raise ValueError(f"{part!r}: an IPv6 address goes in brackets, [::1]:50051") from None
            host = f"[{host.strip('[]')}]"
        targets.append(f"{host}:{port}")
    if not targets:
        raise ValueError(f"empty address list {address!r}")
    return targets


class BaseClient:
    """Shared plumbing. Subclasses set ``SERVICE`` (``attention``) and ``FULL_NAME`` and a stub."""

    SERVICE = ""
    FULL_NAME = ""

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        token: str | None = None,
        tls: TlsConfig | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address or default_address(self.SERVICE)
        self.timeout = timeout
        #: The largest message sent or received, in bytes (the channel's limits, both ways).
        self.max_message_bytes = max_message_bytes
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _service_config(self.FULL_NAME)),
        ]
        # One channel per entry: gRPC resolves each (any address family) and TLS checks each host's own name.
        self._channels = [
            grpc.secure_channel(target, tls.credentials(), options=options)
            if tls is not None
            else grpc.insecure_channel(target, options=options)
            for target in channel_targets(self.address)
        ]
        self._channel = self._channels[0] if len(self._channels) == 1 else ChannelPool(self._channels)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the channel. The client is unusable afterwards."""
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r})"

    # -- calls ---------------------------------------------------------------------------------------
    def _deadline(self, timeout: float | UseClientDefault | None) -> float | None:
        return self.timeout if isinstance(timeout, UseClientDefault) else timeout

    def _unary(
        self,
        method: Any,
        request: Any,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        *,
        hint: str = "",
    ) -> Any:
        """Call ``method``; a request over ``max_message_bytes`` is refused before it is sent, and every
        refusal of a message too large says what to do (``hint``: the method's own remedy)."""
        if hasattr(request, "ByteSize"):
            message_limits.check_request(request, self.max_message_bytes, hint)
        try:
            return method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise message_limits.explain(NnprobeError.from_rpc_error(error), hint) from error

    def _stream(
        self, method: Any, request: Any, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> Iterator[Any]:
        if hasattr(request, "ByteSize"):
            message_limits.check_request(request, self.max_message_bytes)
        call = method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as error:
            raise message_limits.explain(NnprobeError.from_rpc_error(error)) from error
        finally:
            call.cancel()

    def health(self, *, timeout: float | None = 5.0) -> str:
        """The server's health status for this service: ``SERVING``, ``NOT_SERVING``, ..."""
        request = health_pb2.HealthCheckRequest(service=self.FULL_NAME)
        response = self._unary(self._health.Check, request, timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel (every channel of an address list) connects, or raise
        ``nnprobe.Unavailable``."""
        deadline = time.monotonic() + timeout
        try:
            for channel in self._channels:  # every address of a list
                grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 0))
        except grpc.FutureTimeoutError as error:
            raise Unavailable(f"no server answered at {self.address} within {timeout:g}s") from error
