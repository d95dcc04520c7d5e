"""Method handlers of the same shape: the other interceptor modules replace a handler's behaviour (and its
request deserializer) and keep its kind (unary or streaming request, unary or streaming response)."""

from __future__ import annotations

from collections.abc import Callable

import grpc


def rebuild(
    handler: grpc.RpcMethodHandler,
    unary: Callable,
    stream: Callable,
    deserialize: Callable | None,
) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s shape: ``unary`` answers one response, ``stream`` a response stream."""
    kwargs = {"request_deserializer": deserialize, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(stream, **kwargs)


def behavior(handler: grpc.RpcMethodHandler) -> Callable:
    """The servicer's function that ``handler`` calls."""
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


__all__ = ["behavior", "rebuild"]
