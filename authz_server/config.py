"""Configuration: YAML validated by pydantic models. Unknown keys are errors; secrets come from env or files."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ._accounts import AccountField
from ._requirements import Requirement, RequirementError, parse_requirement, placeholders
from ._templates import PathTemplate, TemplateError
from .errors import ConfigError

__all__ = [
    "CacheConfig",
    "Config",
    "EnvoyJwtMetadataConfig",
    "GerritConfig",
    "GerritHttpCredentialsConfig",
    "JwtConfig",
    "MatchConfig",
    "RuleConfig",
    "ServerConfig",
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


class ServerConfig(_Model):
    listen: Address = "127.0.0.1:9001"
    admin_listen: Address | None = "127.0.0.1:9002"
    metrics_listen: Address | None = None  # Prometheus /metrics over HTTP; off unless set
    reflection: bool = True
    check_timeout: Duration = 1.0
    shutdown_grace: Duration = 5.0
    retry_after: Duration = 5.0


class GerritConfig(_Model):
    url: str
    username: str
    password_env: str | None = None
    password_file: Path | None = None
    timeout: Duration = 2.0
    max_connections: int = Field(default=100, ge=1)
    verify_tls: bool = True

    @model_validator(mode="after")
    def _one_secret(self) -> GerritConfig:
        if (self.password_env is None) == (self.password_file is None):
            raise ValueError("set exactly one of password_env or password_file")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
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


class GerritHttpCredentialsConfig(_Model):
    pass


class EnvoyJwtMetadataConfig(_AccountMapping):
    filter: str = "envoy.filters.http.jwt_authn"
    payload_key: str = "jwt_payload"
    issuer: str | None = None


class IdentitySource(_Model):
    jwt: JwtConfig | None = None
    gerrit_http_credentials: GerritHttpCredentialsConfig | None = None
    envoy_jwt_metadata: EnvoyJwtMetadataConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> IdentitySource:
        if sum(x is not None for x in (self.jwt, self.gerrit_http_credentials, self.envoy_jwt_metadata)) != 1:
            raise ValueError("each identity entry has exactly one of jwt, gerrit_http_credentials, envoy_jwt_metadata")
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

    @model_validator(mode="after")
    def _redis_url(self) -> CacheConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url")
        return self


class MatchConfig(_Model):
    # An empty list would silently mean "anything"; leave the key out for that.
    methods: list[str] | None = Field(default=None, min_length=1)
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
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            loc = _loc(err["loc"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif loc.endswith(".require") and (m := _REQUIREMENT_PATH.match(msg)):
                loc, msg = f"{loc}.{m.group(1)}".replace(".[", "["), m.group(2)
            errors.append((loc, msg))
        raise ConfigError(errors) from None


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
