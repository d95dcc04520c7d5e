"""The exceptions the SDK raises: ``NnprobeError`` and one subclass per gRPC status.

Catch the subclass that names the failure (``except nnprobe.NotFound``), or ``NnprobeError`` for any
failed call; ``code`` is still the ``grpc.StatusCode``. Errors raised for a failed call come ``from`` the
``grpc.RpcError``. ``InvalidArgument`` (and any error whose status carried a ``google.rpc.BadRequest``
detail) lists the bad fields in ``field_violations``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: its path (``attention.x``) and what is wrong with it."""

    field: str
    description: str


class NnprobeError(Exception):
    """A call failed. ``code`` is the gRPC status code, ``message`` the server's description and
    ``field_violations`` the bad request fields (empty unless the server named some).

    ``NnprobeError(code, message)`` builds the subclass of ``code`` (``NnprobeError(NOT_FOUND, ...)`` is a
    ``NotFound``); a subclass takes only the message: ``NotFound("no job j-1")``.
    """

    #: The status of this class; the base class stands for UNKNOWN.
    CODE = grpc.StatusCode.UNKNOWN

    code: grpc.StatusCode
    message: str
    field_violations: list[FieldViolation]

    def __new__(cls, *args: Any, **kwargs: Any) -> NnprobeError:
        if cls is NnprobeError and args and isinstance(args[0], grpc.StatusCode):
            cls = _CLASSES.get(args[0], NnprobeError)
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        code, message, violations = self._arguments(*args, **kwargs)
        self.code = code
        self.message = message
        self.field_violations = list(violations)
        super().__init__(str(self))

    def _arguments(
        self,
        code: grpc.StatusCode | str,
        message: str | Iterable[FieldViolation] = "",
        field_violations: Iterable[FieldViolation] = (),
    ) -> tuple[grpc.StatusCode, str, Iterable[FieldViolation]]:
        """``(code, message[, field_violations])``; a subclass also takes ``(message[, violations])``."""
        if isinstance(code, grpc.StatusCode):
            return code, str(message), field_violations
        if type(self) is NnprobeError:
            raise TypeError("NnprobeError(code, message): the first argument is a grpc.StatusCode")
        if isinstance(message, str):  # (message) or (message, field_violations=...)
            return type(self).CODE, code, field_violations
        return type(self).CODE, code, message  # (message, field_violations)

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}"
        for v in self.field_violations:
            if f"{v.field}: {v.description}" not in self.message:
                text += f"\n  {v.field}: {v.description}"
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[object, ...]:
        return (NnprobeError, (self.code, self.message, self.field_violations))

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> NnprobeError:
        """The subclass of the call's status, with the ``google.rpc.BadRequest`` details decoded when present
        (sync ``grpc.RpcError`` and ``grpc.aio.AioRpcError`` alike)."""
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        return NnprobeError(code, message or "", field_violations(error))


def field_violations(error: grpc.RpcError) -> list[FieldViolation]:
    """The field violations of the ``google.rpc.BadRequest`` details in ``error``'s trailing metadata."""
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        return []
    violations: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return violations


class Cancelled(NnprobeError):
    """CANCELLED: the call was cancelled (by the client, or by the server shutting work down)."""

    CODE = grpc.StatusCode.CANCELLED


class Unknown(NnprobeError):
    """UNKNOWN: the server gave no usable status (or a stream ended without its result)."""

    CODE = grpc.StatusCode.UNKNOWN


class InvalidArgument(NnprobeError):
    """INVALID_ARGUMENT: a request field is wrong; ``field_violations`` names each one and why."""

    CODE = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(NnprobeError):
    """DEADLINE_EXCEEDED: the call's ``timeout`` passed before it finished."""

    CODE = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(NnprobeError):
    """NOT_FOUND: the model, job, corpus or version named does not exist."""

    CODE = grpc.StatusCode.NOT_FOUND


class AlreadyExists(NnprobeError):
    """ALREADY_EXISTS: the model version or job id is taken."""

    CODE = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(NnprobeError):
    """PERMISSION_DENIED: the token is valid but may not make this call."""

    CODE = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(NnprobeError):
    """RESOURCE_EXHAUSTED: the server's compute queue is full or a size limit was passed; retry later or
    ask for less."""

    CODE = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(NnprobeError):
    """FAILED_PRECONDITION: the request is valid but the state is not (a job not finished, a model
    unavailable)."""

    CODE = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(NnprobeError):
    """ABORTED: the work was interrupted by a concurrent change; retrying may succeed."""

    CODE = grpc.StatusCode.ABORTED


class OutOfRange(NnprobeError):
    """OUT_OF_RANGE: a value lies past the end of what exists."""

    CODE = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(NnprobeError):
    """UNIMPLEMENTED: the server does not offer this call (an older server, or the wrong service)."""

    CODE = grpc.StatusCode.UNIMPLEMENTED


class Internal(NnprobeError):
    """INTERNAL: the server failed; its log holds the traceback."""

    CODE = grpc.StatusCode.INTERNAL


class Unavailable(NnprobeError):
    """UNAVAILABLE: no server answered (not started, restarting, or unreachable); calls were retried."""

    CODE = grpc.StatusCode.UNAVAILABLE


class DataLoss(NnprobeError):
    """DATA_LOSS: stored data is corrupt."""

    CODE = grpc.StatusCode.DATA_LOSS


class Unauthenticated(NnprobeError):
    """UNAUTHENTICATED: no token, or a token the server does not accept."""

    CODE = grpc.StatusCode.UNAUTHENTICATED


#: The exception class of every status code but OK.
ERROR_CLASSES: dict[grpc.StatusCode, type[NnprobeError]] = {
    c.CODE: c
    for c in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
_CLASSES = ERROR_CLASSES
