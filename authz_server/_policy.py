"""Rules: which requirement tree applies to a request. First matching rule wins; no match is a deny.

One path, one rule: the upstream decodes ``%2F`` to ``/`` before routing, gerrit-authz keeps it inside its
segment. A path with ``%2F`` is therefore matched twice when it has to be: it is accepted when every ``%2F`` lies
in a segment a capture of the chosen rule takes (``/artifacts/platform%2Fbuild/...``), or when the path with
``%2F`` read as ``/`` picks the same rule; otherwise the choice of rule would depend on the spelling, and the
request is refused (400 ``ambiguous_path``). A rule whose methods include GET also governs HEAD.

The same holds for the other readings of a request some router may route on (:mod:`authz_server._readings`: the
trailing slash dropped, case folded, a ``.json`` suffix dropped, a method override, a path reading under an
override's method): when one of them would be governed by a rule placed above the chosen one, the request is
refused. A rule's ``context_extensions`` condition is taken as met for a reading when its path part does not govern
the path as sent: Envoy chose its route on that spelling, so a reading it routed elsewhere (``POST /deploy%2F12``
missing a ``/deploy/`` route) says nothing about the extensions the other route would have sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._input import CheckInput, canonical_path, slash_view
from ._readings import Reading, ascii_fold, override_methods, readings
from ._requirements import Requirement, needs_identity
from ._templates import PathTemplate
from .config import RuleConfig
from .errors import BadRequest

__all__ = ["Match", "Policy", "Rule"]

# Matching is a pure function of (method, path, host, context extensions, the methods an override names): the
# answers for the most recent ones are kept (a repeated request skips the templates and the other readings).
# Bounded in entries and in key size, so the memory is bounded whatever the requests.
_MATCHES_KEPT = 4096
_MATCH_KEY_MAX = 1024  # longer requests (method, path, host and override methods) are matched every time
_MISS = object()


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
    folded: PathTemplate | None = None  # the template with lower-cased literals, for case-insensitive readings

    @classmethod
    def from_config(cls, cfg: RuleConfig) -> Rule:
        m = cfg.match
        template = PathTemplate.compile(m.path) if m.path is not None else None
        return cls(
            name=cfg.name,
            require=cfg.require,
            methods=_methods(m.methods),
            template=template,
            folded=template.folded() if template is not None else None,
            # The path is matched decoded, so the prefix is too ("/src/%2B/" and "/src/+/" are one prefix).
            prefix=canonical_path(m.path_prefix) if m.path_prefix is not None else None,
            hosts=frozenset(h.lower() for h in m.hosts) if m.hosts else None,
            context=dict(m.context_extensions) if m.context_extensions else None,
            needs_identity=needs_identity(cfg.require),
            shadow=cfg.mode == "shadow",
        )

    def match(self, inp: CheckInput) -> dict[str, str] | None:
        """The decoded path captures when this rule applies to ``inp``, else None (``%2F`` taken as in-segment)."""
        return self.match_path(inp, inp.path)

    def match_path(self, inp: CheckInput, path: str) -> dict[str, str] | None:
        """Like :meth:`match`, for ``path`` (canonical) instead of ``inp.path``."""
        if self.methods is not None and inp.method not in self.methods:
            return None
        if self.hosts is not None and inp.host not in self.hosts and _without_port(inp.host) not in self.hosts:
            return None
        if self.context is not None and any(inp.context_extensions.get(k) != v for k, v in self.context.items()):
            return None
        if self.prefix is not None and not path.startswith(self.prefix):
            return None
        if self.template is None:
            return {}
        try:
            return self.template.match(path)
        except UnicodeDecodeError:
            raise BadRequest("malformed_path", "a path segment is not valid UTF-8 once decoded") from None

    def governs_reading(
        self, inp: CheckInput, path: str, *, folded: bool, method: str | None = None, context_as_met: bool = True
    ) -> bool:
        """Whether this rule would govern ``path`` (another reading of ``inp``), its context condition taken as met
        unless ``context_as_met`` is false.

        A template that splits the reading in more than one way counts as governing it: refuse rather than guess.
        """
        if self.methods is not None and (method or inp.method) not in self.methods:
            return False
        if self.hosts is not None and inp.host not in self.hosts and _without_port(inp.host) not in self.hosts:
            return False
        if (
            not context_as_met
            and self.context is not None
            and any(inp.context_extensions.get(k) != v for k, v in self.context.items())
        ):
            return False
        if self.prefix is not None and not path.startswith(ascii_fold(self.prefix) if folded else self.prefix):
            return False
        template = (self.folded or self.template.folded()) if folded and self.template is not None else self.template
        if template is None:
            return True
        try:
            return template.match(path) is not None
        except (BadRequest, UnicodeDecodeError):
            return True


@dataclass(frozen=True, slots=True)
class Match:
    rule: Rule
    captures: Mapping[str, str]


class Policy:
    """An ordered list of rules."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._order = {id(rule): i for i, rule in enumerate(self.rules)}  # the rules live as long as the policy
        self._matches: dict[tuple[object, ...], Match | None] = {}

    @classmethod
    def from_config(cls, rules: Sequence[RuleConfig]) -> Policy:
        return cls([Rule.from_config(r) for r in rules])

    def _first(self, inp: CheckInput, path: str) -> Match | None:
        for rule in self.rules:
            captures = rule.match_path(inp, path)
            if captures is not None:
                return Match(rule, captures)
        return None

    def match(self, inp: CheckInput) -> Match | None:
        """The first rule for ``inp``; raises ``ambiguous_path`` when another reading of it could change it."""
        overrides = override_methods(inp.method, inp.headers, inp.query)
        key: tuple[object, ...] | None = None
        # The method and the override methods are the client's too (any token, a header of any size): all counted.
        if len(inp.method) + len(inp.path) + len(inp.host) + sum(map(len, overrides)) <= _MATCH_KEY_MAX:
            context = tuple(inp.context_extensions.items()) if inp.context_extensions else ()
            key = (inp.method, inp.path, inp.host, context, frozenset(overrides), inp.decoded)
            kept = self._matches.get(key, _MISS)
            if kept is not _MISS:
                return kept  # type: ignore[return-value]
        found = self._slash_checked(inp)
        if found is not None:
            self._refuse_stricter_readings(inp, found, overrides)
        if key is not None:  # refusals (raised above) are not kept: they are rare and cheap to redo
            matches = self._matches
            if len(matches) >= _MATCHES_KEPT:
                del matches[next(iter(matches))]  # the oldest
            matches[key] = found
        return found

    def _refuse_stricter_readings(self, inp: CheckInput, found: Match, overrides: set[str]) -> None:
        """Raise when a rule placed above ``found`` governs another reading of the request."""
        for method in overrides:
            other = next(
                (
                    r
                    for r in self.rules
                    if r.governs_reading(inp, inp.path, folded=False, method=method, context_as_met=False)
                ),
                None,
            )
            if other is not found.rule:
                raise BadRequest(
                    "ambiguous_method",
                    f"a method override names {method[:16]!r}, which is governed by "
                    f"{repr(other.name) if other else 'no rule'}, not by {found.rule.name!r}",
                )
        above = self.rules[: self._order[id(found.rule)]]
        if not above:
            return
        # A context rule whose path part governs the path as sent was judged on the route Envoy really chose: its
        # extensions say no whatever the spelling. Only where the spelling decides the path part is the route (and
        # so the extensions) in doubt. Computed only when there is another reading (most paths have none).
        # An upstream that honours a method override may also read the path laxly: each reading is checked under
        # the method sent and every method an override names.
        # A path sent with percent-escapes (decoded here) may have been routed by Envoy on that spelling: every
        # context rule with a path part is then in doubt, and the decoded path itself is one more reading
        # (GET /%61dmin/x routed to a public route, served as /admin/x by an upstream that decodes).
        methods = (inp.method, *overrides)
        context_in_doubt: dict[tuple[int, str], bool] | None = None
        decoded = (Reading("its percent-escapes decoded", inp.path, folded=False),) if inp.decoded else ()
        for reading in (*decoded, *readings(inp.path)):
            if context_in_doubt is None:
                context_in_doubt = {
                    (id(rule), method): (inp.decoded and (rule.prefix is not None or rule.template is not None))
                    or not rule.governs_reading(inp, inp.path, folded=False, method=method)
                    for rule in above
                    if rule.context is not None
                    for method in methods
                }
            for rule in above:
                for method in methods:
                    if rule.governs_reading(
                        inp,
                        reading.path,
                        folded=reading.folded,
                        method=method,
                        context_as_met=context_in_doubt.get((id(rule), method), False),
                    ):
                        via = "" if method == inp.method else f" and the method read as {method[:16]!r}"
                        raise BadRequest(
                            "ambiguous_path",
                            f"with {reading.why}{via} the path is governed by rule {rule.name!r}, placed above the "
                            f"rule {found.rule.name!r} that governs it as sent",
                        )

    def _slash_checked(self, inp: CheckInput) -> Match | None:
        found = self._first(inp, inp.path)
        if "%2F" not in inp.path:
            return found
        # An upstream that decodes %2F before routing (Starlette, Flask) routes the slash reading. A rule placed
        # above the one found that governs that reading is the author's stricter rule for it: refuse. Otherwise the
        # encoded slash stays in the capture that took it (`platform%2Fbuild` as one project, even with a
        # catch-all below).
        other = self._first(inp, slash_view(inp.path))
        if (
            found is not None
            and _slashes_captured(found)
            and (other is None or self._order[id(other.rule)] >= self._order[id(found.rule)])
        ):
            return found
        if (other.rule if other else None) is (found.rule if found else None):
            return found
        raise BadRequest(
            "ambiguous_path",
            "an encoded slash ('%2F') outside a captured segment changes which rule applies "
            f"({found.rule.name if found else 'no rule'} as one segment, {other.rule.name if other else 'no rule'}"
            " as a slash)",
        )


def _methods(methods: Sequence[str] | None) -> frozenset[str] | None:
    if not methods:
        return None
    upper = frozenset(x.upper() for x in methods)
    # Frameworks answer HEAD with the GET handler, so whoever may GET a resource governs its HEAD too.
    return upper | {"HEAD"} if "GET" in upper else upper


def _slashes_captured(found: Match) -> bool:
    """Whether every ``%2F`` of the path lies inside a segment taken by a capture of the matched rule.

    Template literals never contain ``%2F`` (refused at compile time), so when a template matched the whole path
    every encoded slash is in a captured segment; a prefix rule captures nothing.
    """
    return found.rule.template is not None
