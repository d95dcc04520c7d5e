"""The one interceptor every server installs: exceptions become statuses, each request is logged.

The servers run on ``grpc.aio``: every wrapped handler is a coroutine (or an async generator for
server-streaming RPCs).

- ``ServiceError`` subclasses map to their status code through ``STATUS_OF``; a ``field`` becomes a
  ``google.rpc.BadRequest`` detail so clients can show which field is wrong.
- Anything else is INTERNAL "internal error"; the traceback is logged on the server, never sent.
- One log line per request: method, status, duration. A call whose client went away logs CANCELLED; one
  whose deadline passed logs DEADLINE_EXCEEDED.
- At most ``max_concurrent_rpcs`` calls are handled at once; one more is RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from nnprobe_services.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)
from nnprobe_services.server.metrics import ServiceMetrics

log = logging.getLogger("nnprobe.requests")


#: Most UTF-8 bytes of a status message or field-violation text sent. Messages often quote the request (an
#: unknown job id, a word); message and details travel as trailing metadata (the message percent-encoded),
#: and a client drops trailers over its limit (8 KiB soft, 16 KiB hard by default) and reports
#: RESOURCE_EXHAUSTED instead of the real status.
MAX_DETAIL_BYTES = 1000


def shorten(text: str, limit: int = MAX_DETAIL_BYTES) -> str:
    """``text``, cut to at most ``limit`` UTF-8 bytes with a note of its original length."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    note = f"... [{len(text)} characters in all]"
    return data[: limit - len(note)].decode("utf-8", errors="ignore") + note


#: The one table from domain errors to gRPC status codes (cores know nothing of gRPC).
STATUS_OF: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Cancelled: grpc.StatusCode.CANCELLED,
}


def status_code(error: ServiceError) -> grpc.StatusCode:
    """The status code of ``error`` (its nearest class in ``STATUS_OF``; INTERNAL for the bare base)."""
    if isinstance(error, Cancelled) and error.deadline:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


def error_status(error: ServiceError) -> grpc.Status:
    """The rich status for a ``ServiceError``; long texts are shortened to fit in the trailers."""
    status = status_pb2.Status(code=status_code(error).value[0], message=shorten(str(error)))
    if error.field:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=shorten(error.field, 256), description=shorten(error.message)
                    )
                ]
            )
        )
        status.details.append(detail)
    return rpc_status.to_status(status)


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    if isinstance(error, ServiceError):
        status = error_status(error)
        await context.abort(status.code, status.details, status.trailing_metadata)
    log.error("unhandled error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


#: Seconds before the server's deadline within which a client's cancellation counts as its deadline passing.
#: The client's deadline fires first (the server's copy starts when the request arrives), and its
#: cancellation reaches the server while the server's copy still has this transit time left.
DEADLINE_MARGIN_SECONDS = 0.25


def _ended_by_client(context: grpc.aio.ServicerContext) -> str:
    """DEADLINE_EXCEEDED when the call's deadline has passed (within ``DEADLINE_MARGIN_SECONDS``), else
    CANCELLED."""
    remaining = context.time_remaining()
    passed = remaining is not None and remaining <= DEADLINE_MARGIN_SECONDS
    return "DEADLINE_EXCEEDED" if passed else "CANCELLED"


class _Outcome:
    """Tracks one call from start to finish: in-flight gauge, final status, log line, metrics."""

    def __init__(
        self, context: grpc.aio.ServicerContext, method: str, metrics: ServiceMetrics | None
    ) -> None:
        self.context = context
        self.method = method
        self.metrics = metrics
        self.start = time.perf_counter()
        self.status = "OK"
        if metrics is not None:
            metrics.in_flight.labels(method=method).inc()
        log.debug("%s started", method, extra={"fields": {"method": method, "event": "started"}})

    def fail(self, error: BaseException) -> None:
        if isinstance(error, Cancelled) and not error.deadline:
            # The core stopped because its signal was set: say why from the call's own state.
            self.status = _ended_by_client(self.context)
        elif isinstance(error, ServiceError):
            self.status = status_code(error).name
        elif isinstance(error, asyncio.CancelledError):
            self.status = _ended_by_client(self.context)
        else:
            code = self.context.code()
            self.status = code.name if isinstance(code, grpc.StatusCode) else "INTERNAL"

    def finish(self) -> None:
        method = self.method
        seconds = time.perf_counter() - self.start
        if self.metrics is not None:
            self.metrics.in_flight.labels(method=method).dec()
            self.metrics.observe(method, self.status, seconds)
        millis = seconds * 1000
        log.info(
            "%s %s %.1fms",
            method,
            self.status,
            millis,
            extra={"fields": {"method": method, "status": self.status, "duration_ms": round(millis, 3)}},
        )


class _Limiter:
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


def _wrap_unary(
    behavior: Callable, method: str, metrics: ServiceMetrics | None, limiter: _Limiter
) -> Callable:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        outcome = _Outcome(context, method, metrics)
        admitted = limiter.acquire()
        try:
            if not admitted:
                raise limiter.busy()
            return await behavior(request, context)
        except grpc.aio.AbortError:
            code = context.code()
            outcome.status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        except asyncio.CancelledError as error:
            outcome.fail(error)
            raise
        except Exception as error:
            outcome.fail(error)
            await _abort(context, error, method)
        finally:
            if admitted:
                limiter.release()
            outcome.finish()

    return handler


def _wrap_stream(
    behavior: Callable, method: str, metrics: ServiceMetrics | None, limiter: _Limiter
) -> Callable:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        outcome = _Outcome(context, method, metrics)
        admitted = limiter.acquire()
        try:
            if not admitted:
                raise limiter.busy()
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            code = context.code()
            outcome.status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            raise
        except (asyncio.CancelledError, GeneratorExit) as error:
            outcome.fail(asyncio.CancelledError() if isinstance(error, GeneratorExit) else error)
            raise
        except Exception as error:
            outcome.fail(error)
            await _abort(context, error, method)
        finally:
            if admitted:
                limiter.release()
            outcome.finish()

    return handler


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAVAILABLE with ``message``."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)

    async def refuse_stream(_request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        yield  # pragma: no cover - makes this an async generator like the handler it replaces

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **kwargs)


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Exception -> status mapping and per-request logging for every RPC except health/reflection."""

    QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

    def __init__(self, metrics: ServiceMetrics | None = None, max_concurrent_rpcs: int | None = None) -> None:
        self.metrics = metrics
        self.limiter = _Limiter(max_concurrent_rpcs)
        #: Set when the server starts shutting down: new calls get UNAVAILABLE (clients retry elsewhere).
        self.draining = False

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self.QUIET_PREFIXES):
            return handler
        if self.draining:
            return _refusal(handler, "the server is shutting down; retry on another replica or after restart")
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method, self.metrics, self.limiter),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method, self.metrics, self.limiter),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, method, self.metrics, self.limiter),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream, method, self.metrics, self.limiter),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


__all__ = ["STATUS_OF", "StatusInterceptor", "error_status", "status_code"]
