"""Parse guards: bytes that do not parse as the method's request message are INVALID_ARGUMENT (for a client
stream, naming the message: ``requests[3]``), on every method, health and reflection included.

gRPC itself would answer UNKNOWN with the exception's text, before any handler or log line: instead the
deserializer answers an ``Undecodable`` and the handler raises once it reads it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from nnprobe_services.errors import InvalidArgument
from nnprobe_services.server.interceptors.handlers import behavior as behavior_of
from nnprobe_services.server.interceptors.handlers import rebuild
from nnprobe_services.server.interceptors.status import abort


class Undecodable:
    """What a request deserializer gives for bytes that are not a valid message of its type."""

    def __init__(self, error: Exception) -> None:
        self.reason = str(error) or type(error).__name__

    def error(self, field: str | None = None) -> InvalidArgument:
        what = "the message" if field else "the request"
        return InvalidArgument(f"{what} could not be parsed: {self.reason}", field=field)


def parsing(deserialize: Callable | None) -> Callable | None:
    """``deserialize``, answering an ``Undecodable`` instead of raising."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # DecodeError, invalid UTF-8 in a string field, ...
            return Undecodable(error)

    return parse


def _parsed(request: Any) -> Any:
    """``request``, or INVALID_ARGUMENT when its bytes did not parse."""
    if isinstance(request, Undecodable):
        raise request.error()
    return request


async def _parsed_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The client's messages; INVALID_ARGUMENT naming ``requests[i]`` at the first that did not parse."""
    index = 0
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.error(f"requests[{index}]")
        yield request
        index += 1


def checked(request: Any, streaming: bool) -> Any:
    """The request (or, for a client stream, the messages) as the servicer reads it: INVALID_ARGUMENT where
    the bytes did not parse."""
    return _parsed_stream(request) if streaming else _parsed(request)


def quiet(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """Health and reflection as they are, but unparsable bytes are INVALID_ARGUMENT (no log line)."""
    behavior, streaming = behavior_of(handler), handler.request_streaming

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(checked(request, streaming), context)
        except InvalidArgument as error:
            await abort(context, error, "")

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(checked(request, streaming), context):
                yield response
        except InvalidArgument as error:
            await abort(context, error, "")

    # A response stream is an async generator or, as health's Watch, a coroutine that writes with
    # ``context.write``: the wrapper takes the same form.
    streams = stream if inspect.isasyncgenfunction(behavior) else unary
    return rebuild(handler, unary, streams, parsing(handler.request_deserializer))


__all__ = ["Undecodable", "checked", "parsing", "quiet"]
