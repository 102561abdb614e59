"""The committed generated code for protos/gerrit_authz must be what grpcio-tools makes of the .proto today."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATED = ("admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py")


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    shutil.copytree(REPO / "protos", tmp_path / "protos", ignore=shutil.ignore_patterns(*GENERATED, "__pycache__"))
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    subprocess.run(
        ["bash", "scripts/gen_protos.sh"],
        cwd=tmp_path,
        check=True,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    for name in GENERATED:
        fresh = (tmp_path / "protos/gerrit_authz/v1" / name).read_text()
        committed = (REPO / "protos/gerrit_authz/v1" / name).read_text()
        assert fresh == committed, f"{name} drifted from admin.proto: run scripts/gen_protos.sh and commit"


def test_admin_service_is_importable_from_the_installed_package() -> None:
    from gerrit_authz.v1 import admin_pb2

    methods = admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods_by_name
    assert sorted(methods) == ["Explain", "Invalidate"]
