#!/usr/bin/env bash
# Refreshes the committed locks from pyproject.toml's ranges (run after changing a dependency, then commit):
#   requirements/dev.txt      the development and CI toolchain: the package, every extra, dev tools, build tools
#   requirements/runtime.txt  what `pip install gerrit-authz` (no extras) resolves to, for the install check
#   requirements/image.txt    the container image: the package with its redis and otel extras, at dev.txt's pins
# Both are hashed and for CPython 3.11 on x86_64 Linux (glibc 2.36, Debian 12): the machines this project runs on.
# uv only resolves here; installing uses plain pip (`pip install --require-hashes -r requirements/dev.txt`).
# UPGRADE=1 moves every pin to the newest version the ranges allow; otherwise the pins already locked are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
uv_version="0.13.10"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/gerrit-authz/uv-$uv_version"
if [[ ! -x "$tools/bin/uv" ]]; then
  python3 -m venv "$tools"
  "$tools/bin/python" -m pip install -q --disable-pip-version-check "uv==$uv_version"
fi
flags=(--quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_36 --no-header)
[[ -n "${UPGRADE:-}" ]] && flags+=(--upgrade)
"$tools/bin/uv" pip compile "${flags[@]}" pyproject.toml requirements/tools.in --all-extras -o requirements/dev.txt
"$tools/bin/uv" pip compile "${flags[@]}" pyproject.toml -o requirements/runtime.txt
"$tools/bin/uv" pip compile "${flags[@]}" pyproject.toml --extra redis --extra otel --constraints requirements/dev.txt \
  -o requirements/image.txt
echo "lock: requirements/dev.txt, runtime.txt and image.txt written; commit them"
