"""Path templates: ``/artifacts/{project}/-/{branch}/{file:path}``.

``{name}`` matches exactly one non-empty segment, ``{name:path}`` one or more. Matching runs on the normalised
but still percent-encoded path, so an encoded slash (``%2F``) stays inside its segment; captures are decoded
afterwards, which makes ``platform%2Fbuild`` the Gerrit project ``platform/build``. ``{capture}`` placeholders
in requirement values are filled with :func:`fill`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["PathTemplate", "TemplateError", "fill"]

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")
_SEGMENT = "[^/]+"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A compiled path template."""

    source: str
    pattern: re.Pattern[str]
    names: tuple[str, ...]

    @classmethod
    def compile(cls, source: str) -> PathTemplate:
        if not source.startswith("/"):
            raise TemplateError("a path template must start with '/'")
        parts: list[str] = []
        names: list[str] = []
        pos = 0
        for m in _VAR.finditer(source):
            literal = source[pos : m.start()]
            if "{" in literal or "}" in literal:
                raise TemplateError(f"malformed placeholder near {literal!r}")
            parts.append(re.escape(literal))
            name, kind = m.group(1), m.group(2)
            if name in names:
                raise TemplateError(f"capture {{{name}}} appears twice")
            before = source[m.start() - 1] if m.start() else ""
            after = source[m.end()] if m.end() < len(source) else "/"
            if before != "/" or after != "/":
                raise TemplateError(f"capture {{{name}}} must be a whole path segment")
            names.append(name)
            parts.append(f"(?P<{name}>{_SEGMENT}(?:/{_SEGMENT})*)" if kind else f"(?P<{name}>{_SEGMENT})")
            pos = m.end()
        tail = source[pos:]
        if "{" in tail or "}" in tail:
            raise TemplateError(f"malformed placeholder near {tail!r}")
        parts.append(re.escape(tail))
        return cls(source, re.compile("".join(parts)), tuple(names))

    def match(self, path: str) -> dict[str, str] | None:
        """Decoded captures when ``path`` (normalised, without query) matches the whole template."""
        m = self.pattern.fullmatch(path)
        if m is None:
            return None
        return {name: unquote(value, errors="strict") for name, value in m.groupdict().items()}


def fill(value: str, captures: Mapping[str, str]) -> str:
    """Replace ``{name}`` placeholders with decoded captures (config validation guarantees they exist)."""
    if "{" not in value:
        return value
    return _PLACEHOLDER.sub(lambda m: captures[m.group(1)], value)
