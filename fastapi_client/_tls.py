"""The verified client certificate of the ASGI connection, as the principal Envoy would report.

ASGI servers that implement the TLS extension put ``scope["extensions"]["tls"]`` with ``client_cert_chain``
(PEM, leaf first) and ``client_cert_error`` (``None`` when the certificate verified). uvicorn does not, so
``fastapi_client.uvicorn_tls.TlsH11Protocol`` adds it for connections uvicorn's ``ssl`` verified (run uvicorn
with ``ssl_ca_certs`` and ``ssl_cert_reqs=ssl.CERT_REQUIRED``; ``http=TlsH11Protocol``). Without the
extension the middleware sends no principal, so an ``mtls`` identity is never taken from a certificate nobody verified.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography import x509

__all__ = ["client_cert_principal"]


def _principal(cert: x509.Certificate) -> str:
    # Envoy's source.principal (ext_authz's getPrincipal): the first URI SAN, else the first DNS SAN, else the
    # subject (RFC 2253 order). Reading it another way would let one certificate be two identities.
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return cert.subject.rfc4514_string()
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if uris:
        return uris[0]
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else cert.subject.rfc4514_string()


def client_cert_principal(scope: Mapping[str, Any]) -> str:
    """The verified client certificate's principal as Envoy reports it (URI SAN, else DNS SAN, else subject),
    or ``""`` when the server exposes none."""
    tls = (scope.get("extensions") or {}).get("tls")
    if not isinstance(tls, Mapping) or tls.get("client_cert_error") is not None:
        return ""
    chain = tls.get("client_cert_chain") or ()
    if not chain or not isinstance(chain[0], str):
        return ""
    try:
        return _principal(x509.load_pem_x509_certificate(chain[0].encode("ascii")))
    except ValueError:
        return ""
