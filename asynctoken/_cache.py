"""The manager's in-memory state per credential: cached tokens and remembered failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import cachetools

from ._errors import TokenError
from ._token import Token

__all__ = ["Entry", "Failure", "Flight", "HotCache"]


class Entry:
    """A cached token with its monotonic deadlines, and the timer that ends its freshness."""

    __slots__ = ("expired_at", "stale_at", "timer", "token")

    def __init__(self, token: Token, stale_at: float, expired_at: float) -> None:
        self.token = token
        self.stale_at = stale_at
        self.expired_at = expired_at
        self.timer: asyncio.TimerHandle | None = None


class Failure:
    """The last failed refresh of a key, remembered until ``until`` (monotonic)."""

    __slots__ = ("error", "final", "until")

    def __init__(self, error: TokenError, until: float, final: bool) -> None:
        self.error = error
        self.until = until
        self.final = final


class HotCache(cachetools.TLRUCache[str, "Entry"]):
    """Bounded cache of access tokens whose entries also leave when their token expires.

    Every insert and removal is mirrored into plain dicts, which is what the hot path reads:
    cachetools' own ``__getitem__`` costs several Python calls, a dict one C call. ``entries``
    mirrors the cache; ``fresh`` holds the tokens of entries that are still fresh (the manager
    adds them and a loop timer takes them out when they turn stale). Eviction only ever costs a
    store re-read: refresh tokens live in the store, never only here.
    """

    def __init__(
        self,
        maxsize: int,
        timer: Callable[[], float],
        entries: dict[str, Entry],
        fresh: dict[str, Token],
    ) -> None:
        super().__init__(maxsize, ttu=_entry_ttu, timer=timer)
        self._entries = entries
        self._fresh = fresh

    def __setitem__(self, key: str, value: Entry) -> None:
        old = self._entries.get(key)
        super().__setitem__(key, value)
        if old is not None and old is not value:
            _retire(old)
        self._fresh.pop(key, None)
        if cachetools.Cache.__contains__(self, key):
            self._entries[key] = value
        else:  # already expired: TLRUCache refuses it
            self._entries.pop(key, None)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._removed(key)

    def expire(self, time: float | None = None) -> list[tuple[str, Entry]]:
        expired: list[tuple[str, Entry]] = list(super().expire(time))
        for key, _ in expired:
            self._removed(key)
        return expired

    def clear(self) -> None:
        super().clear()
        for entry in self._entries.values():
            _retire(entry)
        self._entries.clear()
        self._fresh.clear()

    def _removed(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            _retire(entry)
        self._fresh.pop(key, None)


def _retire(entry: Entry) -> None:
    if entry.timer is not None:
        entry.timer.cancel()
        entry.timer = None


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
