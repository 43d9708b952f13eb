"""The :class:`TokenStore` protocol every store implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

from .._token import Token

__all__ = ["TokenStore"]


@runtime_checkable
class TokenStore(Protocol):
    """Durable home of credentials (refresh tokens and the last access token) by key.

    The store is the source of truth; the manager's in-memory cache only ever costs a re-read when
    it evicts. Stores never do HTTP. All methods may raise :class:`~asynctoken.StoreError`.

    Concurrency contract, which the manager relies on:

    * :meth:`lock` is a per-key mutual exclusion that holds across every process (and, for a
      shared store such as Redis, every host) using the same store. The manager holds it across
      the token request, because a refresh token may be used only once. A crashed holder must not
      block others forever (a lease / TTL, or an OS lock released on exit).
    * :meth:`replace` is compare-and-swap on the stored refresh token, so that a writer that
      refreshed from an old refresh token can never overwrite a newer rotated one.
    """

    async def get(self, key: str) -> Token | None:
        """Return the stored token for ``key``, or ``None`` if there is none."""
        ...

    async def put(self, key: str, token: Token) -> None:
        """Store ``token`` unconditionally (used for an explicit, forced seed)."""
        ...

    async def put_if_absent(self, key: str, token: Token) -> bool:
        """Store ``token`` only if nothing is stored for ``key``; return whether it was stored."""
        ...

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        """Compare-and-swap: store ``token`` only if a record exists for ``key`` whose refresh
        token equals ``expected_refresh_token``. Return whether it was stored.

        The write is durable (fsync'd, or acknowledged by the server) before this returns.
        """
        ...

    async def delete(self, key: str) -> bool:
        """Remove the credential; return whether one existed."""
        ...

    def keys(self) -> AsyncIterator[str]:
        """Iterate over stored keys without loading every record at once."""
        ...

    def lock(self, key: str, *, timeout: float) -> AbstractAsyncContextManager[None]:
        """Hold the cross-process refresh lock for ``key``.

        Raises:
            StoreLockTimeoutError: not acquired within ``timeout`` seconds.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and files held by the store."""
        ...
