"""Rules: which requirement tree applies to a request. First matching rule wins; no match is a deny."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._input import CheckInput
from ._requirements import Requirement, needs_identity
from ._templates import PathTemplate
from .config import RuleConfig
from .errors import BadRequest

__all__ = ["Match", "Policy", "Rule"]


def _without_port(host: str) -> str:
    """``example.com:8080`` → ``example.com``; ``[::1]:8080`` → ``[::1]``."""
    name, sep, port = host.rpartition(":")
    return (
        name
        if sep and port.isdigit() and not name.endswith(":") and (name.startswith("[") or ":" not in name)
        else host
    )


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    require: Requirement
    methods: frozenset[str] | None = None
    template: PathTemplate | None = None
    prefix: str | None = None
    hosts: frozenset[str] | None = None
    context: Mapping[str, str] | None = None
    needs_identity: bool = True
    shadow: bool = False  # `mode: shadow`: the rule's denies are audited and counted, not enforced

    @classmethod
    def from_config(cls, cfg: RuleConfig) -> Rule:
        m = cfg.match
        return cls(
            name=cfg.name,
            require=cfg.require,
            methods=frozenset(x.upper() for x in m.methods) if m.methods else None,
            template=PathTemplate.compile(m.path) if m.path is not None else None,
            prefix=m.path_prefix,
            hosts=frozenset(h.lower() for h in m.hosts) if m.hosts else None,
            context=dict(m.context_extensions) if m.context_extensions else None,
            needs_identity=needs_identity(cfg.require),
            shadow=cfg.mode == "shadow",
        )

    def match(self, inp: CheckInput) -> dict[str, str] | None:
        """The decoded path captures when this rule applies to ``inp``, else None."""
        if self.methods is not None and inp.method not in self.methods:
            return None
        if self.hosts is not None and inp.host not in self.hosts and _without_port(inp.host) not in self.hosts:
            return None
        if self.context is not None and any(inp.context_extensions.get(k) != v for k, v in self.context.items()):
            return None
        if self.prefix is not None and not inp.path.startswith(self.prefix):
            return None
        if self.template is None:
            return {}
        try:
            captures = self.template.match(inp.path)
        except UnicodeDecodeError:
            raise BadRequest("malformed_path", "a path segment is not valid UTF-8 once decoded") from None
        if captures is not None:
            for value in captures.values():
                # "a%2F..%2Fb" is one segment on the wire but the name "a/../b" once decoded: refuse, never guess.
                if "\0" in value or any(part in (".", "..", "") for part in value.split("/")):
                    raise BadRequest("malformed_path", "an encoded path segment decodes to an empty or dot segment")
        return captures


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    captures: Mapping[str, str]


class Policy:
    """An ordered list of rules."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)

    @classmethod
    def from_config(cls, rules: Sequence[RuleConfig]) -> Policy:
        return cls([Rule.from_config(r) for r in rules])

    def match(self, inp: CheckInput) -> Match | None:
        for rule in self.rules:
            captures = rule.match(inp)
            if captures is not None:
                return Match(rule, captures)
        return None
