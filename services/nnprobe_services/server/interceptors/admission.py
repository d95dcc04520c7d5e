"""Admission: at most ``max_concurrent_rpcs`` calls are handled at once (one more is RESOURCE_EXHAUSTED),
and a draining server refuses new calls with UNAVAILABLE so that clients retry elsewhere."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc

from nnprobe_services.errors import ResourceExhausted
from nnprobe_services.server.interceptors.handlers import rebuild

#: What a draining server answers a new call.
DRAINING_MESSAGE = "the server is shutting down; retry on another replica or after restart"


class Limiter:
    """Counts the calls being handled; refuses one more than ``limit`` (None: no limit).

    A call counts from its handler's start to its return. This bounds open calls (idle streams included);
    the compute pool bounds the work separately.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.limit is not None and self.count >= self.limit:
                return False
            self.count += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.count -= 1

    def busy(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"the server is busy: {self.limit} calls are open, its limit (max_concurrent_rpcs); retry later"
        )


def refusal(handler: grpc.RpcMethodHandler, message: str = DRAINING_MESSAGE) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAVAILABLE with ``message`` (no log line,
    no metrics)."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        yield  # pragma: no cover - makes this an async generator like the handler it replaces

    # The request is refused whatever its bytes are: they are not parsed.
    return rebuild(handler, refuse, refuse_stream, _ignore_request)


def _ignore_request(_data: bytes) -> None:
    return None


__all__ = ["DRAINING_MESSAGE", "Limiter", "refusal"]
