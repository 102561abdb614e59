"""Trust for the HTTPS upstreams (Gerrit, each IdP): which CA each one accepts, and Gerrit's client certificate.

Each upstream trusts only what is configured for it: ``gerrit.ca_file`` for Gerrit, a ``jwt`` source's ``ca_file``
for its issuer, otherwise the default store httpx uses (certifi's). A certificate that trust does not accept fails
the TLS handshake; the caller turns that into an outage of the lookup (503), never an allow.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi

from .errors import ConfigError

__all__ = ["upstream_tls"]


def upstream_tls(
    where: str,
    *,
    verify: bool = True,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext | bool:
    """httpx's ``verify=``: ``True``/``False`` for the defaults, else a context for ``ca_file`` and a client
    certificate. Unreadable files are a :class:`ConfigError` naming ``{where}.ca_file`` and so on."""
    if ca_file is None and cert_file is None:
        return verify
    try:
        # ca_file replaces the default store (given a cafile, the stdlib loads nothing else).
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else certifi.where())
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([(f"{where}.ca_file", f"cannot load CA certificates: {_why(exc)}")]) from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        try:
            ctx.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
        except (OSError, ssl.SSLError) as exc:
            why = f"cannot load the client certificate: {_why(exc)}"
            raise ConfigError([(f"{where}.client_cert_file", why)]) from None
    return ctx


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):  # a subclass of OSError: asked first
        return str(exc.reason or exc)
    return exc.strerror or type(exc).__name__
