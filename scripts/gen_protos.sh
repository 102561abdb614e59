#!/usr/bin/env bash
# Regenerates the committed Python code for this project's own protos (protos/gerrit_authz/...).
# Envoy's API is not generated here: it comes from the xds-protos package.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python}" -m grpc_tools.protoc -Iprotos \
  --python_out=protos --pyi_out=protos --grpc_python_out=protos \
  protos/gerrit_authz/v1/admin.proto
