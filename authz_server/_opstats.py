"""Plain counters of the service's own operation (secret rotation, config reloads), exported by ``_metrics``.

They live outside the components a reload replaces, so the exported counters stay monotonic.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReloadStats", "RotationStats"]


@dataclass
class RotationStats:
    """Shared by every secret and Gerrit client of a process."""

    rereads: int = 0  # a secret read again because its file changed or a refresh was asked for
    changes: int = 0  # ... and the value was different
    auth_retries: int = 0  # requests retried after a 401 because the re-read secret had changed


@dataclass
class ReloadStats:
    successes: int = 0
    failures: int = 0
    last_success: float = 0.0  # unix time of the last applied configuration (start-up counts)
