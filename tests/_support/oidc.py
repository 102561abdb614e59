"""OIDC test helpers: signing keys, forged tokens, a JWKS/discovery server the test controls, and a real OIDC
provider (the ``oidc-provider-mock`` package) run as a subprocess.

Both servers listen on 127.0.0.1 and speak real HTTP, so ``JwtVerifier`` is exercised end to end (discovery,
JWKS, key rotation) without any monkeypatching.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from _support.proc import free_port, stop_process

__all__ = [
    "JwksServer",
    "OidcProviderMock",
    "SigningKey",
    "b64url",
    "hs256_with_public_key",
    "make_claims",
    "unsigned_token",
]

_EC_CURVES: dict[str, Callable[[], ec.EllipticCurve]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64json(obj: Mapping[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


@dataclass
class SigningKey:
    """A private key that signs test tokens and publishes its public half as a JWK."""

    kid: str | None
    alg: str
    private_key: Any

    @classmethod
    def rsa(cls, kid: str | None = "rsa-1", alg: str = "RS256") -> SigningKey:
        return cls(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str | None = "ec-1", alg: str = "ES256") -> SigningKey:
        return cls(kid, alg, ec.generate_private_key(_EC_CURVES[alg]()))

    @classmethod
    def ed25519(cls, kid: str | None = "ed-1") -> SigningKey:
        return cls(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())

    def public_jwk(self, *, with_alg: bool = False, **extra: Any) -> dict[str, Any]:
        jwk: dict[str, Any] = get_default_algorithms()[self.alg].to_jwk(self.private_key.public_key(), as_dict=True)
        if self.kid is not None:
            jwk["kid"] = self.kid
        jwk["use"] = "sig"
        if with_alg:
            jwk["alg"] = self.alg
        jwk.update(extra)
        return jwk

    def public_pem(self) -> bytes:
        return bytes(
            self.private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        alg: str | None = None,
        kid: str | None = "",
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A JWT signed by this key; ``kid=""`` means this key's kid, ``kid=None`` leaves it out."""
        header: dict[str, Any] = dict(headers or {})
        chosen = self.kid if kid == "" else kid
        if chosen is not None:
            header["kid"] = chosen
        return jwt.encode(dict(claims), self.private_key, algorithm=alg or self.alg, headers=header)


def make_claims(
    issuer: str, audience: str | list[str], *, now: float, lifetime: float = 300, **extra: Any
) -> dict[str, Any]:
    """Standard claims valid from ``now`` for ``lifetime`` seconds; ``extra`` overrides (``None`` removes)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": "user-1",
        "email": "alice@example.com",
        "iat": int(now),
        "exp": int(now + lifetime),
    }
    for name, value in extra.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def unsigned_token(claims: Mapping[str, Any], **header: Any) -> str:
    """An ``alg: none`` token (empty signature)."""
    return f"{_b64json({'alg': 'none', 'typ': 'JWT', **header})}.{_b64json(claims)}."


def hs256_with_public_key(key: SigningKey, claims: Mapping[str, Any]) -> str:
    """The algorithm-confusion attack: HS256 keyed with the issuer's *public* key PEM (PyJWT refuses to build it)."""
    header = {"alg": "HS256", "typ": "JWT"}
    if key.kid is not None:
        header["kid"] = key.kid
    signing_input = f"{_b64json(header)}.{_b64json(claims)}"
    mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


@dataclass
class JwksServer:
    """Discovery + JWKS over real HTTP on 127.0.0.1; the test swaps keys and takes it down at will."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False
    requests: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def issuer(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return self.issuer + "/jwks"

    def set_keys(self, *keys: SigningKey, with_alg: bool = False) -> None:
        self.keys = [k.public_jwk(with_alg=with_alg) for k in keys]

    def count(self, path: str) -> int:
        return sum(1 for p in self.requests if p == path)

    def start(self) -> JwksServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(self.path)
                if owner.down:
                    self._send(503, {"error": "down"})
                elif self.path == "/.well-known/openid-configuration":
                    self._send(200, {"issuer": owner.issuer, "jwks_uri": owner.jwks_url})
                elif self.path == "/jwks":
                    self._send(200, {"keys": list(owner.keys)})
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, body: Mapping[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="jwks-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> JwksServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class OidcProviderMock:
    """The real OIDC provider from the ``oidc-provider-mock`` package (``python -m oidc_provider_mock``, served by
    uvicorn) on a free 127.0.0.1 port. Tokens come from its authorization-code flow, driven with httpx."""

    START_TIMEOUT_S = 30.0

    def __init__(
        self,
        users: list[dict[str, Any]] | None = None,
        *,
        token_max_age: int = 3600,
        port: int = 0,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.users = users or []
        # (certificate, key, CA): serve https:// with that certificate; clients here trust that CA.
        self.tls = tls
        self.token_max_age = token_max_age
        self.fixed_port = port  # 0: a free one (tests); the quickstart uses the example config's issuer port
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__; a pipe could fill and stall)

    @property
    def issuer(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def _verify(self) -> str | bool:
        return str(self.tls[2]) if self.tls else True

    def _command(self) -> list[str]:
        if self.tls is None:
            cmd = [sys.executable, "-m", "oidc_provider_mock", "--host", "127.0.0.1", "--port", str(self.port)]
            cmd += ["--token-max-age", str(self.token_max_age)]
            for user in self.users:
                cmd += ["--user-claims", json.dumps(user)]
            return cmd
        # The package's CLI has no TLS option: run its app under uvicorn with a certificate (the issuer it
        # publishes follows the request, so it is the https:// URL).
        script = (
            "import sys, json, datetime, uvicorn, oidc_provider_mock\n"
            "from oidc_provider_mock import User\n"
            "users = [User(sub=u.pop('sub'), claims=u) for u in json.loads(sys.argv[3])]\n"
            "app = oidc_provider_mock.app(user_claims=users, "
            "access_token_max_age=datetime.timedelta(seconds=int(sys.argv[4])))\n"
            "uvicorn.run(app, interface='wsgi', host='127.0.0.1', port=int(sys.argv[5]), log_config=None, "
            "ssl_certfile=sys.argv[1], ssl_keyfile=sys.argv[2])\n"
        )
        cert, key, _ = self.tls
        return [
            sys.executable,
            "-c",
            script,
            str(cert),
            str(key),
            json.dumps(self.users),
            str(self.token_max_age),
            str(self.port),
        ]

    def start(self) -> OidcProviderMock:
        for _ in range(3):  # the free port may be taken between probing and binding: retry on another
            self.port = self.fixed_port or free_port()
            cmd = self._command()
            self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return self
            self.close()
        self._log.seek(0)
        raise RuntimeError("oidc-provider-mock did not start:\n" + self._log.read().decode(errors="replace")[-4000:])

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        until = time.monotonic() + self.START_TIMEOUT_S
        while time.monotonic() < until:
            if self._proc.poll() is not None:
                return False
            try:
                url = self.issuer + "/.well-known/openid-configuration"
                if httpx.get(url, timeout=1, verify=self._verify).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return False

    def close(self) -> None:
        stop_process(self._proc)
        self._proc = None

    def __enter__(self) -> OidcProviderMock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._log.close()

    def tokens(self, *, client_id: str, sub: str, scope: str = "openid email profile") -> dict[str, Any]:
        """Run the authorization-code flow as ``sub`` and return the token endpoint's JSON (with ``id_token``)."""
        redirect_uri = "http://127.0.0.1/callback"
        state, nonce = secrets.token_urlsafe(8), secrets.token_urlsafe(8)
        with httpx.Client(base_url=self.issuer, follow_redirects=False, timeout=10, verify=self._verify) as client:
            # The consent form posts the chosen subject back to the authorization endpoint.
            params = {
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "response_type": "code",
                "scope": scope,
                "state": state,
                "nonce": nonce,
            }
            response = client.post("/oauth2/authorize", params=params, data={"sub": sub})
            if response.status_code != 302:
                raise RuntimeError(f"authorize answered {response.status_code}: {response.text[:500]}")
            location = httpx.URL(response.headers["location"])
            if location.params.get("state") != state or "code" not in location.params:
                raise RuntimeError(f"unexpected authorize redirect: {location}")
            response = client.post(
                "/oauth2/token",
                data={
                    "grant_type": "authorization_code",
                    "code": location.params["code"],
                    "redirect_uri": redirect_uri,
                    "client_id": client_id,
                    "client_secret": "any-secret",
                },
            )
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body
