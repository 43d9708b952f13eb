"""The manager's in-memory state per credential: cached tokens and remembered failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import cachetools

from ._errors import TokenError
from ._token import Token

__all__ = ["Entry", "Failure", "Flight", "HotCache"]


class Entry:
    """A cached token with its monotonic deadlines."""

    __slots__ = ("expired_at", "stale_at", "token")

    def __init__(self, token: Token, stale_at: float, expired_at: float) -> None:
        self.token = token
        self.stale_at = stale_at
        self.expired_at = expired_at


class Failure:
    """The last failed refresh of a key, remembered until ``until`` (monotonic)."""

    __slots__ = ("error", "final", "until")

    def __init__(self, error: TokenError, until: float, final: bool) -> None:
        self.error = error
        self.until = until
        self.final = final


class HotCache(cachetools.TLRUCache[str, "Entry"]):
    """Bounded cache of access tokens whose entries also leave when their token expires.

    Every insert and removal is mirrored into a plain dict, which is what the hot path reads:
    cachetools' own ``__getitem__`` costs several Python calls, the dict one C call. Eviction only
    ever costs a store re-read: refresh tokens live in the store, never only here.
    """

    def __init__(self, maxsize: int, timer: Callable[[], float], mirror: dict[str, Entry]):
        super().__init__(maxsize, ttu=_entry_ttu, timer=timer)
        self._mirror = mirror

    def __setitem__(self, key: str, value: Entry) -> None:
        super().__setitem__(key, value)
        if cachetools.Cache.__contains__(self, key):
            self._mirror[key] = value
        else:  # already expired: TLRUCache refuses it
            self._mirror.pop(key, None)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._mirror.pop(key, None)

    def expire(self, time: float | None = None) -> list[tuple[str, Entry]]:
        expired: list[tuple[str, Entry]] = list(super().expire(time))
        for key, _ in expired:
            self._mirror.pop(key, None)
        return expired

    def clear(self) -> None:
        super().clear()
        self._mirror.clear()


def _entry_ttu(_key: str, entry: Entry, _now: float) -> float:
    return entry.expired_at


class Flight:
    """One refresh in flight: the manager's task and the futures its callers wait on.

    Each caller gets a future of its own, so cancelling a caller cancels only that future, never
    the task (the guarantee of :func:`asyncio.shield`). When the task ends, :meth:`settle` sets
    every waiting future in one pass.
    """

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[Token]) -> None:
        self.task = task
        self.waiters: list[asyncio.Future[Token]] = []

    async def join(self) -> Token:
        """Wait for the refresh's result (or exception) without being able to cancel it."""
        task = self.task
        if task.done():  # finished, and settle() may already have run
            return task.result()
        waiter: asyncio.Future[Token] = task.get_loop().create_future()
        self.waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # settled just before the cancel: mark it retrieved
            raise

    def settle(self) -> None:
        """Pass the finished task's outcome to every caller still waiting."""
        task = self.task
        waiters, self.waiters = self.waiters, []
        if task.cancelled():
            for waiter in waiters:
                waiter.cancel()
            return
        error = task.exception()  # also marks it retrieved when every caller was cancelled
        for waiter in waiters:
            if waiter.done():  # its caller was cancelled
                continue
            if error is None:
                waiter.set_result(task.result())
            else:
                waiter.set_exception(error)
