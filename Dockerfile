# syntax=docker/dockerfile:1
#
# gerrit-authz container image (with the redis and otel extras).
#
#   docker build -t gerrit-authz:0.2.0 .
#   docker run --rm -p 9001:9001 \
#       -v "$PWD/config.yaml:/etc/gerrit-authz/config.yaml:ro" \
#       -e GERRIT_AUTHZ_PASSWORD=... gerrit-authz:0.2.0
#
# The configuration is not baked in: mount it at /etc/gerrit-authz/config.yaml.
# In a container, set `server.listen: "0.0.0.0:9001"` so the port is reachable from outside;
# keep `server.admin_listen` on loopback (the Admin API is private; `docker exec` or
# `kubectl port-forward` reach it). The Gerrit password comes from the environment
# (`gerrit.password_env`, e.g. GERRIT_AUTHZ_PASSWORD) or from a mounted file (`gerrit.password_file`).

# ---------------------------------------------------------------------------
# builder: build the wheel and install it with its runtime extras (`redis`: the
# shared cache backend; `otel`: traces) into a self-contained virtualenv, every
# dependency from the hashed lock requirements/image.txt (the versions CI tests).
# ---------------------------------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what the wheel is built from (see also .dockerignore). The `gerrit_authz`
# package lives in protos/gerrit_authz (package-dir mapping in pyproject.toml).
COPY pyproject.toml README.md ./
COPY authz_server/ authz_server/
COPY fastapi_client/ fastapi_client/
COPY protos/ protos/
COPY requirements/image.txt requirements/
COPY scripts/image_venv.sh scripts/

# The virtualenv gets no pip/setuptools of its own: the builder's pip installs into it
# (`pip --python`), so the runtime image carries no packaging or build tooling.
# scripts/image_venv.sh installs `[redis,otel]` from the lock and checks both work
# (tests/deploy/test_packaging.py runs the same script).
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
    && sh scripts/image_venv.sh /opt/gerrit-authz "$(find /tmp/wheels -name 'gerrit_authz-*.whl')"

# ---------------------------------------------------------------------------
# runtime: the slim base image plus the virtualenv; no compilers, no pip.
# ---------------------------------------------------------------------------
FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="gerrit-authz" \
      org.opencontainers.image.description="Envoy ext_authz v3 gRPC service that authorizes HTTP requests with Gerrit" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fixed, non-root uid/gid 10001 (Kubernetes' runAsNonRoot can verify a numeric USER).
RUN groupadd --system --gid 10001 gerrit-authz \
    && useradd --system --uid 10001 --gid gerrit-authz --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gerrit-authz \
    && mkdir -p /etc/gerrit-authz

COPY --from=builder /opt/gerrit-authz /opt/gerrit-authz

ENV PATH=/opt/gerrit-authz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001

# 9001: ext_authz gRPC + grpc.health.v1 + reflection (`server.listen`, e.g. 0.0.0.0:9001).
# 9002: gerrit_authz.v1.Admin (`server.admin_listen`); loopback by default, so it is only
#       reachable from inside the container unless you deliberately bind it elsewhere.
EXPOSE 9001 9002

# Uses the gRPC health service on the main listener; needs nothing but the image's Python.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-m", "authz_server.healthcheck", "127.0.0.1:9001"]

ENTRYPOINT ["gerrit-authz"]
CMD ["serve", "--config", "/etc/gerrit-authz/config.yaml"]
