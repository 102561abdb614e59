"""``allowed_callers``: only client certificates carrying a listed URI or DNS SAN may call.

grpc has already verified the certificate against ``client_ca_file`` in the handshake; this interceptor reads the
verified peer's SANs from the call's auth context (grpc's ``peer_uri`` and ``peer_dns`` properties, one value per
SAN of that type) and refuses every RPC (health and reflection too) from a certificate none of whose SANs is listed.
The refusal is an RPC error (UNAUTHENTICATED without a certificate, PERMISSION_DENIED with another one), which Envoy
counts as an ext_authz error: never an allow.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

__all__ = ["AllowedCallers", "caller_sans"]

_SAN_KEYS = ("peer_uri", "peer_dns")


def caller_sans(auth: Mapping[str, Iterable[bytes]]) -> frozenset[str]:
    """The verified peer certificate's URI and DNS SANs (empty without a certificate)."""
    return frozenset(v.decode("utf-8", "replace") for key in _SAN_KEYS for v in auth.get(key, ()))


class AllowedCallers(grpc.aio.ServerInterceptor):
    """A server interceptor admitting only callers whose certificate names one of ``allowed``."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self._allowed = frozenset(allowed)

    async def _refuse(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        sans = caller_sans(context.auth_context())
        if not sans:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        if sans.isdisjoint(self._allowed):
            # The caller's own SANs only (never anything the caller did not present).
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "client certificate not in allowed_callers")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        refuse = self._refuse
        ser, de = handler.response_serializer, handler.request_deserializer
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(request: Any, context: Any) -> Any:
                await refuse(context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, de, ser)
        if handler.stream_unary is None:  # response-streaming: unary_stream or stream_stream
            streaming = handler.unary_stream or handler.stream_stream
            wrapped = _streaming(streaming, refuse)
            if handler.unary_stream is not None:
                return grpc.unary_stream_rpc_method_handler(wrapped, de, ser)
            return grpc.stream_stream_rpc_method_handler(wrapped, de, ser)
        stream_in = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            await refuse(context)
            return await stream_in(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, de, ser)


def _streaming(method: Any, refuse: Callable[[Any], Awaitable[None]]) -> Any:
    """Wrap a response-streaming handler in the same style: grpc.aio tells async generators (yield) from
    coroutines (``context.write``) by the function's kind, and a handler may not mix them."""
    if inspect.isasyncgenfunction(method):

        async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
            await refuse(context)
            async for item in method(request, context):
                yield item

        return generator

    async def coroutine(request: Any, context: Any) -> Any:
        await refuse(context)
        return await method(request, context)

    return coroutine
