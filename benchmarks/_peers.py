"""The peer libraries, optional: each is imported only here, and is ``None`` when missing.

Install them with ``pip install -e '.[bench]'``. A missing peer is reported in the table as
"not installed"; the asynctoken side of every scenario still runs.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from typing import Any

__all__ = ["PEER_DISTRIBUTIONS", "authlib_async_client", "gcloud_token_classes", "version"]

PEER_DISTRIBUTIONS = ("authlib", "httpx", "gcloud-aio-auth")


def version(distribution: str) -> str | None:
    """Installed version of ``distribution``, or ``None``."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def authlib_async_client() -> Any | None:
    """Authlib's ``AsyncOAuth2Client`` (httpx integration), or ``None`` if not installed."""
    try:
        # Authlib >= 1.7 prefers httpx2 and warns when it falls back to httpx. Its warning module
        # installs an "always" filter on import: import it first, then silence the fallback.
        import authlib.deprecate  # noqa: F401

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from authlib.integrations.httpx_client import AsyncOAuth2Client
    except ImportError:
        return None
    return AsyncOAuth2Client


def gcloud_token_classes() -> tuple[Any, Any] | None:
    """gcloud-aio-auth's ``(Token, TokenResponse)``, or ``None`` if not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from gcloud.aio.auth import Token
            from gcloud.aio.auth.token import TokenResponse
    except ImportError:
        return None
    return Token, TokenResponse
