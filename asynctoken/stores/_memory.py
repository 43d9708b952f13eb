"""An in-process store with no I/O: the default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from .._errors import StoreLockTimeoutError
from .._token import Token

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps credentials in a dict of this process; nothing survives a restart.

    Refresh tokens are never evicted. Two managers of one process that share a ``MemoryStore``
    still refresh each credential once (its :meth:`lock` is a per-key :class:`asyncio.Lock`).
    """

    __slots__ = ("_locks", "_tokens")

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def get(self, key: str) -> Token | None:
        """See :meth:`TokenStore.get`."""
        return self._tokens.get(key)

    async def put(self, key: str, token: Token) -> None:
        """See :meth:`TokenStore.put`."""
        self._tokens[key] = token

    async def put_if_absent(self, key: str, token: Token) -> bool:
        """See :meth:`TokenStore.put_if_absent`."""
        if key in self._tokens:
            return False
        self._tokens[key] = token
        return True

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        """See :meth:`TokenStore.replace`."""
        current = self._tokens.get(key)
        if current is None or current.refresh_token != expected_refresh_token:
            return False
        self._tokens[key] = token
        return True

    async def delete(self, key: str) -> bool:
        """See :meth:`TokenStore.delete`."""
        return self._tokens.pop(key, None) is not None

    async def keys(self) -> AsyncIterator[str]:
        """See :meth:`TokenStore.keys`."""
        for key in list(self._tokens):
            yield key

    @asynccontextmanager
    async def lock(self, key: str, *, timeout: float) -> AsyncIterator[None]:
        """See :meth:`TokenStore.lock`."""
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            try:
                await asyncio.wait_for(lock.acquire(), timeout)
            except asyncio.TimeoutError:
                raise StoreLockTimeoutError(
                    f"refresh lock not acquired within {timeout:g} s", location="memory", key=key
                ) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def aclose(self) -> None:
        """Nothing to release."""

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return f"MemoryStore(credentials={len(self._tokens)})"
