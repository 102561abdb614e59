#!/bin/sh
# The container image's virtualenv: gerrit-authz with its redis and otel extras, every dependency from the hashed
# requirements/image.txt (the versions CI tests), no pip inside. The Dockerfile's builder runs exactly this, and
# tests/deploy/test_packaging.py runs it too (no image can be built there), so the image's install is tested.
#   usage: [PYTHON=python3.11] scripts/image_venv.sh VENV WHEEL   (POSIX sh: the builder stage has no bash guarantee)
# pip's cache is the caller's to choose (the Dockerfile sets PIP_NO_CACHE_DIR).
set -eu
venv="$1"
wheel="$2"
python="${PYTHON:-python}"
lock="$(dirname "$0")/../requirements/image.txt"
pip() { "$python" -m pip --python "$venv/bin/python" --disable-pip-version-check "$@"; }

"$python" -m venv --without-pip "$venv"
pip install --quiet --require-hashes -r "$lock"
# xds-protos ships an older copy of the OpenTelemetry protos in the same package; whichever is installed last wins,
# and the OTLP exporter needs opentelemetry-proto's (as scripts/setup.sh does for the dev venv).
otel_proto="$(mktemp)"
awk '/^opentelemetry-proto==/{p=1} p{print} p && !/\\$/{exit}' "$lock" >"$otel_proto"
pip install --quiet --force-reinstall --no-deps --require-hashes -r "$otel_proto"
rm -f "$otel_proto"
pip install --quiet --no-deps "$wheel"
pip check
# Fails here, not at the first traced Check, when the image could not trace or share a cache.
"$venv/bin/python" -c '
import redis
import authz_server, gerrit_authz.v1
from authz_server._extras import require_otel, require_redis
require_redis()
require_otel("telemetry", http=False)
'
