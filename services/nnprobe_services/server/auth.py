"""Bearer-token authentication: every RPC but the health service needs ``authorization: Bearer <token>``."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

import grpc

OPEN_PREFIXES = ("/grpc.health.v1.",)


def _token_ok(header: str | None, tokens: Sequence[bytes]) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    given = header[len("Bearer ") :].strip().encode()
    ok = False
    for token in tokens:  # compare with every token, in constant time, to leak nothing by timing
        ok |= hmac.compare_digest(given, token)
    return ok


def _rejection(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def deny(_request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(_request, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator like the handler it replaces

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without an accepted bearer token with UNAUTHENTICATED. Tokens are never logged."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ValueError("at least one token is needed")
        self._tokens = [t.encode() for t in tokens]

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization")
        if _token_ok(header if isinstance(header, str) else None, self._tokens):
            return handler
        reason = "missing bearer token" if not header else "invalid bearer token"
        return _rejection(handler, f"{reason}: send the metadata 'authorization: Bearer <token>'")
