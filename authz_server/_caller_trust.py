"""The caller-trust rule: fields only the proxy may set are read only from callers who are authenticated.

``mtls`` reads ``attributes.source.principal`` and ``envoy_jwt_metadata`` reads ``metadata_context``: any client
that can reach the Check listener can write both. They are accepted only when the listener's callers are known:
it is on loopback, it requires client certificates, or ``server.caller_authentication: mesh`` says a service
mesh authenticates them. The Admin API (Explain, Invalidate) off loopback needs client certificates, full stop.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config, TlsConfig

__all__ = ["caller_trust_errors", "is_loopback", "plaintext_exposed"]


def is_loopback(listen: str) -> bool:
    """``HOST:PORT`` bound to a loopback address only (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def _client_certs(tls: TlsConfig | None) -> bool:
    return tls is not None and tls.client_ca_file is not None


def plaintext_exposed(config: Config) -> bool:
    """A plaintext Check listener off loopback that no mesh authenticates (warned about at start)."""
    server = config.server
    return server.tls is None and not is_loopback(server.listen) and server.caller_authentication is None


def caller_trust_errors(config: Config) -> list[tuple[str, str]]:
    """``(key, reason)`` for every identity source or listener the rule refuses."""
    server = config.server
    errors: list[tuple[str, str]] = []
    trusted = is_loopback(server.listen) or _client_certs(server.tls) or server.caller_authentication == "mesh"
    if not trusted:
        for i, entry in enumerate(config.identity):
            kind = "mtls" if entry.mtls is not None else "envoy_jwt_metadata" if entry.envoy_jwt_metadata else None
            if kind is not None:
                errors.append(
                    (
                        f"identity[{i}].{kind}",
                        f"reads fields only the proxy may set, but server.listen {server.listen} accepts any caller: "
                        "listen on loopback, require client certificates (server.tls.client_ca_file) or set "
                        "server.caller_authentication: mesh",
                    )
                )
    admin = server.admin_listen
    if admin is not None and not is_loopback(admin) and not _client_certs(server.admin_tls):
        errors.append(
            (
                "server.admin_tls",
                f"server.admin_listen {admin} is not loopback: the Admin API there needs admin_tls with client_ca_file",
            )
        )
    return errors
