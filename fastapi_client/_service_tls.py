"""TLS towards gerrit-authz: the service's CA, an optional client certificate (mTLS), re-read when the files change.

grpc fixes a channel's credentials when the channel is made, so rotation means a new channel: the pool looks at
the files' identities (device, inode, mtime, size) at most every ``check_interval`` seconds, and when they changed
(and the certificate and key agree again) the next Check goes over a new channel while the old one is closed
after a grace period, letting Checks already on it finish.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

# The one file-identity helper of the distribution (fastapi_client already builds on authz_server.checkrequest).
from authz_server._secrets import FileIdentity, file_identity

__all__ = ["ServiceTls"]


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class ServiceTls:
    """How :class:`~fastapi_client.AuthzMiddleware` reaches a TLS listener.

    Args:
        ca_file: the CA(s) the service's certificate must chain to (PEM); default: grpc's bundled roots.
        cert_file: a client certificate (PEM) for a listener that requires one (``server.tls.client_ca_file``).
        key_file: its private key (PEM, unencrypted); required with ``cert_file``.
        server_name: the name to verify the service's certificate against, when the target address is not it.
        check_interval: seconds between looks at the files for a rotation.
    """

    ca_file: str | os.PathLike[str] | None = None
    cert_file: str | os.PathLike[str] | None = None
    key_file: str | os.PathLike[str] | None = None
    server_name: str | None = None
    check_interval: float = 5.0

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.check_interval < 0:
            raise ValueError("check_interval must not be negative")

    def _paths(self) -> tuple[Path | None, ...]:
        return (_path(self.ca_file), _path(self.cert_file), _path(self.key_file))

    def stamp(self) -> tuple[FileIdentity, ...]:
        """The files' identities now: a change means the credentials must be read again."""
        return tuple(file_identity(p) for p in self._paths())

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files now. Raises ``ValueError`` while the key does not belong to the certificate (mid-rotation)
        and ``OSError`` when a file cannot be read."""
        ca, cert, key = self._paths()
        root = ca.read_bytes() if ca is not None else None
        if cert is None or key is None:
            return grpc.ssl_channel_credentials(root)
        chain, private = cert.read_bytes(), key.read_bytes()
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        leaf = x509.load_pem_x509_certificate(chain).public_key().public_bytes(*spki)
        if serialization.load_pem_private_key(private, password=None).public_key().public_bytes(*spki) != leaf:
            raise ValueError("key_file does not belong to cert_file's certificate")
        return grpc.ssl_channel_credentials(root, private, chain)
