"""Unit tests of JwtVerifier with an httpx.MockTransport playing the OIDC issuer and a fake clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from _support.oidc import SigningKey, b64url, hs256_with_public_key, make_claims, unsigned_token
from cryptography.hazmat.primitives.asymmetric import rsa

from authz_server._deadline import Deadline
from authz_server._identity.jwt import JwtVerifier
from authz_server.config import JwtConfig
from authz_server.errors import Unauthenticated, Unavailable

ISSUER = "https://issuer.example/realms/dev"
AUD = "gerrit-authz"
KEYS_PATH = "/realms/dev/protocol/openid-connect/certs"
DISCOVERY_PATH = "/realms/dev/.well-known/openid-configuration"

RSA = SigningKey.rsa("rsa-1")
EC = SigningKey.ec("ec-1")
ED = SigningKey.ed25519("ed-1")


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Issuer:
    """The issuer's discovery and JWKS endpoints, as an httpx transport; counts every request."""

    def __init__(self, *keys: SigningKey) -> None:
        self.jwks: list[Any] = [k.public_jwk() for k in keys]
        self.discovery: dict[str, Any] = {"issuer": ISSUER, "jwks_uri": "https://issuer.example" + KEYS_PATH}
        self.requests: list[str] = []
        self.down = False
        self.status = 200
        self.gate: asyncio.Event | None = None

    def set_keys(self, *keys: SigningKey) -> None:
        self.jwks = [k.public_jwk() for k in keys]

    def count(self, path: str = KEYS_PATH) -> int:
        return self.requests.count(path)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.status != 200:
            return httpx.Response(self.status, text="oops")
        if request.url.path == DISCOVERY_PATH:
            return httpx.Response(200, json=self.discovery)
        if request.url.path == KEYS_PATH:
            return httpx.Response(200, json={"keys": self.jwks})
        return httpx.Response(404)


MakeVerifier = Callable[..., JwtVerifier]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def issuer() -> Issuer:
    return Issuer(RSA, EC, ED)


@pytest.fixture
async def make_verifier(issuer: Issuer, clock: FakeClock) -> AsyncIterator[MakeVerifier]:
    clients: list[httpx.AsyncClient] = []

    def make(**overrides: Any) -> JwtVerifier:
        http = httpx.AsyncClient(transport=httpx.MockTransport(issuer.handle))
        clients.append(http)
        config = JwtConfig(**{"issuer": ISSUER, "audiences": [AUD, "other-aud"], **overrides})
        return JwtVerifier(config, http, clock=clock)

    yield make
    for http in clients:
        await http.aclose()


@pytest.fixture
def verifier(make_verifier: MakeVerifier) -> JwtVerifier:
    return make_verifier()


def claims(clock: FakeClock, **extra: Any) -> dict[str, Any]:
    return make_claims(ISSUER, AUD, now=clock.now, **extra)


def deadline() -> Deadline:
    return Deadline.after(5)


async def refused(verifier: JwtVerifier, token: str, reason: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token, deadline())
    exc = info.value
    assert exc.code == "invalid_token"
    assert exc.reason == reason
    # The credential never leaks into the error, its message or its chain.
    for text in (exc.reason, exc.detail, str(exc), repr(exc)):
        assert token not in text or not token
    assert exc.__cause__ is None
    return exc


# -- valid tokens ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (RSA, "RS256"),
        (RSA, "RS512"),
        (RSA, "PS256"),
        (EC, "ES256"),
        (SigningKey.ec("ec-384", "ES384"), "ES384"),
        (ED, "EdDSA"),
    ],
)
async def test_valid_tokens(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock, key: SigningKey, alg: str) -> None:
    issuer.set_keys(RSA, key)
    got = await verifier.verify(key.sign(claims(clock), alg=alg), deadline())
    assert got["sub"] == "user-1"
    assert got["email"] == "alice@example.com"
    assert got["iss"] == ISSUER


async def test_claims_are_read_only(verifier: JwtVerifier, clock: FakeClock) -> None:
    got = await verifier.verify(RSA.sign(claims(clock)), deadline())
    with pytest.raises(TypeError):
        got["email"] = "mallory@example.com"  # type: ignore[index]


async def test_second_audience_and_audience_list(verifier: JwtVerifier, clock: FakeClock) -> None:
    await verifier.verify(RSA.sign(claims(clock, aud="other-aud")), deadline())
    await verifier.verify(RSA.sign(claims(clock, aud=["unrelated", AUD])), deadline())


async def test_discovery_then_jwks(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    await verifier.verify(RSA.sign(claims(clock)), deadline())
    assert issuer.requests == [DISCOVERY_PATH, KEYS_PATH]


async def test_configured_jwks_url_skips_discovery(
    issuer: Issuer, make_verifier: MakeVerifier, clock: FakeClock
) -> None:
    verifier = make_verifier(jwks_url="https://issuer.example" + KEYS_PATH)
    await verifier.verify(EC.sign(claims(clock)), deadline())
    assert issuer.requests == [KEYS_PATH]


async def test_time_claims_within_leeway(verifier: JwtVerifier, clock: FakeClock) -> None:
    # leeway defaults to 30s: just-expired, almost-valid and slightly-future-iat tokens still pass
    await verifier.verify(RSA.sign(claims(clock, exp=int(clock.now) - 20)), deadline())
    await verifier.verify(RSA.sign(claims(clock, nbf=int(clock.now) + 20)), deadline())
    await verifier.verify(RSA.sign(claims(clock, iat=int(clock.now) + 20)), deadline())


# -- invalid tokens --------------------------------------------------------------------------------------------


async def test_expired(verifier: JwtVerifier, clock: FakeClock) -> None:
    await refused(verifier, RSA.sign(claims(clock, exp=int(clock.now) - 31)), "token expired")


async def test_not_yet_valid(verifier: JwtVerifier, clock: FakeClock) -> None:
    await refused(verifier, RSA.sign(claims(clock, nbf=int(clock.now) + 120)), "token not yet valid")


async def test_issued_in_the_future(verifier: JwtVerifier, clock: FakeClock) -> None:
    await refused(verifier, RSA.sign(claims(clock, iat=int(clock.now) + 120)), "token issued in the future")


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"aud": "someone-else"}, "wrong audience"),
        ({"aud": ["a", "b"]}, "wrong audience"),
        ({"iss": "https://evil.example"}, "wrong issuer"),
        ({"iss": ISSUER + "/"}, "wrong issuer"),
        ({"exp": None}, "missing claim exp"),
        ({"aud": None}, "missing claim aud"),
        ({"iss": None}, "missing claim iss"),
        ({"exp": "tomorrow"}, "claim exp is not a number"),
        ({"exp": True}, "claim exp is not a number"),
        ({"nbf": "now"}, "claim nbf is not a number"),
    ],
)
async def test_bad_claims(verifier: JwtVerifier, clock: FakeClock, extra: dict[str, Any], reason: str) -> None:
    await refused(verifier, EC.sign(claims(clock, **extra)), reason)


async def test_bad_signature(verifier: JwtVerifier, clock: FakeClock) -> None:
    head, _, sig = RSA.sign(claims(clock)).split(".")
    other = RSA.sign(claims(clock, sub="admin")).split(".")[1]
    await refused(verifier, f"{head}.{other}.{sig}", "bad signature")
    # signed by a different key that claims RSA's kid
    impostor = SigningKey.rsa("rsa-1")
    await refused(verifier, impostor.sign(claims(clock)), "bad signature")


async def test_alg_none(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    await refused(verifier, unsigned_token(claims(clock), kid="rsa-1"), "algorithm none not allowed")
    assert issuer.requests == []  # refused before any key lookup


async def test_hs256_signed_with_the_public_key(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    token = hs256_with_public_key(RSA, claims(clock))
    await refused(verifier, token, "algorithm HS256 not allowed")
    assert issuer.requests == []


async def test_algorithm_not_configured(make_verifier: MakeVerifier, clock: FakeClock) -> None:
    verifier = make_verifier(algorithms=["ES256"])
    await refused(verifier, RSA.sign(claims(clock)), "algorithm RS256 not allowed")
    await verifier.verify(EC.sign(claims(clock)), deadline())


async def test_key_must_fit_the_algorithm(verifier: JwtVerifier, clock: FakeClock) -> None:
    # An RSA-signed token that names the EC key, and an ES256 header pointing at the RSA key.
    await refused(verifier, RSA.sign(claims(clock), kid="ec-1"), "signing key does not fit algorithm RS256")
    await refused(verifier, EC.sign(claims(clock), kid="rsa-1"), "signing key does not fit algorithm ES256")


async def test_jwk_alg_pins_the_algorithm(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    issuer.jwks = [RSA.public_jwk(with_alg=True)]  # alg RS256
    await verifier.verify(RSA.sign(claims(clock)), deadline())
    await refused(verifier, RSA.sign(claims(clock), alg="PS256"), "signing key does not fit algorithm PS256")


async def test_crit_header_refused(verifier: JwtVerifier, clock: FakeClock) -> None:
    token = RSA.sign(claims(clock), headers={"crit": ["exp"], "exp": 1})
    await refused(verifier, token, "critical header extensions are not supported")


async def test_oversized_token(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    token = RSA.sign(claims(clock, padding="x" * 9000))
    await refused(verifier, token, "token too large")
    assert issuer.requests == []


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c.d",
        "abc.def.ghi",  # base64 but not JSON
        "..",
        "a b.c.d",
        "é.b.c",
        f"{b64url(b'[1, 2]')}.{b64url(b'{}')}.sig",  # header not an object
        f"{b64url(b'[' * 3000)}.{b64url(b'{}')}.sig",  # deeply nested header
        f"{b64url(json.dumps({'alg': 'RS256', 'kid': 7}).encode())}.{b64url(b'{}')}.sig",  # kid not a string
    ],
)
async def test_garbage(issuer: Issuer, verifier: JwtVerifier, token: str) -> None:
    await refused(verifier, token, "malformed token")
    assert issuer.requests == []


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b"\xff\xfe"])
async def test_validly_signed_garbage_payload(verifier: JwtVerifier, payload: bytes) -> None:
    token = pyjwt.api_jws.encode(payload, RSA.private_key, algorithm="RS256", headers={"kid": "rsa-1"})
    await refused(verifier, token, "malformed token")


async def test_odd_alg_value_is_not_echoed(verifier: JwtVerifier) -> None:
    header = b64url(json.dumps({"alg": "<script>" * 3}).encode())
    await refused(verifier, f"{header}.{b64url(b'{}')}.sig", "algorithm ? not allowed")


# -- kid handling ---------------------------------------------------------------------------------------------


async def test_token_without_kid_needs_a_single_key(
    issuer: Issuer, make_verifier: MakeVerifier, clock: FakeClock
) -> None:
    await refused(make_verifier(), RSA.sign(claims(clock), kid=None), "token has no kid, the issuer has several keys")
    issuer.jwks = [SigningKey(None, "RS256", RSA.private_key).public_jwk()]
    await make_verifier().verify(RSA.sign(claims(clock), kid=None), deadline())


async def test_unusable_keys_are_skipped(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    issuer.jwks = [
        "not a key",
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        RSA.public_jwk(use="enc", kid="enc-key"),
        RSA.public_jwk(key_ops=["encrypt"], kid="enc-ops"),
        {"kty": "EC", "crv": "P-192", "x": "AA", "y": "AA", "kid": "odd-curve"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "RSA", "kid": "hs-alg", "alg": "HS256", "n": "AQAB", "e": "AQAB"},
        EC.public_jwk(),
    ]
    await verifier.verify(EC.sign(claims(clock)), deadline())
    await refused(verifier, RSA.sign(claims(clock), kid="enc-key"), "unknown signing key")


async def test_jwks_with_private_parts_is_not_used(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    private = pyjwt.algorithms.get_default_algorithms()["ES256"].to_jwk(EC.private_key, as_dict=True)
    issuer.jwks = [{**private, "kid": "ec-1"}]
    with pytest.raises(Unavailable) as info:
        await verifier.verify(EC.sign(claims(clock)), deadline())
    assert info.value.code == "jwks_unavailable"


async def test_unknown_kid_refetches_and_finds_rotated_key(
    issuer: Issuer, verifier: JwtVerifier, clock: FakeClock
) -> None:
    await verifier.verify(RSA.sign(claims(clock)), deadline())
    rotated = SigningKey.rsa("rsa-2")
    issuer.set_keys(rotated)
    clock.advance(11)  # past jwks_min_refresh_interval (10s), well within jwks_ttl
    got = await verifier.verify(rotated.sign(claims(clock)), deadline())
    assert got["sub"] == "user-1"
    assert issuer.count() == 2
    assert issuer.count(DISCOVERY_PATH) == 1  # discovery is remembered


async def test_unknown_kid_flood_is_rate_limited(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    await verifier.verify(RSA.sign(claims(clock)), deadline())
    assert issuer.count() == 1
    clock.advance(1)  # within the 10s interval of the first fetch
    for i in range(50):
        await refused(verifier, RSA.sign(claims(clock), kid=f"random-{i}"), "unknown signing key")
    assert issuer.count() == 1
    clock.advance(10)
    for i in range(50):
        await refused(verifier, RSA.sign(claims(clock), kid=f"random-b{i}"), "unknown signing key")
        clock.advance(0.1)
    assert issuer.count() == 2  # exactly one refetch for this interval


async def test_concurrent_unknown_kids_share_one_fetch(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    await verifier.verify(RSA.sign(claims(clock)), deadline())
    clock.advance(60)
    rotated = SigningKey.ec("ec-2")
    issuer.set_keys(rotated)
    issuer.gate = asyncio.Event()
    tokens = [rotated.sign(claims(clock, sub=f"user-{i}")) for i in range(20)]
    tasks = [asyncio.create_task(verifier.verify(t, deadline())) for t in tokens]
    await asyncio.sleep(0.05)
    assert issuer.count() == 2  # one refetch in flight, everyone else waits on it
    issuer.gate.set()
    results = await asyncio.gather(*tasks)
    assert sorted(r["sub"] for r in results) == sorted(f"user-{i}" for i in range(20))
    assert issuer.count() == 2


async def test_concurrent_first_use_shares_one_fetch(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    issuer.gate = asyncio.Event()
    tasks = [asyncio.create_task(verifier.verify(ED.sign(claims(clock, sub=f"u{i}")), deadline())) for i in range(10)]
    await asyncio.sleep(0.05)
    issuer.gate.set()
    await asyncio.gather(*tasks)
    assert issuer.requests == [DISCOVERY_PATH, KEYS_PATH]


# -- issuer outages -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["down", "http-500", "not-json", "no-keys", "issuer-mismatch", "no-jwks-uri"])
async def test_issuer_down_at_first_use(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock, failure: str) -> None:
    if failure == "down":
        issuer.down = True
    elif failure == "http-500":
        issuer.status = 500
    elif failure == "not-json":
        issuer.discovery = ["not", "an", "object"]  # type: ignore[assignment]
    elif failure == "no-keys":
        issuer.jwks = []
    elif failure == "issuer-mismatch":
        issuer.discovery["issuer"] = "https://evil.example"
    else:
        del issuer.discovery["jwks_uri"]
    token = RSA.sign(claims(clock))
    with pytest.raises(Unavailable) as info:
        await verifier.verify(token, deadline())
    assert info.value.code == "jwks_unavailable"
    assert token not in str(info.value)


async def test_issuer_down_at_first_use_is_retried_within_a_second(
    issuer: Issuer, verifier: JwtVerifier, clock: FakeClock
) -> None:
    issuer.down = True
    token = RSA.sign(claims(clock))
    with pytest.raises(Unavailable):
        await verifier.verify(token, deadline())
    issuer.down = False
    for _ in range(20):  # a failing issuer is not retried on every request...
        with pytest.raises(Unavailable):
            await verifier.verify(token, deadline())
        clock.advance(0.04)
    assert len(issuer.requests) == 1
    clock.advance(0.25)  # ...but without any key, at least once a second (not once per jwks_min_refresh_interval)
    await verifier.verify(token, deadline())
    assert issuer.requests[-2:] == [DISCOVERY_PATH, KEYS_PATH]


async def test_issuer_down_later_keeps_cached_keys(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    await verifier.verify(RSA.sign(claims(clock)), deadline())
    issuer.down = True
    clock.advance(601)  # keys are past jwks_ttl: a refresh is attempted, fails, cached keys are used
    before = len(issuer.requests)
    got = await verifier.verify(EC.sign(claims(clock, sub="later")), deadline())
    assert got["sub"] == "later"
    assert len(issuer.requests) == before + 1
    clock.advance(11)  # an unknown kid while the issuer is down is just unknown
    await refused(verifier, SigningKey.rsa("new").sign(claims(clock)), "unknown signing key")


async def test_keys_refetched_after_ttl(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    await verifier.verify(RSA.sign(claims(clock)), deadline())
    issuer.set_keys(EC)  # RSA retired
    clock.advance(300)
    await verifier.verify(RSA.sign(claims(clock)), deadline())  # still within jwks_ttl
    clock.advance(301)
    await refused(verifier, RSA.sign(claims(clock)), "unknown signing key")
    assert issuer.count() == 2


async def test_spent_deadline_without_keys_is_unavailable(
    issuer: Issuer, verifier: JwtVerifier, clock: FakeClock
) -> None:
    with pytest.raises(Unavailable) as info:
        await verifier.verify(RSA.sign(claims(clock)), Deadline.after(-1))
    assert info.value.code == "jwks_unavailable"
    assert issuer.requests == []


async def test_slow_issuer_bounded_by_deadline(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    issuer.gate = asyncio.Event()  # never answers
    with pytest.raises(Unavailable):
        await verifier.verify(RSA.sign(claims(clock)), Deadline.after(0.1))
    issuer.gate.set()


# -- claims cache ---------------------------------------------------------------------------------------------


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts PyJWT decode calls (the crypto), still running the real thing."""
    calls: list[str] = []
    real = pyjwt.decode

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("decode")
        return real(*args, **kwargs)

    monkeypatch.setattr(pyjwt, "decode", spy)
    return calls


async def test_claims_cache_skips_crypto(
    issuer: Issuer, make_verifier: MakeVerifier, clock: FakeClock, decode_calls: list[str]
) -> None:
    verifier = make_verifier(jwks_ttl=60)
    token = RSA.sign(claims(clock))
    first = await verifier.verify(token, deadline())
    assert decode_calls == ["decode"]
    issuer.down = True
    clock.advance(100)  # keys are stale and the issuer is down: a cache hit needs neither
    requests = len(issuer.requests)
    for _ in range(100):
        assert await verifier.verify(token, deadline()) is first
    assert decode_calls == ["decode"]
    assert len(issuer.requests) == requests


async def test_expired_cached_token_is_refused(
    verifier: JwtVerifier, clock: FakeClock, decode_calls: list[str]
) -> None:
    token = RSA.sign(claims(clock, lifetime=60))
    await verifier.verify(token, deadline())
    clock.advance(60 + 29)  # within leeway: still the cached answer
    await verifier.verify(token, deadline())
    assert decode_calls == ["decode"]
    clock.advance(2)
    await refused(verifier, token, "token expired")
    await refused(verifier, token, "token expired")


async def test_refused_tokens_are_not_cached(verifier: JwtVerifier, clock: FakeClock, decode_calls: list[str]) -> None:
    token = RSA.sign(claims(clock, aud="someone-else"))
    await refused(verifier, token, "wrong audience")
    await refused(verifier, token, "wrong audience")
    assert decode_calls == ["decode", "decode"]


async def test_claims_cache_is_bounded(issuer: Issuer, clock: FakeClock, decode_calls: list[str]) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(issuer.handle)) as http:
        verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audiences=[AUD]), http, clock=clock, claims_cache_size=3)
        tokens = [EC.sign(claims(clock, sub=f"u{i}")) for i in range(4)]
        for token in tokens:
            await verifier.verify(token, deadline())
        assert len(decode_calls) == 4
        await verifier.verify(tokens[3], deadline())  # still cached
        assert len(decode_calls) == 4
        await verifier.verify(tokens[0], deadline())  # evicted (least recently used)
        assert len(decode_calls) == 5


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_weak_rsa_key_refused(issuer: Issuer, verifier: JwtVerifier, clock: FakeClock) -> None:
    weak = SigningKey("weak", "RS256", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    issuer.set_keys(weak)
    await refused(verifier, weak.sign(claims(clock)), "unusable signing key")
