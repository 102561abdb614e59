"""Trust for the HTTPS upstreams (Gerrit, each IdP): which CA each one accepts, and Gerrit's client certificate,
followed as their files change.

Each upstream trusts only what is configured for it: ``gerrit.ca_file`` for Gerrit, a ``jwt`` source's ``ca_file``
for its issuer, otherwise the default store httpx uses (certifi's). A certificate that trust does not accept fails
the TLS handshake; the caller turns that into an outage of the lookup (503), never an allow.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import certifi
import httpx

from ._secrets import file_identity
from .errors import ConfigError

__all__ = ["RotatingTransport", "TrustFiles", "upstream_tls"]

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


class TrustFiles:
    """An upstream's TLS trust and client certificate, built again when one of its files changes.

    A CA bundle can lose a CA as well as gain one, so a change builds a whole new context rather than adding to the
    one in use; :class:`RotatingTransport` opens new connections with it (open ones keep theirs until they close).
    The files are looked at, before a request, at most once per ``interval`` seconds. Files that do not load (a
    bundle being written, a key that does not match its certificate yet) leave the previous context in use, with
    a warning, until they do.
    """

    def __init__(
        self,
        where: str,
        *,
        verify: bool = True,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._where = where
        self._verify = verify
        self._ca_file, self._cert_file, self._key_file = ca_file, cert_file, key_file
        self._files = tuple(p for p in (ca_file, cert_file, key_file) if p is not None)
        self._interval = interval
        self._clock = clock
        self._stamps = self._look()
        self.context = self._build()
        self._next = clock() + interval
        self.reloads = 0

    def _look(self) -> tuple[object, ...]:
        return tuple(file_identity(p) for p in self._files)

    def _build(self) -> ssl.SSLContext:
        context = upstream_tls(
            self._where, verify=self._verify, ca_file=self._ca_file, cert_file=self._cert_file, key_file=self._key_file
        )
        if not isinstance(context, ssl.SSLContext):
            raise ValueError(f"{self._where}: no trust files to follow")
        return context

    def refresh(self) -> bool:
        """Build a new :attr:`context` if a file changed (and loads); True when it did."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self._interval
        stamps = self._look()
        if stamps == self._stamps:
            return False
        try:
            context = self._build()
        except ConfigError as exc:
            self._stamps = stamps  # warned once per change of the files, not at every look
            key, why = exc.errors[0]
            log.warning("%s: %s; keeping the previous trust", key, why)
            return False
        self.context, self._stamps = context, stamps
        self.reloads += 1
        log.info("%s: trust files re-read", self._where)
        return True


class RotatingTransport(httpx.AsyncBaseTransport):
    """httpx's transport for one upstream, replaced when its :class:`TrustFiles` change: every request after the
    change goes over connections made with the new trust. A replaced transport finishes what it was doing and is
    closed ``retire_after`` seconds later (longer than any request to an upstream may take)."""

    def __init__(self, trust: TrustFiles, limits: httpx.Limits, *, retire_after: float = 120.0) -> None:
        self._trust = trust
        self._limits = limits
        self._retire_after = retire_after
        self._transport = self._new()
        self._retired: list[tuple[float, httpx.AsyncHTTPTransport]] = []

    def _new(self) -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(verify=self._trust.context, limits=self._limits)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._trust.refresh():
            now = time.monotonic()
            self._retired.append((now, self._transport))
            self._transport = self._new()
            done = [t for retired_at, t in self._retired if now - retired_at >= self._retire_after]
            self._retired = [(at, t) for at, t in self._retired if now - at < self._retire_after]
            for old in done:
                await old.aclose()
        return await self._transport.handle_async_request(request)

    async def aclose(self) -> None:
        for _, old in self._retired:
            await old.aclose()
        self._retired.clear()
        await self._transport.aclose()
