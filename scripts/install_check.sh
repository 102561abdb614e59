#!/usr/bin/env bash
# CI proves the user's install, not only the dev venv:
#   1. build the wheel and install it into a fresh virtualenv WITHOUT extras, its dependencies from the lock
#      (`pip install --require-hashes -r requirements/runtime.txt`, then the wheel with --no-deps, then `pip check`,
#      so the lock is proven to satisfy the package's ranges); `--version`, `check-config` of the example, `serve`
#      on loopback, a gRPC health Check through grpcurl, SIGTERM -> exit 0; choosing the Redis backend there is
#      exit 2 naming the extra;
#   2. the README's set-up from a bare `git clone` in a temp dir with nothing beside it and an EMPTY $HOME (no pip
#      cache, no Maven repository, no cached Gerrit: everything comes from the lock and Maven Central, as on a new
#      machine; ~2-4 min): the main command `scripts/quickstart.sh --keep-running` up to its tour's end, its
#      ACCESS.txt, then Ctrl-C (SIGINT) -> exit 0 with no process left; then the clone's own venv runs the checks
#      that depend on the toolchain's versions (ruff, mypy, the generated-code drift test).
# Needs scripts/setup.sh to have run (grpcurl comes from the dev venv). SKIP_QUICKSTART_CLONE=1 skips step 2.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
grpcurl="$repo/.venv/bin/grpcurl"
work="$(mktemp -d)"
server_pid=""
demo_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid"; fi
  if [[ -n "$demo_pid" ]] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -INT "$demo_pid"
    for _ in $(seq 1 60); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$demo_pid" 2>/dev/null && kill -KILL "$demo_pid"
  fi
  chmod -R u+w "$work" 2>/dev/null || true  # Go and Maven caches may hold read-only files
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

echo "install-check: installing $(basename "$wheel") without extras into a fresh virtualenv, from the lock"
python3 -m venv "$work/venv"
pip_quiet=(--quiet --disable-pip-version-check)
"$work/venv/bin/python" -m pip install "${pip_quiet[@]}" --require-hashes -r "$repo/requirements/runtime.txt"
"$work/venv/bin/python" -m pip install "${pip_quiet[@]}" --no-deps "$wheel"
"$work/venv/bin/python" -m pip check || fail "the runtime lock does not satisfy the package's requirements"
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
# The bare clone: committed files only, in a directory that holds nothing else (no sibling checkout, no dev venv),
# set up with an empty HOME: nothing cached from an earlier run helps.
mkdir "$work/alone" "$work/home"
git clone --quiet "$repo" "$work/alone/gerrit-authz"
[[ "$(ls -A "$work/alone")" == "gerrit-authz" ]] || fail "something sits beside the clone"
clone="$work/alone/gerrit-authz"
clone_env=(env -u XDG_CACHE_HOME -u PIP_CACHE_DIR -u GERRIT_AUTHZ_CACHE -u MAVEN_OPTS -u VIRTUAL_ENV HOME="$work/home")
in_clone() { (cd "$clone" && exec "${clone_env[@]}" "$@"); }
echo "install-check: scripts/quickstart.sh --keep-running from a bare clone, HOME empty"
# exec all the way down (subshell -> env -> quickstart.sh -> python), so that $! is the demo itself: a shell
# between them would ignore SIGINT (background jobs of a non-interactive shell do) and never pass it on.
(cd "$clone" && exec "${clone_env[@]}" scripts/quickstart.sh --keep-running) >"$work/quickstart.out" 2>&1 &
demo_pid=$!
for _ in $(seq 1 900); do  # at most 15 min (all downloads included)
  grep -q "press Ctrl-C to stop" "$work/quickstart.out" && break
  kill -0 "$demo_pid" 2>/dev/null || { tail -n 60 "$work/quickstart.out" >&2; fail "quickstart from a bare clone failed"; }
  sleep 1
done
grep -q "tour complete" "$work/quickstart.out" || { tail -n 60 "$work/quickstart.out" >&2; fail "the tour did not complete"; }
access="$clone/.quickstart/ACCESS.txt"
[[ -s "$access" ]] || fail "the quickstart wrote no $access"
for piece in config.yaml credentials.env 127.0.0.1:9002 /metrics; do
  grep -q "$piece" "$access" || fail "ACCESS.txt does not say how to reach $piece"
done
curl -sf --max-time 10 http://127.0.0.1:9003/metrics | grep -q '^gerrit_authz_decisions_total' \
  || fail "the quickstart's metrics URL answers no decisions"
echo "install-check: quickstart up (${SECONDS}s); Ctrl-C"
kill -INT "$demo_pid"
set +e
wait "$demo_pid"
rc=$?
set -e
demo_pid=""
[[ $rc -eq 0 ]] || { tail -n 30 "$work/quickstart.out" >&2; fail "quickstart exited $rc after Ctrl-C, want 0"; }
grep -q "stopped every process" "$work/quickstart.out" || fail "the quickstart did not report stopping"
sleep 1
# Every piece ran from the clone's venv or the empty HOME's Gerrit: none may be left.
if left="$(pgrep -af -- "$work/")"; then fail "processes left after Ctrl-C: $left"; fi
[[ -s "$access" ]] || fail "ACCESS.txt was deleted on exit"

echo "install-check: the test command's toolchain in the bare clone (lint, types, generated-code drift)"
in_clone .venv/bin/ruff check --quiet . || fail "ruff in the bare clone"
in_clone .venv/bin/ruff format --check --quiet . || fail "ruff format in the bare clone"
in_clone .venv/bin/mypy >/dev/null || fail "mypy in the bare clone"
in_clone .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_protos_drift.py >"$work/drift.out" 2>&1 \
  || { cat "$work/drift.out" >&2; fail "the generated-code drift test in the bare clone"; }
echo "install-check: bare clone with an empty HOME OK (${SECONDS}s in all)"
