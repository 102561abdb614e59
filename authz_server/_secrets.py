"""Service secrets that may rotate while the process runs (Kubernetes Secrets, Vault agents).

A :class:`SecretFile` is re-read when the file's identity (device, inode, mtime, size) changes, which is what an
atomic replace or a kubelet symlink swap looks like, and on demand (:meth:`Secret.refresh`), which is what the
Gerrit client does once when Gerrit refuses the service account: a rotation that kept the file's mtime and size
still reaches us. A file that is briefly unreadable mid-rotation keeps the last value rather than failing Checks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

from ._opstats import RotationStats
from .errors import ConfigError

__all__ = ["EnvSecret", "FileIdentity", "Secret", "SecretFile", "StaticSecret", "file_identity", "read_secret_file"]

log = logging.getLogger("gerrit_authz.secrets")


class Secret(Protocol):
    """A credential read when needed; never logged, never part of a repr."""

    def get(self) -> str:
        """The current value (cheap: called for every Gerrit request)."""
        ...

    def refresh(self) -> bool:
        """Read the source again now; True when the value changed."""
        ...


class StaticSecret:
    """A fixed value (tests, embedding code)."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def refresh(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "StaticSecret(***)"


class EnvSecret:
    """An environment variable, read when refreshed (a process's environment rarely changes; this is for symmetry)."""

    def __init__(self, name: str, key: str = "gerrit.password_env") -> None:
        self._name = name
        value = os.environ.get(name)
        if not value:
            raise ConfigError([(key, f"environment variable {name} is not set")])
        self._value = value

    def get(self) -> str:
        return self._value

    def refresh(self) -> bool:
        value = os.environ.get(self._name)
        if not value or value == self._value:
            return False
        self._value = value
        return True

    def __repr__(self) -> str:
        return f"EnvSecret({self._name!r})"


def read_secret_file(path: Path, key: str) -> str:
    """The stripped contents of a secret file, or :class:`ConfigError` naming ``key``."""
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError([(key, f"cannot read: {exc.strerror}")]) from None
    if not value:
        raise ConfigError([(key, "the file is empty")])
    return value


FileIdentity = tuple[int, int, int, int] | None


def file_identity(path: Path | None) -> FileIdentity:
    """What changes when the file is replaced or rewritten (device, inode, mtime, size); None when it is missing or
    not set (so each position of a tuple of these always stands for the same configured path)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class SecretFile:
    """A secret in a file, re-read when the file changes and on :meth:`refresh`."""

    def __init__(self, path: Path, key: str = "gerrit.password_file", stats: RotationStats | None = None) -> None:
        self._path = path
        self._key = key
        self._stats = stats or RotationStats()
        self._seen = file_identity(path)
        self._value = read_secret_file(path, key)  # fails at start-up, not at the first Check

    def get(self) -> str:
        if file_identity(self._path) != self._seen:
            self.refresh()
        return self._value

    def refresh(self) -> bool:
        self._seen = file_identity(self._path)
        self._stats.rereads += 1
        try:
            value = read_secret_file(self._path, self._key)
        except ConfigError as exc:
            # Mid-rotation the file may be missing for a moment: keep the last value, say so once per change.
            log.warning("%s: %s; keeping the previous value", self._key, exc.errors[0][1])
            return False
        if value == self._value:
            return False
        self._value = value
        self._stats.changes += 1
        log.info("%s: re-read, the secret changed", self._key)
        return True

    def __repr__(self) -> str:
        return f"SecretFile({str(self._path)!r})"
