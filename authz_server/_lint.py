"""Warnings about valid rules that are likely to disagree with the router in front of or behind gerrit-authz.

``gerrit-authz check-config`` prints them (stderr, exit 0): the configuration is valid, but one shape of it lets a
request fall from the rule its author meant to a later, weaker one when another router reads the path differently.

- A one-segment capture (``{project}``) that feeds a Gerrit project (``permission.project``, the project part of a
  change id ``{project}~{n}``). Project names hold ``/``: an upstream routing ``{project:path}`` serves ``a/b``
  under this rule's route while the policy, which needs ``a%2Fb`` here, lets ``a/b`` fall to a later rule.
- A catch-all that allows (``anyone`` or ``authenticated`` on every path): every request another rule misses
  under some spelling lands there; a request that no rule names should be refused (403).

The other shapes of this class are refused per request instead (see :mod:`authz_server._readings`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ._requirements import Anyone, Authenticated, Change, Permission, Requirement, walk
from ._templates import PathTemplate
from .config import RuleConfig

__all__ = ["LintWarning", "lint_rules"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class LintWarning:
    rule: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"rule {self.rule!r}: {self.message} [{self.code}]"


def _project_values(req: Requirement) -> Iterator[tuple[str, str]]:
    """``(where, text)`` for every requirement value that names a Gerrit project."""
    for node in walk(req):
        if isinstance(node, Permission):
            yield "permission.project", node.project
        elif isinstance(node, Change) and "~" in node.id:
            # "{project}~{n}" or "{project}~{branch}~{Change-Id}": the project is the part before the first "~".
            yield "change.id", node.id.split("~", 1)[0]


def _single_segment_project(rule: RuleConfig) -> Iterator[LintWarning]:
    if rule.match.path is None:
        return
    template = PathTemplate.compile(rule.match.path)
    single = set(template.names) - set(template.path_names)
    for where, text in _project_values(rule.require):
        for name in _PLACEHOLDER.findall(text):
            if name in single:
                yield LintWarning(
                    rule.name,
                    "single_segment_project",
                    f"{where} uses the one-segment capture {{{name}}}; Gerrit project names hold '/', so write "
                    f"{{{name}:path}} (an upstream routing {{{name}:path}} serves 'a/b' under this rule's route "
                    "while this rule matches only 'a%2Fb', and the request falls to a later rule)",
                )


def _catch_all(rule: RuleConfig, index: int) -> Iterator[LintWarning]:
    m = rule.match
    every_path = m.path is None and m.path_prefix in (None, "", "/")
    if index and every_path and m.hosts is None and isinstance(rule.require, Anyone | Authenticated):
        kind = "anyone" if isinstance(rule.require, Anyone) else "authenticated"
        yield LintWarning(
            rule.name,
            "catch_all_allow",
            f"allows every path ({kind}) after stricter rules; a request they miss under another spelling "
            "(a/b for a%2Fb, a trailing slash, a router's own reading) is allowed here. Name the routes "
            "instead: a request no rule names is refused (403)",
        )


def lint_rules(rules: Sequence[RuleConfig]) -> list[LintWarning]:
    """Every warning for ``rules``, in rule order."""
    warnings: list[LintWarning] = []
    for i, rule in enumerate(rules):
        warnings.extend(_single_segment_project(rule))
        warnings.extend(_catch_all(rule, i))
    return warnings
