"""Optional extras of the distribution: whether the one a configuration chooses is installed.

``pip install gerrit-authz`` alone serves with the memory cache; the Redis backend needs ``gerrit-authz[redis]``.
Checking here, at configuration time, turns a missing extra into a config error (exit 2) instead of an
``ImportError`` at the first Check.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from .errors import ConfigError

__all__ = ["REDIS_HINT", "require_redis"]

REDIS_HINT = "backend redis needs the redis extra: pip install 'gerrit-authz[redis]'"

# aiocache exports its Redis backend only when the redis client imports, so both are needed.
_REDIS_MODULES = ("redis.asyncio", "aiocache.backends.redis")


def require_redis(import_module: Callable[[str], ModuleType] = importlib.import_module) -> None:
    """Raise :class:`ConfigError` at ``cache.backend`` unless the Redis backend can be imported.

    ``import_module`` is the seam tests use to play a machine without the extra.
    """
    for name in _REDIS_MODULES:
        try:
            import_module(name)
        except ImportError:
            raise ConfigError([("cache.backend", REDIS_HINT)]) from None
