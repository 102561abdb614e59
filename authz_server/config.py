"""Configuration: YAML validated by pydantic models. Unknown keys are errors; secrets come from env or files."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ._accounts import AccountField
from ._caller_trust import caller_trust_errors
from ._extras import require_otel, require_redis
from ._redis_conn import check_redis_url
from ._requirements import Requirement, RequirementError, parse_requirement, placeholders
from ._telemetry_config import TelemetryConfig, telemetry_settings
from ._templates import PathTemplate, TemplateError
from .errors import ConfigError

__all__ = [
    "HTTP_METHODS",
    "CacheConfig",
    "Config",
    "EnvoyJwtMetadataConfig",
    "EventsConfig",
    "GerritConfig",
    "GerritHttpCredentialsConfig",
    "JwtConfig",
    "MatchConfig",
    "MtlsConfig",
    "RuleConfig",
    "ServerConfig",
    "TelemetryConfig",
    "TlsConfig",
    "TtlConfig",
    "load_config",
    "parse_config",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def _duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 500ms, 2s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("must be a duration such as 500ms, 2s, 5m or 1h")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be HOST:PORT (port 0 picks a free one)")
    return value


Address = Annotated[str, BeforeValidator(lambda v: _address(str(v)))]


class TlsConfig(_Model):
    """TLS on a gRPC listener; files are re-read when they change (see :mod:`authz_server._tls`)."""

    cert_file: Path
    key_file: Path
    # With it, client certificates are required and must chain to this CA (mTLS).
    client_ca_file: Path | None = None
    # The client-certificate SANs (URI or DNS, exact) allowed to call; others get an RPC error.
    allowed_callers: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _callers_need_ca(self) -> TlsConfig:
        if self.allowed_callers is not None and self.client_ca_file is None:
            raise ValueError("allowed_callers needs client_ca_file (only a verified certificate names its caller)")
        if self.allowed_callers is not None and any(not c or c != c.strip() for c in self.allowed_callers):
            raise ValueError("allowed_callers: entries must be non-empty SANs without surrounding spaces")
        return self


class ServerConfig(_Model):
    listen: Address = "127.0.0.1:9001"
    admin_listen: Address | None = "127.0.0.1:9002"
    tls: TlsConfig | None = None  # on ``listen`` (ext_authz, health and reflection)
    admin_tls: TlsConfig | None = None  # on ``admin_listen``
    # "mesh": a plaintext listener whose callers a service mesh (Istio, Linkerd) authenticates.
    caller_authentication: Literal["mesh"] | None = None
    metrics_listen: Address | None = None  # Prometheus /metrics over HTTP; off unless set
    reflection: bool = True
    check_timeout: Duration = 1.0
    shutdown_grace: Duration = 5.0
    retry_after: Duration = 5.0
    # shadow: every would-be deny (401/403) is allowed, audited and counted with the code it would have returned.
    mode: Literal["enforce", "shadow"] = "enforce"
    # An undecided answer (503) as CheckResponse.error_response (Envoy >= 1.37 counts it as ext_authz.error and
    # applies failure_mode_allow), or as a plain denied_response (deny: for proxies older than 1.37).
    outages: Literal["error", "deny"] = "error"
    # How often the config file is checked for changes (0 turns polling off; SIGHUP still reloads).
    config_watch_interval: Duration = 2.0
    # Processes serving the ext_authz listener (SO_REUSEPORT), sharing one generation table; see _workers.
    workers: int = Field(default=1, ge=1, le=64)
    # With workers > 1: worker i also serves ext_authz alone on listen's host, port worker_port_base + i (0: each
    # picks one), so Envoy can balance every Check over them (LEAST_REQUEST) instead of each connection's worker.
    worker_port_base: int | None = Field(default=None, ge=0, le=65535)

    @model_validator(mode="after")
    def _worker_ports(self) -> ServerConfig:
        if self.worker_port_base is not None and self.workers < 2:
            raise ValueError("worker_port_base needs workers > 1")
        if self.worker_port_base and self.worker_port_base + self.workers - 1 > 65535:
            raise ValueError("worker_port_base + workers - 1 is not a port")
        return self


class EventsConfig(_Model):
    """``gerrit.events``: follow ``gerrit stream-events`` over SSH (see :mod:`authz_server._events`)."""

    ssh_url: str  # ssh://USER@HOST[:PORT], the service account
    private_key_file: Path  # re-read at every connection attempt, so a rotated key is picked up
    known_hosts_file: Path  # Gerrit's host key; an unknown one is refused
    backoff_initial: Duration = Field(default=0.5, gt=0)
    backoff_max: Duration = Field(default=5.0, gt=0, le=60.0)
    keepalive: Duration = Field(default=15.0, gt=0)  # a silent dead peer is noticed after 3 of these

    @model_validator(mode="after")
    def _url(self) -> EventsConfig:
        parts = urlsplit(self.ssh_url)
        try:
            port = parts.port
        except ValueError:
            raise ValueError("ssh_url: port must be a number from 1 to 65535") from None
        if parts.scheme != "ssh" or not parts.hostname or not parts.username or port == 0:
            raise ValueError("ssh_url must be ssh://USER@HOST[:PORT]")
        if parts.password is not None or parts.path not in ("", "/"):
            raise ValueError("ssh_url takes no password and no path (the key is in private_key_file)")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.ssh_url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.ssh_url).port or 29418

    @property
    def username(self) -> str:
        return unquote(urlsplit(self.ssh_url).username or "")


class GerritConfig(_Model):
    url: str
    username: str
    password_env: str | None = None
    password_file: Path | None = None
    timeout: Duration = 2.0
    max_connections: int = Field(default=100, ge=1)
    verify_tls: bool = True
    ca_file: Path | None = None  # trust for Gerrit's certificate (default: the system's store)
    client_cert_file: Path | None = None  # a client certificate presented to Gerrit (with client_key_file)
    client_key_file: Path | None = None
    events: EventsConfig | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> GerritConfig:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("set exactly one of password_env or password_file")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is a trust to verify against: it cannot go with verify_tls: false")
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        parts = urlsplit(self.url)
        if parts.username is not None or parts.password is not None:  # a secret never sits in a URL (it is printed)
            raise ValueError("url takes no user or password: set username and password_file or password_env")
        return self

    def password(self) -> str:
        """Read the secret now (at start-up), so a missing one fails early and is never stored in config."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if not value:
                raise ConfigError([("gerrit.password_env", f"environment variable {self.password_env} is not set")])
            return value
        assert self.password_file is not None
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError([("gerrit.password_file", f"cannot read: {exc.strerror}")]) from None


class _AccountMapping(_Model):
    """How a verified token names its Gerrit account: the claim, and the one account field it must equal."""

    account_claim: str = "email"
    account_field: AccountField = "email"
    # With account_field email, a token saying email_verified: false is refused (401).
    require_verified_email: bool = True


class JwtConfig(_AccountMapping):
    issuer: str
    audiences: list[str] = Field(min_length=1)
    jwks_url: str | None = None
    algorithms: list[Literal[ASYMMETRIC_ALGORITHMS]] = list(ASYMMETRIC_ALGORITHMS)  # type: ignore[valid-type]
    leeway: Duration = Field(default=30.0, le=60.0)
    max_token_bytes: int = Field(default=8192, ge=256, le=65536)
    jwks_ttl: Duration = 600.0
    jwks_min_refresh_interval: Duration = 10.0
    # Tokens whose exp - iat exceeds it are refused (iat then required): tokens stay short-lived.
    max_token_lifetime: Duration | None = Field(default=None, gt=0)
    # Trust for the issuer's discovery document and JWKS (default: the system's store; never gerrit.ca_file).
    ca_file: Path | None = None


class GerritHttpCredentialsConfig(_Model):
    pass


class EnvoyJwtMetadataConfig(_AccountMapping):
    filter: str = "envoy.filters.http.jwt_authn"
    payload_key: str = "jwt_payload"
    issuer: str | None = None


class MtlsConfig(_Model):
    """A client certificate Envoy validated: ``attributes.source.principal`` (URI SAN, else DNS SAN, else subject)."""

    match: str | None = None  # "spiffe://corp.example/ci/{account}"; without it the whole principal
    account_field: Literal["username", "email"] = "username"

    @model_validator(mode="after")
    def _template(self) -> MtlsConfig:
        if self.match is not None:
            rest = self.match.replace("{account}", "", 1)
            if "{account}" not in self.match or "{" in rest or "}" in rest:
                raise ValueError("match must hold exactly one {account} placeholder and no other braces")
        return self


class IdentitySource(_Model):
    jwt: JwtConfig | None = None
    gerrit_http_credentials: GerritHttpCredentialsConfig | None = None
    envoy_jwt_metadata: EnvoyJwtMetadataConfig | None = None
    mtls: MtlsConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> IdentitySource:
        kinds = (self.jwt, self.gerrit_http_credentials, self.envoy_jwt_metadata, self.mtls)
        if sum(x is not None for x in kinds) != 1:
            raise ValueError(
                "each identity entry has exactly one of jwt, gerrit_http_credentials, envoy_jwt_metadata, mtls"
            )
        return self


class TtlConfig(_Model):
    account: Duration = 300.0
    groups: Duration = 60.0
    access: Duration = 60.0
    capabilities: Duration = 60.0
    change: Duration = 15.0
    credentials: Duration = 300.0
    negative: Duration = 10.0


class CacheConfig(_Model):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    namespace: str = "gerrit-authz:"
    ttl: TtlConfig = TtlConfig()
    stale_if_error: Duration = 300.0
    # The memory backend's bound (least recently used evicted first); Redis bounds itself (maxmemory).
    max_entries: int = Field(default=100_000, ge=100)
    # Key for the hashes credentials are cached under; replicas sharing Redis need the same one. Without it
    # each process picks a random key (credential entries are then private to that process).
    credential_key_file: Path | None = None
    # Redis connection security: TLS trust for rediss://, and the credentials (never in redis_url).
    redis_ca_file: Path | None = None
    redis_username: str | None = Field(default=None, min_length=1)
    redis_password_file: Path | None = None
    redis_password_env: str | None = Field(default=None, min_length=1)
    # Whole decisions remembered while every fact they read is unchanged (see authz_server._memo); per process,
    # at most max_entries of them.
    decision_memo: bool = True

    @model_validator(mode="after")
    def _redis_url(self) -> CacheConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url")
        if self.redis_url is not None:
            check_redis_url(self.redis_url, ca_file=self.redis_ca_file is not None)
        if self.redis_password_file is not None and self.redis_password_env is not None:
            raise ValueError("set at most one of redis_password_file or redis_password_env")
        return self


#: The methods a rule may name: RFC 9110's, PATCH (RFC 5789) and WebDAV's (RFC 4918). A typo such as ``PSOT``
#: would make a rule that never matches, so the request falls through to a later, maybe laxer, rule.
HTTP_METHODS = frozenset(
    {
        *("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"),
        *("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK"),
    }
)


def _method(value: str) -> str:
    if value.upper() not in HTTP_METHODS:
        raise ValueError(f"unknown HTTP method {value!r} (expected one of {', '.join(sorted(HTTP_METHODS))})")
    return value


class MatchConfig(_Model):
    # An empty list would silently mean "anything"; leave the key out for that.
    methods: list[Annotated[str, AfterValidator(_method)]] | None = Field(default=None, min_length=1)
    path: str | None = None
    path_prefix: str | None = None
    hosts: list[str] | None = Field(default=None, min_length=1)
    context_extensions: dict[str, str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _path(self) -> MatchConfig:
        if self.path is not None and self.path_prefix is not None:
            raise ValueError("use either path or path_prefix, not both")
        if self.path_prefix is not None and not self.path_prefix.startswith("/"):
            raise ValueError("path_prefix must start with '/'")
        if self.path_prefix is not None and "%" in self.path_prefix:
            try:  # compared decoded, like the path (see _input.canonical_path)
                PathTemplate.compile(self.path_prefix.replace("{", "%7B").replace("}", "%7D") + "x")
            except TemplateError as exc:
                raise ValueError(f"path_prefix: {exc}") from None
        if self.path is not None:
            try:
                PathTemplate.compile(self.path)
            except TemplateError as exc:
                raise ValueError(f"path: {exc}") from None
        return self


def _requirement(value: Any) -> Requirement:
    try:
        return parse_requirement(value)
    except RequirementError as exc:
        raise ValueError(str(exc)) from None


class RuleConfig(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(min_length=1)
    match: MatchConfig = MatchConfig()
    require: Annotated[Any, BeforeValidator(_requirement)]
    mode: Literal["enforce", "shadow"] = "enforce"

    @model_validator(mode="after")
    def _captures(self) -> RuleConfig:
        known = set(PathTemplate.compile(self.match.path).names) if self.match.path else set()
        unknown = placeholders(self.require) - known
        if unknown:
            raise ValueError(f"require uses {sorted(unknown)} but match.path captures only {sorted(known)}")
        return self


class Config(_Model):
    server: ServerConfig = ServerConfig()
    gerrit: GerritConfig
    identity: list[IdentitySource] = Field(default_factory=list)
    cache: CacheConfig = CacheConfig()
    rules: list[RuleConfig] = Field(min_length=1)
    telemetry: TelemetryConfig = TelemetryConfig()

    @model_validator(mode="after")
    def _unique_rules(self) -> Config:
        names = [rule.name for rule in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rules: rule names must be unique: {dupes}")
        return self


_REQUIREMENT_PATH = re.compile(r"^([A-Za-z_][\w.\[\]-]*): (.+)$", re.S)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "json-or-python")):
            out += f".{part}" if out else part
    return out or "(top level)"


def parse_config(data: Any) -> Config:
    """Validate an already-loaded YAML document; raises :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([("(top level)", "the configuration must be a mapping")])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            loc = _loc(err["loc"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif loc.endswith(".require"):
                # A requirement reports every problem, one "path: reason" line each (see RequirementError).
                for line in msg.splitlines():
                    if m := _REQUIREMENT_PATH.match(line):
                        errors.append((f"{loc}.{m.group(1)}".replace(".[", "["), m.group(2)))
                    else:
                        errors.append((loc, line))
                continue
            errors.append((loc, msg))
        raise ConfigError(errors) from None
    if config.cache.backend == "redis":
        require_redis()
    tracing = telemetry_settings(config.telemetry)  # the OTEL_* variables count too
    if tracing is not None:
        where = "telemetry.traces_exporter" if config.telemetry.traces_exporter is not None else "OTEL_TRACES_EXPORTER"
        require_otel(where, http=tracing.protocol == "http/protobuf" and "otlp" in tracing.exporters)
    if trust_errors := caller_trust_errors(config):
        raise ConfigError(trust_errors)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML configuration file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read: {exc.strerror}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([(str(path), f"invalid YAML: {exc}")]) from None
    return parse_config(data)
