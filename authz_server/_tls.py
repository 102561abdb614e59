"""TLS for the gRPC listeners, with certificates re-read when their files change.

grpc's dynamic server credentials ask a *fetcher* for the certificate configuration at every new handshake. Ours
compares the files' identities (device, inode, mtime, size) with what it loaded and re-reads them when any changed,
so a certificate rotated by cert-manager or a Vault agent is served to the next connection: no restart, and the
connections already open (Envoy keeps one per worker) finish their Checks undisturbed. A half-written pair (the
key of the new certificate not there yet) is not installed: the previous pair keeps serving until the files agree.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ._secrets import FileIdentity, file_identity
from .config import TlsConfig
from .errors import ConfigError

__all__ = ["CertificateFiles", "TlsMaterial"]

log = logging.getLogger("gerrit_authz.tls")


@dataclass(frozen=True)
class TlsMaterial:
    """One consistent read of the files."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    serial: int


def _read(path: Path, key: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([(key, f"cannot read {path}: {exc.strerror}")]) from None
    if not data.strip():
        raise ConfigError([(key, f"{path} is empty")])
    return data


def load_material(tls: TlsConfig, where: str) -> TlsMaterial:
    """Read and check the files (the key must belong to the certificate); :class:`ConfigError` names the key."""
    cert = _read(tls.cert_file, f"{where}.cert_file")
    key = _read(tls.key_file, f"{where}.key_file")
    ca = _read(tls.client_ca_file, f"{where}.client_ca_file") if tls.client_ca_file is not None else None
    try:
        leaf = x509.load_pem_x509_certificate(cert)
    except ValueError:
        raise ConfigError([(f"{where}.cert_file", "not a PEM certificate")]) from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise ConfigError([(f"{where}.key_file", "not an unencrypted PEM private key")]) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigError([(f"{where}.key_file", "the key does not belong to cert_file's certificate")])
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError:
            raise ConfigError([(f"{where}.client_ca_file", "not PEM certificates")]) from None
    return TlsMaterial(cert, key, ca, leaf.serial_number)


class CertificateFiles:
    """The certificate, key and client CA of one listener, served as grpc credentials that follow the files."""

    def __init__(self, tls: TlsConfig, where: str) -> None:
        self._tls = tls
        self._where = where
        self._paths = (tls.cert_file, tls.key_file, tls.client_ca_file)
        self._lock = threading.Lock()  # the fetcher runs on grpc's threads
        self._stamps = self._current_stamps()
        self.material = load_material(tls, where)  # fails at start-up, naming the key
        self.reloads = 0

    def _current_stamps(self) -> tuple[FileIdentity, ...]:
        return tuple(file_identity(p) for p in self._paths)

    def _configuration(self, material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials; client certificates are required when ``client_ca_file`` is set."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self.material),
            self.fetch,  # type: ignore[arg-type]  # grpc accepts None ("keep the current one"); the stub omits it
            require_client_authentication=self._tls.client_ca_file is not None,
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc's per-handshake question: a new configuration when the files changed, else ``None`` (keep)."""
        stamps = self._current_stamps()
        if stamps == self._stamps:
            return None
        with self._lock:
            if stamps == self._stamps:
                return None
            # Mid-rotation (a file missing or the pair not matching yet) the previous pair keeps serving, and the
            # files are tried again when they change next: warned once per change, not at every handshake.
            self._stamps = stamps
            try:
                material = load_material(self._tls, self._where)
            except ConfigError as exc:
                log.warning("%s: %s; keeping the previous certificate", *exc.errors[0])
                return None
            except Exception as exc:  # never let the handshake path raise
                log.warning("%s: cannot reload the certificate (%s); keeping the previous one", self._where, exc)
                return None
            changed = material != self.material
            self.material = material
        if not changed:
            return None
        self.reloads += 1
        log.info("%s: certificate re-read (serial %x)", self._where, material.serial)
        return self._configuration(material)
