"""Token endpoint providers: all HTTP to OAuth2 token endpoints lives in this package.

- :class:`KeliwebProvider`: Keliweb Fatture (Laravel Passport, rotating refresh tokens).
- :class:`ERPeasyProvider`: ERPeasy (Basic client auth, refresh token in a cookie).
- :class:`OAuth2Provider`: any RFC 6749 token endpoint.
- :class:`Provider`: the protocol the manager relies on, to write your own.
"""

from __future__ import annotations

from ._base import Provider
from ._erpeasy import ERPeasyProvider
from ._keliweb import KeliwebProvider
from ._oauth2 import OAuth2Provider

__all__ = ["ERPeasyProvider", "KeliwebProvider", "OAuth2Provider", "Provider"]
