#!/usr/bin/env bash
# Installs everything gerrit-authz needs on a fresh machine of this kind (Debian, Python 3.11, Java 17, Maven):
# Debian packages (redis-server, wrk, nghttp2-client), a virtualenv in .venv with exactly the versions of the
# committed lock (requirements/dev.txt, hashed; scripts/lock.sh refreshes it) and the project itself, editable,
# and a real Gerrit runtime fetched from Maven Central into ~/.cache/gerrit-authz. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v mvn >/dev/null || need_apt+=(maven)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
if ((${#need_apt[@]})); then
  echo "setup: apt-get install ${need_apt[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements/dev.txt
# xds-protos ships an older copy of the OpenTelemetry protos in the same package; whichever is installed last wins.
# opentelemetry-proto's must (the OTLP exporter needs its newer messages; Envoy's modules only need a subset).
otel_proto="$(mktemp)"
awk '/^opentelemetry-proto==/{p=1} p{print} p && !/\\$/{exit}' requirements/dev.txt >"$otel_proto"
.venv/bin/python -m pip install -q --disable-pip-version-check --force-reinstall --no-deps --require-hashes \
  -r "$otel_proto"
rm -f "$otel_proto"
# The project itself, built with the locked setuptools (no isolated build fetching the newest one) and no
# dependency resolution: everything it needs is already installed from the lock.
# (PYTHONWARNINGS: setuptools otherwise prints a multi-line "Editable installation" warning on every run.)
PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .

scripts/fetch_gerrit.sh >/dev/null
echo "setup: done (.venv ready, Gerrit runtime cached)"
