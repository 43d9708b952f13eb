"""The manager's in-memory state per credential: cached tokens and remembered failures."""

from __future__ import annotations

import asyncio

import cachetools

from ._errors import TokenError
from ._token import Token

__all__ = ["Entry", "Failure", "Flight", "HotCache"]


class Entry:
    """A cached token with its monotonic deadlines, and the timer that drops it at expiry."""

    __slots__ = ("expired_at", "stale_at", "timer", "token")

    def __init__(self, token: Token, stale_at: float, expired_at: float) -> None:
        self.token = token
        self.stale_at = stale_at
        self.expired_at = expired_at
        self.timer: asyncio.TimerHandle | None = None


class Failure:
    """The last failed refresh of a key, remembered until ``until`` (monotonic).

    ``refresh_token`` is what the store held when it failed; ``checked`` when the store was
    last compared with it (a final failure is forgotten as soon as the stored credential
    changes, e.g. re-seeded by another process).
    """

    __slots__ = ("checked", "error", "final", "refresh_token", "until")

    def __init__(
        self, error: TokenError, until: float, final: bool, refresh_token: str | None, now: float
    ) -> None:
        self.error = error
        self.until = until
        self.final = final
        self.refresh_token = refresh_token
        self.checked = now


class HotCache(cachetools.LRUCache[str, "Entry"]):
    """Bounded cache of access tokens (least recently stored leaves first).

    Every insert and removal is mirrored into plain dicts, which is what the hot path reads:
    cachetools' own ``__getitem__`` costs several Python calls, a dict one C call. ``entries``
    mirrors the cache; ``fresh`` maps each key to ``(stale_at, token)``, a tuple because indexing
    one is the cheapest read there is. The manager's loop timers take entries out of the cache
    when their token expires. Eviction only ever costs a store re-read: refresh tokens live in
    the store, never only here.
    """

    def __init__(
        self,
        maxsize: int,
        entries: dict[str, Entry],
        fresh: dict[str, tuple[float, Token]],
    ) -> None:
        super().__init__(maxsize)
        self._entries = entries
        self._fresh = fresh

    def __setitem__(self, key: str, value: Entry) -> None:
        old = self._entries.get(key)
        super().__setitem__(key, value)
        if old is not None and old is not value:
            _retire(old)
        self._fresh[key] = (value.stale_at, value.token)
        self._entries[key] = value

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        entry = self._entries.pop(key, None)
        if entry is not None:
            _retire(entry)
        self._fresh.pop(key, None)

    def clear(self) -> None:
        super().clear()
        for entry in self._entries.values():
            _retire(entry)
        self._entries.clear()
        self._fresh.clear()


def _retire(entry: Entry) -> None:
    if entry.timer is not None:
        entry.timer.cancel()
        entry.timer = None


class Flight:
    """One refresh in flight: the manager's task and the futures its callers wait on.

    Each caller gets a future of its own, so cancelling a caller cancels only that future, never
    the task (the guarantee of :func:`asyncio.shield`, without its three callbacks per caller).
    The task settles every waiting future in one pass, at the end of its own last step, so the
    callers resume in the very next loop iteration.
    """

    __slots__ = ("error", "fenced", "refresh_token", "result", "settled", "task", "waiters")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.fenced = False  # the credential was replaced or removed meanwhile: cache nothing
        self.refresh_token: str | None = None  # what the store held when the refresh last looked
        self.waiters: list[asyncio.Future[Token]] = []
        self.settled = False
        self.result: Token | None = None
        self.error: BaseException | None = None

    async def join(self) -> Token:
        """Wait for the refresh's result (or exception) without being able to cancel it."""
        if not self.settled:
            waiter: asyncio.Future[Token] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                return await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()  # settled just before the cancel: mark it retrieved
                raise
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def succeed(self, token: Token) -> None:
        """Hand ``token`` to every caller still waiting, and to later joiners (once)."""
        if self.settled:
            return
        self.settled = True
        self.result = token
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():  # done: its caller was cancelled
                waiter.set_result(token)

    def fail(self, error: BaseException) -> None:
        """Raise ``error`` in every caller still waiting (cancel them if it is a cancellation)."""
        if self.settled:
            return
        self.settled = True
        self.error = error
        waiters, self.waiters = self.waiters, []
        cancelled = isinstance(error, asyncio.CancelledError)
        for waiter in waiters:
            if waiter.done():
                continue
            if cancelled:
                waiter.cancel()
            else:
                waiter.set_exception(error)
