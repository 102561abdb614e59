"""TrustFiles: an upstream's trust rebuilt, whole, when its files change (a CA removed from the bundle stops being
trusted), never from files that do not load, and looked at no more than once per interval. The real Gerrit behind
TLS follows the same files in tests/authz_server/test_upstream_trust_gerrit.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from _support.tls import TestCA

from authz_server._gerrit import make_http_client
from authz_server._trust import RotatingTransport, TrustFiles


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def subjects(trust: TrustFiles) -> set[str]:
    return {
        value
        for ca in trust.context.get_ca_certs()
        for rdn in ca["subject"]
        for key, value in rdn
        if key == "commonName"
    }


def test_a_bundle_change_builds_a_new_context_holding_exactly_the_new_bundle(tmp_path: Path) -> None:
    corp, other = TestCA(tmp_path, "corp CA"), TestCA(tmp_path, "other CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(corp.cert.read_bytes() + other.cert.read_bytes())
    clock = Clock()
    trust = TrustFiles("gerrit", ca_file=bundle, clock=clock)
    first = trust.context
    assert subjects(trust) == {"corp CA", "other CA"}

    bundle.write_bytes(other.cert.read_bytes())  # the corp CA removed
    assert not trust.refresh()  # not looked at before the interval is over
    clock.now += 1.0
    assert trust.refresh()
    assert trust.context is not first and subjects(trust) == {"other CA"}
    clock.now += 1.0
    assert not trust.refresh() and trust.reloads == 1  # unchanged files: nothing rebuilt


def test_files_that_do_not_load_keep_the_trust_in_use(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    corp = TestCA(tmp_path, "corp CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(corp.cert.read_bytes())
    clock = Clock()
    trust = TrustFiles("identity[0].jwt", ca_file=bundle, clock=clock)
    kept = trust.context
    bundle.write_bytes(b"-----BEGIN CERTIFICATE-----\nhalf written")
    clock.now += 1.0
    with caplog.at_level(logging.WARNING, logger="gerrit_authz.tls"):
        assert not trust.refresh()
    assert trust.context is kept and subjects(trust) == {"corp CA"}
    assert "identity[0].jwt.ca_file" in caplog.text and "keeping the previous trust" in caplog.text
    caplog.clear()
    clock.now += 1.0
    assert not trust.refresh() and not caplog.text  # the same broken files: warned once
    bundle.unlink()  # missing altogether: the same
    clock.now += 1.0
    assert not trust.refresh() and trust.context is kept


def test_a_client_certificate_is_taken_only_once_its_key_matches(tmp_path: Path) -> None:
    corp = TestCA(tmp_path, "corp CA")
    old, new = corp.issue("authz-old"), corp.issue("authz-new")
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    cert.write_bytes(old.cert.read_bytes())
    key.write_bytes(old.key.read_bytes())
    clock = Clock()
    trust = TrustFiles("gerrit", ca_file=corp.cert, cert_file=cert, key_file=key, clock=clock)
    kept = trust.context
    cert.write_bytes(new.cert.read_bytes())  # the certificate first: the pair disagrees meanwhile
    clock.now += 1.0
    assert not trust.refresh() and trust.context is kept
    key.write_bytes(new.key.read_bytes())
    clock.now += 1.0
    assert trust.refresh() and trust.context is not kept


async def test_behind_a_proxy_from_the_environment_the_proxy_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx reads HTTPS_PROXY only with its own transport: there the trust is used as read, never the proxy lost."""
    trust = TrustFiles("gerrit", ca_file=TestCA(tmp_path, "corp CA").cert)
    direct = make_http_client(verify=trust)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    proxied = make_http_client(verify=trust)
    try:
        assert isinstance(direct._transport, RotatingTransport)  # httpx keeps no public handle on either
        assert not isinstance(proxied._transport, RotatingTransport)
        assert any(t is not None for t in proxied._mounts.values())
    finally:
        await direct.aclose()
        await proxied.aclose()
