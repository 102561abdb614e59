"""What `pip install .` without extras gets: every package in the wheel, and every import of the service a core dep.

The full proof (a fresh virtualenv, serve, a health Check) is ``scripts/install_check.sh``, run by CI.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OWN = {"authz_server", "fastapi_client", "gerrit_authz"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: set[str]) -> set[str]:
    """The distributions ``names`` install, transitively, without any extra."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def _top_level_imports(package: Path) -> set[str]:
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - OWN - {"__future__"}


def test_every_import_of_the_service_comes_with_a_core_dependency() -> None:
    core = _closure({_name(r) for r in PYPROJECT["project"]["dependencies"]})
    providers = md.packages_distributions()
    imports = _top_level_imports(ROOT / "authz_server")
    assert {"grpc", "httpx", "pydantic", "aiocache"} <= imports  # the scan itself works
    orphans = {
        module: providers.get(module, ["?"])
        for module in sorted(imports)
        if not {_name(d) for d in providers.get(module, [])} & core
    }
    assert not orphans, f"authz_server imports modules no core dependency installs: {orphans}"


def test_extras_hold_what_only_an_option_needs() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    core = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert {_name(r) for r in extras["redis"]} == {"redis"} and "redis" not in core
    assert {"fastapi", "starlette"} <= {_name(r) for r in extras["fastapi"]}
    assert not {"fastapi", "starlette", "redis", "uvicorn", "pytest"} & core


def test_the_wheel_holds_every_package(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("gerrit_authz-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = [
        *(
            p.relative_to(ROOT).as_posix()
            for top in ("authz_server", "fastapi_client")
            for p in (ROOT / top).rglob("*.py")
        ),
        *(p.relative_to(ROOT / "protos").as_posix() for p in (ROOT / "protos" / "gerrit_authz").rglob("*.py")),
    ]
    missing = sorted(s for s in sources if "__pycache__" not in s and s not in names)
    if not sources:
        pytest.fail("no sources found")
    assert not missing, f"the wheel lacks: {missing}"
