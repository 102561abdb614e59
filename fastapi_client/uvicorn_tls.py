"""uvicorn protocol that exposes the verified client certificate through the ASGI TLS extension.

    uvicorn.run(app, ssl_certfile=..., ssl_keyfile=..., ssl_ca_certs="ca.pem", ssl_cert_reqs=ssl.CERT_REQUIRED,
                http=TlsH11Protocol)

With it, ``AuthzMiddleware`` sends the certificate's URI SAN (else its DNS SAN, else its subject) as
``source.principal``, the value an ``mtls`` identity source matches. Only the h11 implementation is covered
(``http="h11"``).
"""

from __future__ import annotations

import ssl
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["TlsH11Protocol"]


def _tls_extension(transport: Any) -> dict[str, Any] | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    # The handshake already failed for a certificate that did not verify; no certificate means none offered.
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    return {"client_cert_chain": chain, "client_cert_name": None, "client_cert_error": None, "server_cert": None}


class TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, adding the ASGI TLS extension (the verified peer certificate) to each scope."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        extension = _tls_extension(transport)
        if extension is None:
            return
        app = self.app

        async def with_tls(scope: Scope, receive: Receive, send: Send) -> None:
            scope = dict(scope)
            scope["extensions"] = {**(scope.get("extensions") or {}), "tls": extension}
            await app(scope, receive, send)

        self.app = with_tls
