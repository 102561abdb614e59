"""``python -m authz_server``: the same command line as the ``gerrit-authz`` console script."""

from __future__ import annotations

import sys

from .cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
