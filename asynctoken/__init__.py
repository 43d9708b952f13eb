"""asynctoken: OAuth2 access tokens for asyncio apps, refreshed once per credential."""

from __future__ import annotations

from ._clock import Clock, SystemClock
from ._errors import (
    ConfigurationError,
    CredentialNotFoundError,
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    StoreError,
    StoreLockTimeoutError,
    TokenEndpointError,
    TokenError,
    TransientError,
)
from ._token import Token

__all__ = [
    "Clock",
    "ConfigurationError",
    "CredentialNotFoundError",
    "InvalidClientError",
    "InvalidGrantError",
    "MalformedResponseError",
    "StoreError",
    "StoreLockTimeoutError",
    "SystemClock",
    "Token",
    "TokenEndpointError",
    "TokenError",
    "TransientError",
]

__version__ = "0.1.0"
