"""Exceptions as statuses: the one table from domain errors to gRPC status codes (``STATUS_OF``), the rich
status with a ``google.rpc.BadRequest`` detail for an error that names a request field, and texts shortened
to fit in the trailers.

Anything that is not a ``ServiceError`` is INTERNAL "internal error": its traceback is logged on the server,
never sent.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from nnprobe_services.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    Unimplemented,
)

log = logging.getLogger("nnprobe.requests")


#: Most UTF-8 bytes of a status message or field-violation text sent. Messages often quote the request (an
#: unknown job id, a word); message and details travel as trailing metadata (the message percent-encoded),
#: and a client drops trailers over its limit (8 KiB soft, 16 KiB hard by default) and reports
#: RESOURCE_EXHAUSTED instead of the real status.
MAX_DETAIL_BYTES = 1000
#: Most UTF-8 bytes of a field path in a field violation.
MAX_FIELD_BYTES = 256


def shorten(text: str, limit: int = MAX_DETAIL_BYTES) -> str:
    """``text``, cut to at most ``limit`` UTF-8 bytes with a note of its original length."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    note = f"... [{len(text)} characters in all]"
    return data[: limit - len(note)].decode("utf-8", errors="ignore") + note


#: The one table from domain errors to gRPC status codes (cores know nothing of gRPC). A subclass takes the
#: code of its nearest class here.
STATUS_OF: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Cancelled: grpc.StatusCode.CANCELLED,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
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
                        field=shorten(error.field, MAX_FIELD_BYTES), description=shorten(error.message)
                    )
                ]
            )
        )
        status.details.append(detail)
    return rpc_status.to_status(status)


async def abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    """End the call with ``error``'s status; anything but a ``ServiceError`` is INTERNAL "internal error",
    with the traceback logged for ``method``."""
    if isinstance(error, ServiceError):
        status = error_status(error)
        await context.abort(status.code, status.details, status.trailing_metadata)
    log.error("unhandled error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


__all__ = ["MAX_DETAIL_BYTES", "STATUS_OF", "abort", "error_status", "shorten", "status_code"]
