"""The base of the asyncio clients: ``grpc.aio`` channels, deadlines, retries and errors, as the sync
clients' ``BaseClient`` has them."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nnprobe import message_limits
from nnprobe._client import USE_CLIENT_DEFAULT, UseClientDefault, _service_config, channel_targets
from nnprobe.config import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_TIMEOUT, TlsConfig, default_address
from nnprobe.errors import NnprobeError, Unavailable

T = TypeVar("T", bound=type)


class AsyncBaseClient:
    """Shared plumbing of the ``nnprobe.aio`` clients. Subclasses set ``SERVICE``, ``FULL_NAME`` and
    ``STUB`` (the generated stub class).

    The channels open on the first call, inside the running event loop (a notebook's, or the service's
    own), so a client may be built anywhere. An address list (``host1:port,host2:port``) gets one channel per
    entry and calls go round robin over them; UNAVAILABLE is retried per channel by the gRPC service config
    (the sync clients also fail a unary call over to the other entries).
    """

    SERVICE = ""
    FULL_NAME = ""
    STUB: Callable[[Any], Any]

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
        self.max_message_bytes = max_message_bytes
        self._targets = channel_targets(self.address)
        self._tls = tls
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()
        self._channels: list[grpc.aio.Channel] = []
        self._stubs: list[Any] = []
        self._turn = itertools.count()

    def _open(self) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", _service_config(self.FULL_NAME)),
        ]
        tls = self._tls
        self._channels = [
            grpc.aio.secure_channel(target, tls.credentials(), options=options)
            if tls is not None
            else grpc.aio.insecure_channel(target, options=options)
            for target in self._targets
        ]
        self._stubs = [type(self).STUB(channel) for channel in self._channels]

    @property
    def _stub(self) -> Any:
        """The service stub of the next channel in turn (opening the channels on first use)."""
        if not self._stubs:
            self._open()
        return self._stubs[next(self._turn) % len(self._stubs)]

    # -- lifecycle -----------------------------------------------------------------------------------
    async def close(self) -> None:
        """Close the channels (calls in flight are cancelled). A later call opens new ones."""
        channels, self._channels, self._stubs = self._channels, [], []
        await asyncio.gather(*(channel.close() for channel in channels))

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__}({self.address!r})"

    # -- calls ---------------------------------------------------------------------------------------
    def _deadline(self, timeout: float | UseClientDefault | None) -> float | None:
        return self.timeout if isinstance(timeout, UseClientDefault) else timeout

    async def _unary(
        self,
        method: Any,
        request: Any,
        timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT,
        *,
        hint: str = "",
    ) -> Any:
        """Await ``method``; a request over ``max_message_bytes`` is refused before it is sent and a refusal
        of a message too large says what to do (``hint``), as the sync clients do."""
        if hasattr(request, "ByteSize"):
            message_limits.check_request(request, self.max_message_bytes, hint)
        try:
            return await method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as error:
            raise message_limits.explain(NnprobeError.from_rpc_error(error), hint) from error

    async def _stream(
        self, method: Any, request: Any, timeout: float | UseClientDefault | None = USE_CLIENT_DEFAULT
    ) -> AsyncIterator[Any]:
        if hasattr(request, "ByteSize"):
            message_limits.check_request(request, self.max_message_bytes)
        call = method(request, timeout=self._deadline(timeout), metadata=self._metadata)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as error:
            raise message_limits.explain(NnprobeError.from_rpc_error(error)) from error
        finally:
            call.cancel()

    async def health(self, *, timeout: float | None = 5.0) -> str:
        """The server's health status for this service: ``SERVING``, ``NOT_SERVING``, ..."""
        if not self._channels:
            self._open()
        stub = health_pb2_grpc.HealthStub(self._channels[next(self._turn) % len(self._channels)])
        request = health_pb2.HealthCheckRequest(service=self.FULL_NAME)
        response = await self._unary(stub.Check, request, timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Wait until every channel (every entry of an address list) connects, or raise
        ``nnprobe.Unavailable`` after ``timeout`` seconds."""
        if not self._channels:
            self._open()
        ready = asyncio.gather(*(channel.channel_ready() for channel in self._channels))
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError as error:
            raise Unavailable(f"no server answered at {self.address} within {timeout:g}s") from error


def documented_as(sync_class: type) -> Callable[[T], T]:
    """Give each public method of the decorated asyncio client that has no docstring the docstring of its
    twin on ``sync_class`` (the arguments, units, defaults and errors are the same)."""

    def apply(cls: T) -> T:
        for name in dir(cls):
            method = getattr(cls, name)
            twin = getattr(sync_class, name, None)
            if name.startswith("_") or not callable(method) or twin is None:
                continue
            if getattr(method, "__doc__", None) is None and twin.__doc__:
                doc = inspect.cleandoc(twin.__doc__)
                twin_name = f"nnprobe.{sync_class.__name__}.{name}"
                method.__doc__ = f"Asyncio twin of ``{twin_name}`` (await it).\n\n{doc}"
        return cls

    return apply
