"""Trust for the HTTPS upstreams (Gerrit, each IdP): which CA each one accepts, and Gerrit's client certificate.

Each upstream trusts only what is configured for it: ``gerrit.ca_file`` for Gerrit, a ``jwt`` source's ``ca_file``
for its issuer, otherwise the default store httpx uses (certifi's). A certificate that trust does not accept fails
the TLS handshake; the caller turns that into an outage of the lookup (503), never an allow.
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path

import certifi

from ._secrets import file_identity
from .errors import ConfigError

__all__ = ["ClientCertificateFiles", "upstream_tls"]

log = logging.getLogger("gerrit_authz.tls")


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


class ClientCertificateFiles:
    """The client certificate of an upstream context, loaded again when its files change (a rotated certificate
    is presented by the next new connection; open connections keep theirs).

    Looked at before each request, at most once per ``interval`` seconds. A pair that does not load (a file
    missing, the key not matching the certificate yet) is tried on a scratch context first, so the context in use
    never holds half of it: the previous pair stays until the files agree.
    """

    def __init__(self, ctx: ssl.SSLContext, cert_file: Path, key_file: Path, where: str, interval: float = 1.0) -> None:
        self._ctx = ctx
        self._files = (cert_file, key_file)
        self._where = where
        self._interval = interval
        self._stamps = tuple(file_identity(p) for p in self._files)
        self._next = time.monotonic() + interval
        self.reloads = 0

    async def before_request(self, request: object) -> None:
        """An httpx ``request`` event hook."""
        self.refresh()

    def refresh(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        stamps = tuple(file_identity(p) for p in self._files)
        if stamps == self._stamps:
            return False
        cert, key = (str(p) for p in self._files)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
            self._ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            log.warning("%s.client_cert_file: %s; keeping the previous certificate", self._where, _why(exc))
            return False
        self._stamps = stamps
        self.reloads += 1
        log.info("%s.client_cert_file: re-read", self._where)
        return True
