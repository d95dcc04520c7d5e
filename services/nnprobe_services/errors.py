"""Domain exceptions raised by every core and servicer. No gRPC here: the status interceptor maps each class
to a status code through one table (``nnprobe_services.server.interceptors.status.STATUS_OF``); a subclass
takes the code of its nearest class there, so every exception that can end a request derives from one of
the classes below (a feature's own errors, such as the batcher's ``QueueFull``, subclass them).

Each error carries a human message and, when one request field is at fault, that field's path (``images[2]``,
``config.learning_rate``); the field becomes a ``google.rpc.BadRequest`` field violation on the wire.

Both spellings are accepted: ``InvalidArgument("must be > 0", field="eps")`` and
``InvalidArgument("eps", "must be > 0")`` (field first, as in ``google.rpc.BadRequest``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class ServiceError(Exception):
    """Base class of every error a request can end with. ``field`` names the request field at fault."""

    def __init__(self, *args: str, field: str | None = None) -> None:
        if len(args) == 2 and field is None:
            field, message = args
        elif len(args) == 1:
            (message,) = args
        else:
            raise TypeError("ServiceError takes (message, field=...) or (field, message)")
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(ServiceError):
    """The request is malformed or out of range (INVALID_ARGUMENT)."""


class NotFound(ServiceError):
    """A named thing (model, job, corpus, word) does not exist (NOT_FOUND)."""


class FailedPrecondition(ServiceError):
    """The request is valid but the server is not in a state to run it: missing weights, job state, a graph
    that cannot be analysed (FAILED_PRECONDITION)."""


class AlreadyExists(FailedPrecondition):
    """The thing a request creates exists already, with other contents (ALREADY_EXISTS): a model name taken
    with another config, a version number taken. A kind of ``FailedPrecondition``, so code that catches
    that keeps working; the status table gives it its own code."""


class ResourceExhausted(ServiceError):
    """The request asks for more than the configured limits allow, or the server is full
    (RESOURCE_EXHAUSTED)."""


class Unavailable(ServiceError):
    """A helper the request needs (a worker process, a peer server) is not reachable now (UNAVAILABLE)."""


class Unimplemented(ServiceError):
    """The server does not offer this operation (UNIMPLEMENTED): an optional part of a protocol."""


class Cancelled(ServiceError):
    """The one cancellation type: the client went away, its deadline passed, or the server is shutting down,
    and the work stopped at its next check (CANCELLED, or DEADLINE_EXCEEDED when ``deadline`` is true)."""

    def __init__(
        self, *args: str, field: str | None = None, deadline: bool = False, done: int | None = None
    ) -> None:
        super().__init__(*(args or ("stopped",)), field=field)
        #: True when the request's deadline passed (DEADLINE_EXCEEDED rather than CANCELLED).
        self.deadline = deadline
        #: How many steps (iterations, units, permutations) were complete when the work stopped, if known.
        self.done = done


class StopSignal:
    """A thread-safe flag that long-running core loops poll between steps: ``stop()`` (or ``stop.is_set()``)
    answers whether the work should end; ``check(where)`` raises ``Cancelled`` when it should.

    The server sets it when the client cancels, the deadline passes or the server drains; cores never need to
    know which. Calling the signal is the same as ``is_set()``, so it fits any ``should_stop`` parameter.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = "stopped"
        self.deadline = False

    def set(self, reason: str = "stopped", *, deadline: bool = False) -> None:
        """Ask the work to stop; the first reason given is kept."""
        if not self._event.is_set():
            self.reason = reason
            self.deadline = deadline
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    __call__ = is_set

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def check(self, where: str = "") -> None:
        """Raise ``Cancelled`` (saying ``where`` the work stopped) when the signal is set."""
        if self._event.is_set():
            raise Cancelled(f"{self.reason}{': ' + where if where else ''}", deadline=self.deadline)


def never() -> bool:
    """A ``should_stop`` that never asks to stop (direct library use)."""
    return False


ShouldStop = Callable[[], bool]

__all__ = [
    "AlreadyExists",
    "Cancelled",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "ServiceError",
    "ShouldStop",
    "StopSignal",
    "Unavailable",
    "Unimplemented",
    "never",
]
