"""asyncssh, imported without its DSA deprecation warnings.

asyncssh (through 2.x) names cryptography's ``dsa`` types in annotations evaluated at import, and cryptography
(since 45) warns about each use: seven ``CryptographyDeprecationWarning: DSA is deprecated`` lines on stderr at
every ``serve`` or ``explain``, none about anything this service does (it never offers or accepts DSA keys).
Exactly those warnings, raised from asyncssh's modules while it is imported, are ignored; any other warning, and
these same warnings raised by other code, are shown as usual.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message="DSA is deprecated", category=CryptographyDeprecationWarning, module=r"asyncssh\."
    )
    import asyncssh

__all__ = ["asyncssh"]
