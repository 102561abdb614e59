"""gerrit-authz: an Envoy ext_authz v3 service that authorizes HTTP requests with Gerrit's own answers.

The supported entry points are the ``gerrit-authz`` command (:mod:`authz_server.cli`), the configuration models
(:mod:`authz_server.config`) and the error codes (:mod:`authz_server.errors`). Everything in ``_``-modules is
internal.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
