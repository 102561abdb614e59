"""Path templates: ``{x}`` is one segment, ``{x:path}`` one or more; captures are percent-decoded after matching."""

from __future__ import annotations

import time

import pytest

from authz_server._templates import PathTemplate, TemplateError, fill
from authz_server.errors import BadRequest

ARTIFACTS = PathTemplate.compile("/artifacts/{project}/-/{branch}/{file:path}")


def test_single_segment_capture() -> None:
    assert PathTemplate.compile("/deploy/{change}").match("/deploy/12345") == {"change": "12345"}


def test_single_segment_capture_does_not_span_segments() -> None:
    template = PathTemplate.compile("/deploy/{change}")
    assert template.match("/deploy/1/2") is None
    assert template.match("/deploy/") is None  # a capture is never empty


def test_path_capture_takes_one_or_more_segments() -> None:
    assert ARTIFACTS.match("/artifacts/p/-/main/out/sub/app.tar") == {
        "project": "p",
        "branch": "main",
        "file": "out/sub/app.tar",
    }
    assert ARTIFACTS.match("/artifacts/p/-/main/app.tar") == {"project": "p", "branch": "main", "file": "app.tar"}


def test_encoded_slash_stays_in_its_segment_and_decodes_to_slash() -> None:
    # The example config's comment: GET /artifacts/platform%2Fbuild/-/main/out/app.tar -> project platform/build
    assert ARTIFACTS.match("/artifacts/platform%2Fbuild/-/main/out/app.tar") == {
        "project": "platform/build",
        "branch": "main",
        "file": "out/app.tar",
    }


def test_other_escapes_decode_in_captures() -> None:
    assert PathTemplate.compile("/x/{name}").match("/x/a%20b%25c") == {"name": "a b%c"}


def test_captures_with_invalid_utf8_raise() -> None:
    with pytest.raises(UnicodeDecodeError):
        PathTemplate.compile("/x/{name}").match("/x/%FF")


@pytest.mark.parametrize(
    "path",
    [
        "/artifact/p/-/main/a",  # literal differs
        "/artifacts/p/+/main/a",
        "/artifacts/p/-/main",  # missing the file
        "/prefix/artifacts/p/-/main/a",  # must match the whole path
        "/ARTIFACTS/p/-/main/a",  # literals are case-sensitive
    ],
)
def test_literal_mismatch(path: str) -> None:
    assert ARTIFACTS.match(path) is None


def test_literals_are_not_regular_expressions() -> None:
    template = PathTemplate.compile("/a.b/{x}")
    assert template.match("/a.b/1") == {"x": "1"}
    assert template.match("/aXb/1") is None


def test_template_without_captures_matches_exactly() -> None:
    template = PathTemplate.compile("/healthz")
    assert template.match("/healthz") == {}
    assert template.match("/healthz/") is None
    assert template.match("/healthzz") is None


@pytest.mark.parametrize(
    "source",
    [
        "/a{x}",  # not the whole segment
        "/{x}b",
        "/a/{x}.tar",
        "/a/v{x:path}",
        "/a/{x}{y}",
    ],
)
def test_capture_must_be_a_whole_segment(source: str) -> None:
    with pytest.raises(TemplateError, match="whole path segment"):
        PathTemplate.compile(source)


def test_duplicate_capture_names_are_an_error() -> None:
    with pytest.raises(TemplateError, match="twice"):
        PathTemplate.compile("/{x}/-/{x}")


GITILES = PathTemplate.compile("/plugins/gitiles/{project:path}/+/{ref}/{file:path}")


def test_several_path_captures_split_at_the_literals() -> None:
    assert GITILES.match("/plugins/gitiles/platform/build/+/main/docs/a.md") == {
        "project": "platform/build",
        "ref": "main",
        "file": "docs/a.md",
    }
    # A '+' later in the file is not a second split: the ref must be followed by at least one file segment.
    assert GITILES.match("/plugins/gitiles/p/+/main/docs/+/x.md") == {
        "project": "p",
        "ref": "main",
        "file": "docs/+/x.md",
    }
    assert GITILES.match("/plugins/gitiles/p/+/main") is None
    assert GITILES.match("/plugins/gitiles/+/main/f") is None  # the project capture is never empty


def test_a_path_that_splits_two_ways_is_refused_not_guessed() -> None:
    # Starlette would make the project "a/+/b", Gitiles "a": refuse rather than authorize one of them.
    with pytest.raises(BadRequest) as info:
        GITILES.match("/plugins/gitiles/a/+/b/+/main/f")
    assert info.value.code == "ambiguous_path"


def test_matching_is_linear_on_a_long_adversarial_path() -> None:
    # The former regex took seconds on 60 KB with two {x:path} captures (and grew with the cube for three).
    three = PathTemplate.compile("/{a:path}/x/{b:path}/y/{c:path}/z")
    started = time.perf_counter()
    assert three.match("/" + "x/" * 30_000 + "z") is None  # every "x" is a candidate, no "y" anywhere
    assert three.match("/a/x/" + "b/" * 30_000 + "y/c/z") is not None
    assert GITILES.match("/plugins/gitiles/" + "a/" * 30_000 + "+/main/f") is not None
    with pytest.raises(BadRequest):
        GITILES.match("/plugins/gitiles/" + "/".join(["+"] * 30_000))
    assert time.perf_counter() - started < 2.0  # a generous bound: a backtracking matcher needs minutes


def test_path_capture_in_the_middle_with_fixed_runs_on_both_sides() -> None:
    template = PathTemplate.compile("/r/{a}/{rest:path}/end/{b}")
    assert template.match("/r/1/x/y/end/2") == {"a": "1", "rest": "x/y", "b": "2"}
    assert template.match("/r/1/end/2") is None


def test_a_final_path_capture_takes_a_trailing_slash_as_upstream_path_converters_do() -> None:
    assert ARTIFACTS.match("/artifacts/p/-/main/out/") == {"project": "p", "branch": "main", "file": "out/"}
    assert ARTIFACTS.match("/artifacts/p/-/main/") == {"project": "p", "branch": "main", "file": ""}
    assert PathTemplate.compile("/a/{x:path}/b").match("/a/x//b") is None  # not in the middle
    assert PathTemplate.compile("/a/{x:path}/b").match("/a/x/b/") is None
    assert PathTemplate.compile("/admin/").match("/admin/") == {}


def test_literals_are_compared_decoded() -> None:
    # The path is matched decoded, so a literal written with an escape is that character.
    template = PathTemplate.compile("/src/{project}/%2B/{file:path}")
    assert template.match("/src/p/+/f") == {"project": "p", "file": "f"}


@pytest.mark.parametrize(
    "source", ["/a%2Fb/{x}", "/a/%2f", "/{a:path}/{b:path}", "/{a:path}/{x}/{b:path}", "/a//b", "/100%"]
)
def test_templates_that_cannot_match_one_way_are_an_error(source: str) -> None:
    with pytest.raises(TemplateError):
        PathTemplate.compile(source)


@pytest.mark.parametrize("source", ["/a/{x", "/a/x}", "/a/{1x}", "/a/{x:segment}", "/{}"])
def test_malformed_placeholders_are_an_error(source: str) -> None:
    with pytest.raises(TemplateError, match="malformed placeholder"):
        PathTemplate.compile(source)


def test_template_must_start_with_slash() -> None:
    with pytest.raises(TemplateError):
        PathTemplate.compile("artifacts/{x}")


def test_names_in_order() -> None:
    assert ARTIFACTS.names == ("project", "branch", "file")


def test_fill_replaces_placeholders() -> None:
    captures = {"project": "platform/build", "branch": "main"}
    assert fill("refs/heads/{branch}", captures) == "refs/heads/main"
    assert fill("{project}:{branch}", captures) == "platform/build:main"
    assert fill("read", captures) == "read"


def test_fill_does_not_expand_placeholders_inside_captured_values() -> None:
    assert fill("{a}/{b}", {"a": "{b}", "b": "x"}) == "{b}/x"
