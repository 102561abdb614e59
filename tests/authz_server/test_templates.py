"""Path templates: ``{x}`` is one segment, ``{x:path}`` one or more; captures are percent-decoded after matching."""

from __future__ import annotations

import pytest

from authz_server._templates import PathTemplate, TemplateError, fill

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
    assert ARTIFACTS.match("/artifacts/p/-/main/") is None


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
