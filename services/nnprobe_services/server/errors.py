"""Exceptions the core and servicers raise; the interceptor turns each into one gRPC status."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """Base class. ``field`` names the request field at fault, when there is one."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(ServiceError):
    """The request is malformed or out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """A named thing (model, job, corpus, word) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    """The request is valid but the server is not in a state to run it (missing weights, job state)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """The request asks for more than the configured limits allow."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(ServiceError):
    """The client went away or its deadline passed while the work ran."""

    code = grpc.StatusCode.CANCELLED
