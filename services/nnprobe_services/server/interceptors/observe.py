"""Watching each call: the status it ended with, one log line per request (method, status, duration), and
the request metrics (finished calls by status, latency, calls in flight).

A call whose client went away logs CANCELLED; one whose deadline passed logs DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from nnprobe_services.errors import Cancelled, ServiceError
from nnprobe_services.server.interceptors.status import status_code
from nnprobe_services.server.metrics import ServiceMetrics, protocol_of

log = logging.getLogger("nnprobe.requests")

#: Seconds before the server's deadline within which a client's cancellation counts as its deadline passing.
#: The client's deadline fires first (the server's copy starts when the request arrives), and its
#: cancellation reaches the server while the server's copy still has this transit time left.
DEADLINE_MARGIN_SECONDS = 0.25


def ended_by_client(context: grpc.aio.ServicerContext) -> str:
    """DEADLINE_EXCEEDED when the call's deadline has passed (within ``DEADLINE_MARGIN_SECONDS``), else
    CANCELLED."""
    remaining = context.time_remaining()
    passed = remaining is not None and remaining <= DEADLINE_MARGIN_SECONDS
    return "DEADLINE_EXCEEDED" if passed else "CANCELLED"


class Outcome:
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
            metrics.in_flight.labels(method=method, protocol=protocol_of(method)).inc()
        log.debug("%s started", method, extra={"fields": {"method": method, "event": "started"}})

    def aborted(self) -> None:
        """The handler ended the call itself (``context.abort``): its status is the context's code."""
        code = self.context.code()
        self.status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"

    def fail(self, error: BaseException) -> None:
        if isinstance(error, Cancelled) and not error.deadline:
            # The core stopped because its signal was set: say why from the call's own state.
            self.status = ended_by_client(self.context)
        elif isinstance(error, ServiceError):
            self.status = status_code(error).name
        elif isinstance(error, asyncio.CancelledError):
            self.status = ended_by_client(self.context)
        else:
            code = self.context.code()
            self.status = code.name if isinstance(code, grpc.StatusCode) else "INTERNAL"

    def finish(self) -> None:
        method = self.method
        seconds = time.perf_counter() - self.start
        if self.metrics is not None:
            self.metrics.in_flight.labels(method=method, protocol=protocol_of(method)).dec()
            self.metrics.observe(method, self.status, seconds)
        millis = seconds * 1000
        log.info(
            "%s %s %.1fms",
            method,
            self.status,
            millis,
            extra={"fields": {"method": method, "status": self.status, "duration_ms": round(millis, 3)}},
        )


__all__ = ["DEADLINE_MARGIN_SECONDS", "Outcome", "ended_by_client"]
