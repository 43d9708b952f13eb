"""What the sync facade runs on its manager's loop, and adapters for the sync callbacks it is given.

Each coroutine here takes the manager first: :meth:`asynctoken._sync_runtime.Runtime.call` runs
``method(manager, *args)`` on the loop thread.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread

from ._manager import ProviderFactory, TokenManager
from ._status import CredentialStatus
from .events import Event, EventCallback
from .providers._base import Provider

__all__ = [
    "close_iterator",
    "events_off_the_loop",
    "next_batch",
    "off_the_loop",
    "register",
]


def off_the_loop(factory: ProviderFactory) -> ProviderFactory:
    """Run a sync provider factory in a worker thread: it may block (a database lookup, the
    Django ORM, which refuses to run in a thread with a running event loop)."""

    async def resolve(key: str) -> Provider | None:
        result = await anyio.to_thread.run_sync(factory, key)
        if inspect.isawaitable(result):
            result = await result
        return result

    return resolve


def events_off_the_loop(callback: EventCallback) -> EventCallback:
    """Deliver events to a sync subscriber in a worker thread (the dispatcher awaits each
    delivery, so the order is kept); a coroutine function stays on the loop."""
    if inspect.iscoroutinefunction(callback):
        return callback

    async def deliver(event: Event) -> None:
        result = await anyio.to_thread.run_sync(callback, event)
        if inspect.isawaitable(result):
            await result

    return deliver


STATUS_BATCH = 100


async def next_batch(
    _manager: TokenManager, statuses: AsyncIterator[CredentialStatus]
) -> list[CredentialStatus]:
    batch: list[CredentialStatus] = []
    for _ in range(STATUS_BATCH):
        try:
            batch.append(await anext(statuses))
        except StopAsyncIteration:
            break
    return batch


async def close_iterator(_manager: TokenManager, iterator: AsyncIterator[Any]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def register(manager: TokenManager, providers: dict[str, Provider]) -> None:
    for key, provider in providers.items():
        await manager.add(key, provider)
