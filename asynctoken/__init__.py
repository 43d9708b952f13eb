"""asynctoken: OAuth2 access tokens for asyncio apps, refreshed once per credential.

Example::

    from asynctoken import KeliwebProvider, TokenManager

    async with TokenManager() as tm:
        await tm.add("keliweb", KeliwebProvider(client_id="…", client_secret="…"),
                     refresh_token="def502…")
        token = await tm.get_token("keliweb")
        headers = {"Authorization": token.authorization}
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import Clock, SystemClock
from ._dpop import DPoPKey
from ._errors import (
    ConfigurationError,
    CredentialNotFoundError,
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    SealedRecordError,
    StoreError,
    StoreLockTimeoutError,
    TokenEndpointError,
    TokenError,
    TransientError,
)
from ._manager import ProviderFactory, TokenManager
from ._middleware import TokenMiddleware
from ._policy import Margins, RetryPolicy
from ._status import CredentialStatus
from ._token import RefreshFailure, Token
from .providers import ERPeasyProvider, KeliwebProvider, OAuth2Provider, Provider
from .stores import FileStore, MemoryStore, SQLiteStore, TokenStore

if TYPE_CHECKING:
    from .stores import RedisStore
    from .sync import SyncTokenManager

__all__ = [
    "Clock",
    "ConfigurationError",
    "CredentialNotFoundError",
    "CredentialStatus",
    "DPoPKey",
    "ERPeasyProvider",
    "FileStore",
    "InvalidClientError",
    "InvalidGrantError",
    "KeliwebProvider",
    "MalformedResponseError",
    "Margins",
    "MemoryStore",
    "OAuth2Provider",
    "Provider",
    "ProviderFactory",
    "RedisStore",
    "RefreshFailure",
    "RetryPolicy",
    "SQLiteStore",
    "SealedRecordError",
    "StoreError",
    "StoreLockTimeoutError",
    "SyncTokenManager",
    "SystemClock",
    "Token",
    "TokenEndpointError",
    "TokenError",
    "TokenManager",
    "TokenMiddleware",
    "TokenStore",
    "TransientError",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # RedisStore needs the optional ``redis`` extra; SyncTokenManager installs fork and exit
    # hooks: both are imported on first use only.
    if name == "RedisStore":
        from .stores import RedisStore

        return RedisStore
    if name == "SyncTokenManager":
        from .sync import SyncTokenManager

        return SyncTokenManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"RedisStore", "SyncTokenManager"})
