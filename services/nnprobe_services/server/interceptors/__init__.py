"""The one interceptor every server installs, composed of one module per job.

The servers run on ``grpc.aio``: every wrapped handler is a coroutine (or an async generator for
server-streaming RPCs). A call goes through the jobs in this order:

1. Health and reflection (``parsing.quiet``): only the parse guard; no log line, no metrics, no limit.
2. Drain (``admission.refusal``): once the server is shutting down, a new call is UNAVAILABLE before its
   bytes are parsed, logged or counted.
3. Every other call:

   a. ``observe.Outcome`` starts: the in-flight gauge goes up and a debug line says the call started.
   b. Admission (``admission.Limiter``): at most ``max_concurrent_rpcs`` calls at once; one more is
      RESOURCE_EXHAUSTED.
   c. Parsing (``parsing.checked``): bytes that did not parse as the request message are INVALID_ARGUMENT
      (for a client stream, naming the message: ``requests[3]``).
   d. The servicer's handler runs.
   e. Status (``status``): a ``ServiceError`` becomes its status code through the one table ``STATUS_OF``,
      with a ``google.rpc.BadRequest`` detail for its ``field``; anything else is INTERNAL "internal
      error", its traceback logged, never sent.
   f. The admission slot is released and ``observe.Outcome`` finishes: one log line per request (method,
      status, duration; CANCELLED when the client went away, DEADLINE_EXCEEDED when its deadline passed)
      and the request metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from nnprobe_services.server.interceptors.admission import Limiter, refusal
from nnprobe_services.server.interceptors.handlers import behavior as behavior_of
from nnprobe_services.server.interceptors.handlers import rebuild
from nnprobe_services.server.interceptors.observe import Outcome
from nnprobe_services.server.interceptors.parsing import checked, parsing, quiet
from nnprobe_services.server.interceptors.status import STATUS_OF, abort, error_status, status_code
from nnprobe_services.server.metrics import ServiceMetrics


def _wrap_unary(
    behavior: Callable, method: str, metrics: ServiceMetrics | None, limiter: Limiter, streaming: bool
) -> Callable:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
        outcome = Outcome(context, method, metrics)
        admitted = limiter.acquire()
        try:
            if not admitted:
                raise limiter.busy()
            return await behavior(checked(request, streaming), context)
        except grpc.aio.AbortError:
            outcome.aborted()
            raise
        except asyncio.CancelledError as error:
            outcome.fail(error)
            raise
        except Exception as error:
            outcome.fail(error)
            await abort(context, error, method)
        finally:
            if admitted:
                limiter.release()
            outcome.finish()

    return handler


def _wrap_stream(
    behavior: Callable, method: str, metrics: ServiceMetrics | None, limiter: Limiter, streaming: bool
) -> Callable:
    async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        outcome = Outcome(context, method, metrics)
        admitted = limiter.acquire()
        try:
            if not admitted:
                raise limiter.busy()
            async for response in behavior(checked(request, streaming), context):
                yield response
        except grpc.aio.AbortError:
            outcome.aborted()
            raise
        except (asyncio.CancelledError, GeneratorExit) as error:
            outcome.fail(asyncio.CancelledError() if isinstance(error, GeneratorExit) else error)
            raise
        except Exception as error:
            outcome.fail(error)
            await abort(context, error, method)
        finally:
            if admitted:
                limiter.release()
            outcome.finish()

    return handler


class StatusInterceptor(grpc.aio.ServerInterceptor):
    """Exception -> status mapping and per-request logging for every RPC except health/reflection."""

    QUIET_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

    def __init__(self, metrics: ServiceMetrics | None = None, max_concurrent_rpcs: int | None = None) -> None:
        self.metrics = metrics
        self.limiter = Limiter(max_concurrent_rpcs)
        #: Set when the server starts shutting down: new calls get UNAVAILABLE (clients retry elsewhere).
        self.draining = False

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        if method.startswith(self.QUIET_PREFIXES):
            return quiet(handler)
        if self.draining:
            return refusal(handler)
        args = (behavior_of(handler), method, self.metrics, self.limiter, handler.request_streaming)
        return rebuild(
            handler, _wrap_unary(*args), _wrap_stream(*args), parsing(handler.request_deserializer)
        )


__all__ = ["STATUS_OF", "StatusInterceptor", "error_status", "status_code"]
