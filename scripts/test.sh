#!/usr/bin/env bash
# The test command: set up (idempotent), then lint, type-check and run every test, real Gerrit, Envoy,
# Redis, grpcurl and OIDC provider included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy
python -m pytest -q -p no:cacheprovider "$@"
