#!/usr/bin/env bash
# The main job on a fresh machine: install everything (scripts/setup.sh), then run the demo — a real Gerrit with
# a small organisation, gerrit-authz, Envoy in front of an echo upstream, the example FastAPI app — and a tour of
# curl calls (allow, 401, 403, an Explain trace). Everything is stopped on exit; --keep-running keeps it up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
