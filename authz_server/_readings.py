"""Other readings of one request: the spellings some router in front of or behind gerrit-authz may route on.

Each reading is a path (canonical, like :attr:`CheckInput.path`) that a real router would treat as this request:

- ``%2F`` decoded to ``/`` — Starlette, Flask and Go decode it before routing; Envoy's router does not, so the
  ``context_extensions`` of the Envoy route that was chosen say nothing about that reading;
- the trailing slash dropped — Express (non-strict routing), Django's ``APPEND_SLASH``, Flask's
  ``strict_slashes=False`` serve ``/deploy/12/`` with the ``/deploy/12`` handler;
- ASCII case folded — ASP.NET Core routing and IIS compare literals case-insensitively (Envoy routes do not);
- a final ``.ext`` dropped — Rails formats, Spring's suffix pattern matching and Django REST framework's format
  suffixes serve ``/admin/users.json`` with the ``/admin/users`` handler;
- all of these at once.

:class:`authz_server._policy.Policy` refuses a request (400 ``ambiguous_path``) when one of these readings would be
governed by a rule placed *above* the rule chosen for the path as sent: that rule is the author's stricter rule for
the request, and the upstream that reads it so would serve its route under the weaker rule's decision. ``;`` path
parameters are refused outright by :func:`authz_server._input.normalize_path`.

A method override (``X-HTTP-Method-Override``, ``X-HTTP-Method``, ``X-Method-Override``, a ``_method`` query
parameter) is another reading of the method: :func:`override_methods` lists the methods it names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from ._input import slash_view

__all__ = ["OVERRIDE_HEADERS", "Reading", "ascii_fold", "override_methods", "readings"]

#: Headers some frameworks (Express method-override, Laravel, Symfony, Google APIs) take as the real method.
OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override"})


@dataclass(frozen=True, slots=True)
class Reading:
    why: str  # for the refusal's reason
    path: str
    folded: bool  # the path is ASCII lower-cased: match it against lower-cased literals


def ascii_fold(path: str) -> str:
    """``path`` with ASCII letters lower-cased, as case-insensitive routers compare it."""
    # ASCII only: case-insensitive routers fold invariant-culture ASCII; "%2F" stays recognisable as "%2f".
    return path.lower() if path.isascii() else "".join(c.lower() if c.isascii() else c for c in path)


def _without_suffix(path: str) -> str | None:
    head, _, last = path.rpartition("/")
    dot = last.rfind(".")
    return f"{head}/{last[:dot]}" if dot > 0 else None


def readings(path: str) -> Iterator[Reading]:
    """Every reading of ``path`` that differs from it (at most five, each computed only when it can differ)."""
    seen: list[str] = []
    combined = path
    if "%2F" in path:
        combined = slash_view(path)
        seen.append(combined)
        yield Reading("'%2F' read as '/'", combined, folded=False)
    if len(path) > 1 and path.endswith("/"):
        combined = combined[:-1] if len(combined) > 1 and combined.endswith("/") else combined
        seen.append(path[:-1])
        yield Reading("the trailing slash dropped", path[:-1], folded=False)
    stripped = _without_suffix(path)
    if stripped is not None:
        combined = _without_suffix(combined) or combined
        seen.append(stripped)
        yield Reading("the final '.suffix' dropped", stripped, folded=False)
    folded = ascii_fold(path)
    if folded != path:
        seen.append(folded)
        yield Reading("letters read case-insensitively", folded, folded=True)
    combined_folded = ascii_fold(combined)
    if combined_folded != path and combined_folded not in seen:  # two or more readings combined into a new one
        yield Reading("read by a lax router", combined_folded, folded=combined_folded != combined)


def _as_php_reads(name: str) -> str:
    """A query parameter's name as PHP stores it in ``$_GET`` (Laravel and Symfony read ``_method`` there): leading
    spaces dropped, then ``.``, spaces and an unmatched ``[`` turned into ``_`` (``.method`` and `` _method`` are
    ``_method``). For any other framework this only widens what counts as an override: a refusal, never an allow."""
    name = name.lstrip(" ").replace(".", "_").replace(" ", "_")
    return name.replace("[", "_") if "]" not in name else name


def override_methods(method: str, headers: Mapping[str, str], query: str) -> set[str]:
    """The methods a method override in the request names, other than ``method`` (empty when there is none)."""
    named: set[str] = set()
    for name, value in headers.items():
        if "method" in name and name.replace("_", "-") in OVERRIDE_HEADERS:
            named.update(v.strip().upper() for v in value.split(","))
    # Frameworks decode the parameter's name ("%5Fmethod") and some split on ';' too (Rack 2): read it as they do.
    if "method" in query.lower() or "%" in query:
        pairs = parse_qsl(query.replace(";", "&"), keep_blank_values=True)
        named.update(v.strip().upper() for k, v in pairs if _as_php_reads(k).lower() == "_method")
    named.discard(method)
    named.discard("")  # an empty override is ignored by the frameworks that read one
    return named
