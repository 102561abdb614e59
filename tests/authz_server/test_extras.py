"""Plain install: the Redis backend is imported only when chosen, and a missing ``redis`` extra is a config error."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from authz_server._extras import REDIS_HINT, require_redis
from authz_server.cli import main
from authz_server.config import parse_config
from authz_server.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
REDIS_CONFIG = {
    "gerrit": {"url": "http://127.0.0.1:1", "username": "bot", "password_env": "X"},
    "cache": {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"},
    "rules": [{"name": "all", "require": "anyone"}],
}


def without(*missing: str) -> tuple[list[str], object]:
    """An import seam that plays a machine where the ``missing`` modules are not installed."""
    asked: list[str] = []

    def import_module(name: str) -> ModuleType:
        asked.append(name)
        if name.split(".")[0] in missing or name in missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return importlib.import_module(name)

    return asked, import_module


def test_missing_redis_client_is_a_config_error_naming_the_extra() -> None:
    asked, seam = without("redis")
    with pytest.raises(ConfigError) as info:
        require_redis(seam)  # type: ignore[arg-type]
    assert info.value.errors == [("cache.backend", REDIS_HINT)]
    assert "pip install 'gerrit-authz[redis]'" in REDIS_HINT
    assert asked == ["redis.asyncio"]


def test_aiocache_without_its_redis_backend_is_the_same_config_error() -> None:
    _, seam = without("aiocache.backends.redis")
    with pytest.raises(ConfigError) as info:
        require_redis(seam)  # type: ignore[arg-type]
    assert info.value.errors == [("cache.backend", REDIS_HINT)]


def test_installed_redis_extra_passes() -> None:
    asked, seam = without()
    require_redis(seam)  # type: ignore[arg-type]
    assert asked == ["redis.asyncio", "aiocache.backends.redis"]
    assert parse_config(REDIS_CONFIG).cache.backend == "redis"


def test_service_works_with_memory_backend_when_redis_cannot_be_imported(tmp_path: Path) -> None:
    # A fresh interpreter in which `import redis` fails, as on a plain install: the whole service imports,
    # the example loads, a memory store works, and choosing redis is the config error (exit 2).
    code = (
        "import asyncio, sys\n"
        "sys.modules['redis'] = None\n"
        "from authz_server import cli, _server, _app\n"
        "from authz_server._store import make_store\n"
        "from authz_server.config import load_config\n"
        "load_config('examples/config.yaml')\n"
        "store = make_store('memory')\n"
        "from authz_server._store import Entry\n"
        "snap = asyncio.run(store.snapshot())\n"
        "asyncio.run(store.write('k|', Entry(1, 9e9, 9e9, snap, (1,)), 5))\n"
        "assert asyncio.run(store.read('k|'))[0].payload == 1\n"
        "sys.exit(cli.main(['check-config', sys.argv[1]]))\n"
    )
    path = tmp_path / "redis.yaml"
    path.write_text(yaml.safe_dump(REDIS_CONFIG))
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "cache.backend: " + REDIS_HINT in out.stderr


def test_check_config_exits_2_when_the_extra_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI path in this process, with the extra made unimportable the way Python itself reports it.
    path = tmp_path / "redis.yaml"
    path.write_text(yaml.safe_dump(REDIS_CONFIG))
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # type: ignore[arg-type]
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "cache.backend" in err and "pip install 'gerrit-authz[redis]'" in err


def test_otel_protos_shadowed_by_xds_protos_name_the_reinstall() -> None:
    # xds-protos ships an older opentelemetry/proto (no InstrumentationScope); installed after opentelemetry-proto,
    # its files win and the OTLP exporter cannot import: the error says how to mend it, not "install the extra".
    import types

    from authz_server._extras import OTEL_SHADOWED_HINT, require_otel

    old_proto = types.ModuleType("opentelemetry.proto.common.v1.common_pb2")

    def shadowed(name: str) -> types.ModuleType:
        if name == "opentelemetry.proto.common.v1.common_pb2":
            return old_proto
        raise ImportError("cannot import name 'InstrumentationScope'")

    with pytest.raises(ConfigError) as err:
        require_otel("telemetry.traces_exporter", import_module=shadowed)
    assert err.value.errors == [("telemetry.traces_exporter", OTEL_SHADOWED_HINT)]
    assert "pip install --force-reinstall --no-deps opentelemetry-proto" in OTEL_SHADOWED_HINT
