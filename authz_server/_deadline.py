"""A Check's time budget, passed down to every lookup it makes."""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["Deadline"]


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute point on the monotonic clock."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def for_call(cls, time_remaining: float | None, default: float) -> Deadline:
        """The budget of one gRPC call: the caller's deadline less a margin for building the answer and sending it
        back (a tenth of it, 5 to 50 ms: a loaded process needs more than the wire does), or ``default`` when the
        caller set none (``context.time_remaining()`` is None)."""
        if time_remaining is None:
            return cls.after(default)
        margin = min(max(time_remaining * 0.1, 0.005), 0.05)
        return cls.after(max(time_remaining - margin, 0.0))

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def bound(self, timeout: float) -> float:
        """``timeout`` shortened to what is left of this budget (may be <= 0 when spent)."""
        return min(timeout, self.remaining())
