"""CLI conventions: --version from the package metadata, plain help texts, `python -m authz_server` is the script."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from authz_server.cli import _parser

REPO = Path(__file__).resolve().parents[2]
REST_MARKUP = re.compile(r"``|:(class|func|meth|data|mod|attr):`")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def console_script() -> str:
    found = shutil.which("gerrit-authz", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"no gerrit-authz console script next to {sys.executable}: install the project (pip install .)")
    return found


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_version_comes_from_the_package_metadata() -> None:
    out = run(console_script(), "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"gerrit-authz {version('gerrit-authz')}"


@pytest.mark.parametrize(
    "argv", [["--version"], ["--help"], ["serve", "--help"], ["check-config", "--help"], ["explain", "--help"]]
)
def test_python_m_authz_server_is_the_console_script(argv: list[str]) -> None:
    script = run(console_script(), *argv)
    module = run(sys.executable, "-m", "authz_server", *argv)
    assert (module.returncode, module.stdout, module.stderr) == (script.returncode, script.stdout, script.stderr)
    assert script.returncode == 0 and script.stdout


def test_python_m_authz_server_reports_config_errors_like_the_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: []\nsurprise: 1\n")
    script = run(console_script(), "check-config", str(bad))
    module = run(sys.executable, "-m", "authz_server", "check-config", str(bad))
    assert script.returncode == module.returncode == 2
    assert script.stderr == module.stderr and "surprise: unknown key" in module.stderr


def test_every_subcommand_and_option_is_described_without_rest_markup() -> None:
    parser = _parser()
    texts = [parser.description or "", parser.format_help()]
    commands = subcommands()
    assert set(commands) == {"serve", "check-config", "explain"}
    for name, sub in commands.items():
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
        texts.append(sub.format_help())
    for text in texts:
        assert not REST_MARKUP.search(text), text
