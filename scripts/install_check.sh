#!/usr/bin/env bash
# CI proves the user's install, not only the dev venv:
#   1. build the wheel and install it into a fresh virtualenv WITHOUT extras; `--version`, `check-config` of the
#      example, `serve` on loopback, a gRPC health Check through grpcurl, SIGTERM -> exit 0; choosing the Redis
#      backend there is exit 2 naming the extra;
#   2. the README's main command (scripts/quickstart.sh) from a bare `git clone` in a temp dir with nothing beside it.
# Needs scripts/setup.sh to have run (grpcurl comes from the dev venv). SKIP_QUICKSTART_CLONE=1 skips step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
grpcurl="$repo/.venv/bin/grpcurl"
work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "install-check: FAIL: $*" >&2; exit 1; }

echo "install-check: building the wheel"
build_flags=(--quiet --no-deps --wheel-dir "$work/wheels")
# Offline when the dev venv's setuptools builds wheels by itself (>= 70.1); else pip's isolated build.
if .venv/bin/python -c 'import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' 2>/dev/null; then
  build_flags+=(--no-build-isolation)
fi
.venv/bin/python -m pip wheel "${build_flags[@]}" "$repo" >/dev/null
wheel="$(ls "$work"/wheels/gerrit_authz-*.whl)"

echo "install-check: installing $(basename "$wheel") without extras into a fresh virtualenv"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
app="$work/venv/bin/gerrit-authz"
if "$work/venv/bin/python" -c 'import redis' 2>/dev/null; then fail "redis was installed without the extra"; fi

cd "$work"  # nothing of the repository on sys.path from here on: only the installed wheel
version="$("$app" --version)"
[[ "$version" == "gerrit-authz $("$work/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("gerrit-authz"))')" ]] \
  || fail "--version printed '$version'"
"$app" check-config "$repo/examples/config.yaml"
[[ "$("$work/venv/bin/python" -m authz_server --version)" == "$version" ]] || fail "python -m authz_server differs"

# Choosing Redis without the extra: exit 2 and the hint, not a crash.
sed -e 's/^  backend: memory.*/  backend: redis/' -e 's/^  # redis_url:/  redis_url:/' "$repo/examples/config.yaml" >redis.yaml
set +e
"$app" check-config redis.yaml 2>redis.err
rc=$?
set -e
[[ $rc -eq 2 ]] || fail "check-config with backend redis exited $rc, want 2"
grep -q "cache.backend: .*pip install 'gerrit-authz\[redis\]'" redis.err || fail "no redis extra hint: $(cat redis.err)"

# serve on loopback ports the kernel picks; Gerrit need not be up for a health Check.
sed -e 's/^  listen: .*/  listen: "127.0.0.1:0"/' -e 's/^  admin_listen: .*/  admin_listen: "127.0.0.1:0"/' \
  "$repo/examples/config.yaml" >serve.yaml
GERRIT_AUTHZ_PASSWORD=install-check "$app" serve --config serve.yaml >serve.out 2>serve.err &
server_pid=$!
address=""
for _ in $(seq 1 100); do  # at most 20 s
  address="$(sed -n 's/^gerrit-authz: ext_authz gRPC listening on //p' serve.out)"
  [[ -n "$address" ]] && break
  kill -0 "$server_pid" 2>/dev/null || fail "serve exited early: $(cat serve.err)"
  sleep 0.2
done
[[ -n "$address" ]] || fail "serve printed no address: $(cat serve.out serve.err)"
health="$("$grpcurl" -plaintext -max-time 10 -d '{"service": ""}' "$address" grpc.health.v1.Health/Check)"
grep -q '"status": "SERVING"' <<<"$health" || fail "health Check answered: $health"
echo "install-check: serve on $address is SERVING"
kill -TERM "$server_pid"
set +e
wait "$server_pid"
rc=$?
set -e
server_pid=""
[[ $rc -eq 0 ]] || fail "serve exited $rc after SIGTERM: $(cat serve.err)"
grep -q "gerrit-authz: stopped" serve.out || fail "serve did not report stopping"
echo "install-check: plain install OK (check-config, serve, health, SIGTERM -> 0) in ${SECONDS}s"

if [[ -n "${SKIP_QUICKSTART_CLONE:-}" ]]; then
  echo "install-check: SKIP_QUICKSTART_CLONE set: the bare-clone quickstart was not run"
  exit 0
fi
# The bare clone: committed files only, in a directory that holds nothing else (no sibling checkout, no dev venv).
mkdir "$work/alone"
git clone --quiet "$repo" "$work/alone/gerrit-authz"
[[ "$(ls -A "$work/alone")" == "gerrit-authz" ]] || fail "something sits beside the clone"
echo "install-check: scripts/quickstart.sh from a bare clone"
(cd "$work/alone/gerrit-authz" && timeout 900 scripts/quickstart.sh >"$work/quickstart.out" 2>&1) \
  || { tail -n 60 "$work/quickstart.out" >&2; fail "quickstart from a bare clone failed"; }
grep -q "tour complete" "$work/quickstart.out" || fail "the quickstart tour did not complete"
echo "install-check: quickstart from a bare clone OK (${SECONDS}s in all)"
