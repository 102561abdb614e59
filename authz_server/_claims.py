"""The ``claim`` requirement: a condition on a claim of the caller's verified token.

``claim: {name, equals | contains | any_of}`` with exactly one operator. ``name`` may be dotted to reach into
nested objects (``realm_access.roles``). A claim's value is read as a list of words for ``contains`` and
``any_of``: a list claim is its items, a string claim its space-separated words (how OAuth ``scope`` is sent),
a number or boolean the value itself. ``equals`` compares the whole value, type-strictly (``1`` is not ``true``).

Values may hold ``{capture}`` placeholders. A filled value is compared as one word, never split, so a capture
such as ``"x deploy:y"`` can only ever equal a word containing a space, which a word list never holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from ._templates import fill

__all__ = ["Claim", "ClaimValue", "claim_matches", "claim_value_type", "filled", "parse_claim", "resolve_claim"]

ClaimValue: TypeAlias = str | int | float | bool
Operator = Literal["equals", "contains", "any_of"]
_OPERATORS: tuple[Operator, ...] = ("equals", "contains", "any_of")
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Claim:
    name: str
    operator: Operator
    values: tuple[ClaimValue, ...]  # one value for equals and contains

    def strings(self) -> tuple[str, ...]:
        """The string values (those that may hold placeholders)."""
        return tuple(v for v in self.values if isinstance(v, str))

    def describe(self, values: tuple[ClaimValue, ...]) -> str:
        shown = list(values) if self.operator == "any_of" else values[0]
        return f"{self.name} {self.operator} {shown!r}"


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and value != ""


def parse_claim(value: Any) -> tuple[Claim | None, str, str]:
    """``(claim, key, reason)``: the parsed claim, or None with the failing sub-key and why."""
    if not isinstance(value, Mapping):
        return None, "", "must be a mapping {name, equals | contains | any_of}"
    unknown = [k for k in value if k not in ("name", *_OPERATORS)]
    if unknown:
        return None, str(unknown[0]), "unknown key"
    name = value.get("name")
    if not isinstance(name, str) or not name or any(not part for part in name.split(".")):
        return None, "name", "must be a claim name (dots separate nested names)"
    ops = [op for op in _OPERATORS if op in value]
    if len(ops) != 1:
        return None, "", "needs exactly one of equals, contains, any_of"
    (op,) = ops
    raw = value[op]
    if op == "any_of":
        if not isinstance(raw, list) or not raw or not all(_scalar(v) for v in raw):
            return None, op, "must be a non-empty list of strings, numbers or booleans"
        return Claim(name, op, tuple(raw)), "", ""
    if not _scalar(raw):
        return None, op, "must be a non-empty string, a number or a boolean"
    return Claim(name, op, (raw,)), "", ""


def resolve_claim(claims: Mapping[str, Any], name: str) -> Any:
    """The claim at a dotted name, or a private sentinel when any step is absent (see :func:`claim_value_type`)."""
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def claim_value_type(value: Any) -> str:
    """What Explain shows instead of a claim's value: its JSON type (and how many words or items)."""
    if value is _MISSING:
        return "absent"
    if isinstance(value, str):
        return f"string of {len(_words(value))} word(s)"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return f"list of {len(value)} item(s)"
    if isinstance(value, Mapping):
        return "object"
    return "null" if value is None else type(value).__name__


def _same(a: Any, b: ClaimValue) -> bool:
    # Type-strict: YAML 1 must not equal a JSON true, nor "1" equal 1.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(b, str):
        return isinstance(a, str) and a == b
    return isinstance(a, int | float) and a == b


def _words(value: Any) -> list[Any]:
    if isinstance(value, str):
        # Space only (RFC 6749 §3.3): str.split() would also split on U+3000 or U+001F, letting one scope a
        # client chose, "deploy:x\u3000admin", read as two words.
        return [w for w in value.split(" ") if w]
    if isinstance(value, list):
        return value
    if isinstance(value, int | float):
        return [value]
    return []  # objects and null hold no words


def filled(claim: Claim, captures: Mapping[str, str]) -> tuple[ClaimValue, ...]:
    """The claim's values with the path's captures filled in."""
    return tuple(fill(v, captures) if isinstance(v, str) else v for v in claim.values)


def claim_matches(claim: Claim, value: Any, values: tuple[ClaimValue, ...]) -> bool:
    """Whether a resolved claim ``value`` satisfies ``claim`` with its (already filled) ``values``."""
    if value is _MISSING:
        return False
    if claim.operator == "equals":
        return _same(value, values[0])
    words = _words(value)
    return any(_same(word, wanted) for wanted in values for word in words)
