"""Path templates: ``/artifacts/{project}/-/{branch}/{file:path}``.

``{name}`` matches exactly one non-empty segment, ``{name:path}`` one or more (a final one also takes a trailing
slash: ``out/``, or ``""`` for ``.../main/``, as upstream path converters do). Matching runs on the canonical
path (:func:`authz_server._input.canonical_path`: decoded except ``%2F``/``%25``), so an encoded slash stays inside
its segment; captures are decoded afterwards, which makes ``platform%2Fbuild`` the Gerrit project
``platform/build``. ``{capture}`` placeholders in requirement values are filled with :func:`fill`.

Matching is segment-wise and never backtracks: fixed-length runs of literals and ``{name}`` captures sit between
the ``{name:path}`` captures, and each run is placed once from the left and once from the right, so the cost is
linear in the path length (times the template's own length). When the two placements differ, the path splits
into the template in more than one way (``/{a:path}/+/{b:path}`` against ``/x/+/y/+/z``); upstreams disagree on
such splits (Starlette takes the longest first capture, Gitiles the shortest), so it is refused, not guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from ._input import canonical_path
from ._readings import ascii_fold
from .errors import BadRequest

__all__ = ["PathTemplate", "TemplateError", "fill"]

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(path))?\}")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")

# A run of template segments: a literal string, or None for a one-segment capture.
_Run = tuple[str | None, ...]


class TemplateError(ValueError):
    pass


def _fits(run: _Run, segs: Sequence[str], at: int) -> bool:
    for j, part in enumerate(run):
        seg = segs[at + j]
        if (part is None and not seg) or (part is not None and seg != part):
            return False
    return True


def _leftmost(run: _Run, segs: Sequence[str], lo: int, hi: int) -> int:
    """The first start in ``[lo, hi]`` where ``run`` fits, or -1."""
    for at in range(lo, hi + 1):
        if _fits(run, segs, at):
            return at
    return -1


def _rightmost(run: _Run, segs: Sequence[str], lo: int, hi: int) -> int:
    for at in range(hi, lo - 1, -1):
        if _fits(run, segs, at):
            return at
    return -1


def _segments_ok(text: str, *, trailing_ok: bool) -> bool:
    """``text`` is one or more non-empty segments (with ``trailing_ok``: also ``out/``, or ``""`` after a slash)."""
    if trailing_ok:
        if not text:
            return True
        if text.endswith("/"):
            text = text[:-1]
    return bool(text) and not text.startswith("/") and not text.endswith("/") and "//" not in text


def _compile_literal(segment: str) -> str:
    if "{" in segment or "}" in segment:
        raise TemplateError(f"malformed placeholder near {segment!r}")
    if _BAD_PERCENT.search(segment):
        raise TemplateError(f"invalid percent-encoding in {segment!r}")
    try:
        literal = canonical_path(segment)
    except BadRequest:
        raise TemplateError(f"{segment!r} is not valid UTF-8 once decoded") from None
    if "%2F" in literal:
        raise TemplateError(f"an encoded slash in a literal ({segment!r}) could never be matched unambiguously")
    return literal


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A compiled path template: runs of fixed segments separated by ``{name:path}`` captures."""

    source: str
    names: tuple[str, ...]
    runs: tuple[_Run, ...]  # len(runs) == len(path_names) + 1
    run_names: tuple[tuple[str, ...], ...]  # the one-segment capture names of each run, in order
    path_names: tuple[str, ...]
    head: str = "/"  # the literal text before the first capture: a cheap first test

    @classmethod
    def compile(cls, source: str) -> PathTemplate:
        if not source.startswith("/"):
            raise TemplateError("a path template must start with '/'")
        segments = source.split("/")[1:]
        runs: list[_Run] = []
        run_names: list[tuple[str, ...]] = []
        path_names: list[str] = []
        names: list[str] = []
        run: list[str | None] = []
        these: list[str] = []
        for i, segment in enumerate(segments):
            m = _VAR.fullmatch(segment)
            if m is None:
                if _VAR.search(segment):
                    raise TemplateError(f"capture in {segment!r} must be a whole path segment")
                if segment == "" and i != len(segments) - 1:
                    raise TemplateError("empty segment ('//') in path template")
                run.append(_compile_literal(segment))
                continue
            name = m.group(1)
            if name in names:
                raise TemplateError(f"capture {{{name}}} appears twice")
            names.append(name)
            if m.group(2) is None:
                run.append(None)
                these.append(name)
                continue
            if path_names and not any(part is not None for part in run):
                # Nothing fixed between two {x:path} captures: every longer path would split two ways.
                raise TemplateError(f"{{{name}:path}} needs a literal segment between it and the previous one")
            runs.append(tuple(run))
            run_names.append(tuple(these))
            path_names.append(name)
            run, these = [], []
        runs.append(tuple(run))
        run_names.append(tuple(these))
        literals = [r for r in runs[0]]
        fixed = literals[: literals.index(None)] if None in literals else literals
        head = "/" + "/".join(str(part) for part in fixed) + ("/" if fixed and len(fixed) < len(segments) else "")
        return cls(source, tuple(names), tuple(runs), tuple(run_names), tuple(path_names), head)

    def folded(self) -> PathTemplate:
        """This template with its literals ASCII lower-cased: matches a lower-cased path where a case-insensitive
        router (ASP.NET Core, IIS) would route it. Its captures are not the request's; only whether it matches is."""
        runs = tuple(tuple(part if part is None else ascii_fold(part) for part in run) for run in self.runs)
        return PathTemplate(self.source, self.names, runs, self.run_names, self.path_names, ascii_fold(self.head))

    def _place(self, segs: list[str]) -> list[int] | None:
        """Start index of every run (linear; raises ``ambiguous_path`` when the split is not unique)."""
        runs = self.runs
        n = len(segs)
        first, last = runs[0], runs[-1]
        if len(runs) == 1:
            return [0] if n == len(first) and _fits(first, segs, 0) else None
        fixed = sum(len(r) for r in runs)
        if n < fixed + len(self.path_names):
            return None
        end = n - len(last)
        if not _fits(first, segs, 0) or not _fits(last, segs, end):
            return None
        lo = len(first)
        # Captures never take an empty segment, except the trailing one after a final {x:path}: upstreams'
        # path converters (Starlette's ".*") serve "/files/out/" with that handler, so the rule must apply too.
        inner = end - 1 if not last and segs[-1] == "" else end
        if "" in segs[lo:inner]:
            return None
        middle = runs[1:-1]
        left: list[int] = []
        pos = lo
        room = end - sum(len(r) + 1 for r in middle) - 1  # the latest start of the next run
        for run in middle:
            at = _leftmost(run, segs, pos + 1, room + 1)
            if at < 0:
                return None
            left.append(at)
            pos = at + len(run)
            room += len(run) + 1
        right: list[int] = []
        pos = end
        for run in reversed(middle):
            at = _rightmost(run, segs, lo + 1, pos - 1 - len(run))
            assert at >= 0  # a left placement exists, so a right one does too
            right.append(at)
            pos = at
        right.reverse()
        if left != right:
            raise BadRequest("ambiguous_path", f"the path splits into {self.source!r} in more than one way")
        return [0, *left, end]

    def match(self, path: str) -> dict[str, str] | None:
        """Decoded captures when ``path`` (canonical, without query) matches the whole template."""
        if not path.startswith(self.head):
            return None
        if not self.path_names and path.count("/") != len(self.runs[0]):
            return None
        if len(self.path_names) == 1:
            return self._match_one(path)
        segs = path.split("/")[1:]
        starts = self._place(segs)
        if starts is None:
            return None
        captures: dict[str, str] = {}
        for i, (run, names) in enumerate(zip(self.runs, self.run_names, strict=True)):
            at = starts[i]
            if names:
                values = iter(segs[at + j] for j, part in enumerate(run) if part is None)
                for name in names:
                    captures[name] = next(values)
            if i < len(self.path_names):
                captures[self.path_names[i]] = "/".join(segs[at + len(run) : starts[i + 1]])
        return {name: unquote(captures[name], errors="strict") for name in self.names}

    def _match_one(self, path: str) -> dict[str, str] | None:
        """The common case, one ``{x:path}``: split off the fixed runs in C instead of listing every segment."""
        first, last = self.runs
        parts = path[1:].split("/", len(first))
        if len(parts) <= len(first):
            return None
        middle = parts[-1]
        tail: list[str] = []
        if last:
            tail = middle.rsplit("/", len(last))
            if len(tail) <= len(last):
                return None
            middle = tail.pop(0)
        if not _segments_ok(middle, trailing_ok=not last):
            return None
        if not _fits(first, parts, 0) or not _fits(last, tail, 0):
            return None
        captures: dict[str, str] = {}
        for run, names, segs in ((first, self.run_names[0], parts), (last, self.run_names[1], tail)):
            values = iter(segs[j] for j, part in enumerate(run) if part is None)
            for name in names:
                captures[name] = next(values)
        captures[self.path_names[0]] = middle
        return {name: unquote(captures[name], errors="strict") for name in self.names}


def fill(value: str, captures: Mapping[str, str]) -> str:
    """Replace ``{name}`` placeholders with decoded captures (config validation guarantees they exist)."""
    if "{" not in value:
        return value
    return _PLACEHOLDER.sub(lambda m: captures[m.group(1)], value)
