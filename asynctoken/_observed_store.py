"""A store wrapper through which the manager sees every store failure and lock wait.

The manager wraps its store in :class:`ObservedStore` only when someone listens (an ``on_event``
subscriber or OpenTelemetry); the refresh protocol and the rotation saver then report through it
without a call at each use of the store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING

from ._errors import StoreError, StoreLockTimeoutError
from ._token import Token
from .stores._base import TokenStore

if TYPE_CHECKING:
    from ._observe import Observer

__all__ = ["ObservedStore"]


class ObservedStore:
    """A :class:`TokenStore` whose failures and lock waits are reported to an ``Observer``."""

    __slots__ = ("_observer", "inner")

    def __init__(self, inner: TokenStore, observer: Observer) -> None:
        self.inner = inner
        self._observer = observer

    async def get(self, key: str) -> Token | None:
        try:
            return await self.inner.get(key)
        except StoreError as exc:
            self._observer.store_failed(self.inner, key, "get", exc)
            raise

    async def put(self, key: str, token: Token) -> None:
        try:
            await self.inner.put(key, token)
        except StoreError as exc:
            self._observer.store_failed(self.inner, key, "put", exc)
            raise

    async def put_if_absent(self, key: str, token: Token) -> bool:
        try:
            return await self.inner.put_if_absent(key, token)
        except StoreError as exc:
            self._observer.store_failed(self.inner, key, "put_if_absent", exc)
            raise

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        try:
            return await self.inner.replace(
                key, token, expected_refresh_token=expected_refresh_token
            )
        except StoreError as exc:
            self._observer.store_failed(self.inner, key, "replace", exc)
            raise

    async def delete(self, key: str) -> bool:
        try:
            return await self.inner.delete(key)
        except StoreError as exc:
            self._observer.store_failed(self.inner, key, "delete", exc)
            raise

    async def keys(self) -> AsyncIterator[str]:
        try:
            async for key in self.inner.keys():
                yield key
        except StoreError as exc:
            self._observer.store_failed(self.inner, "", "keys", exc)
            raise

    def lock(self, key: str, *, timeout: float) -> AbstractAsyncContextManager[None]:
        return _ObservedLock(self, key, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __repr__(self) -> str:
        return repr(self.inner)


class _ObservedLock:
    """The inner store's lock, its wait timed (a span, a histogram, maybe an event)."""

    __slots__ = ("_held", "_key", "_store", "_timeout")

    def __init__(self, store: ObservedStore, key: str, timeout: float) -> None:
        self._store = store
        self._key = key
        self._timeout = timeout
        self._held: AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> None:
        store, key = self._store, self._key
        observer = store._observer
        otel = observer.otel
        attributes = observer.attributes(key, **{"asynctoken.store": type(store.inner).__name__})
        span = otel.lock_span(attributes) if otel is not None else None
        started = time.perf_counter()
        held = store.inner.lock(key, timeout=self._timeout)
        outcome = "cancelled"
        try:
            await held.__aenter__()
            outcome = "acquired"
        except StoreError as exc:
            outcome = "timeout" if isinstance(exc, StoreLockTimeoutError) else "error"
            observer.store_failed(store.inner, key, "lock", exc)
            raise
        finally:
            waited = time.perf_counter() - started
            observer.lock_waited(key, waited, outcome == "acquired")
            if otel is not None:
                attributes["asynctoken.outcome"] = outcome
                otel.lock_waited(span, waited, attributes)
        self._held = held

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        held, self._held = self._held, None
        assert held is not None
        return await held.__aexit__(exc_type, exc, tb)
