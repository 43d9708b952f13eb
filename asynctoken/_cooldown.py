"""Holding refreshes back: after failures (cooldowns) and after rejected tokens.

**Cooldowns.**
After a final error (``invalid_grant``, ``invalid_client``, another 4xx, an unusable answer)
callers of the credential fail fast with that error for ``error_cooldown`` seconds, without a
request; the cooldown ends early when the stored credential changes (re-seeded elsewhere). After
any other failure the next *background* attempt waits ``background_retry_interval`` seconds (or
as long as the server's ``Retry-After`` asked). A success forgets the failure.

**Rejections.** An access token an API rejected is dropped and never picked up again; the next
rejection of the same credential within ``invalidate_interval`` is refused, so an API that
rejects every token cannot make the manager refresh in a loop.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import Any, Literal

import cachetools

from ._cache import Failure
from ._errors import (
    CredentialNotFoundError,
    MalformedResponseError,
    TokenEndpointError,
    TokenError,
    TransientError,
)
from ._observe import Observer
from .stores._base import TokenStore

__all__ = ["Cooldowns", "Rejections"]

logger = logging.getLogger("asynctoken")

#: During a cooldown, how often the store is re-read to see whether the credential changed.
RECHECK_INTERVAL = 1.0


def _failure_ttu(_key: str, failure: Failure, _now: float) -> float:
    return failure.until


class _Failures(cachetools.TLRUCache[str, Failure]):
    """A TLRU cache of failures that tells when one leaves because its cooldown elapsed."""

    def __init__(self, size: int, monotonic: Callable[[], float], observer: Observer) -> None:
        super().__init__(size, ttu=_failure_ttu, timer=monotonic)
        self.observer = observer

    def expire(self, time: Any = None) -> list[tuple[str, Failure]]:
        expired: list[tuple[str, Failure]] = super().expire(time)
        for key, _failure in expired:
            self.observer.cooldown_ended(key, "elapsed")
        return expired


class Cooldowns:
    """The last failed refresh of each credential, bounded, until its cooldown ends.

    Args:
        store: re-read during a final error's cooldown to see whether the credential changed.
        size: how many credentials' failures are kept (least recently used leave first).
        cooldown: seconds a final error is remembered.
        background_retry: seconds before the next background attempt after another failure.
        max_retry_after: cap on a server's ``Retry-After``.
        monotonic: the clock the cooldowns run on.
        observer: told when cooldowns start and end.
        timers: end cooldowns with loop timers (the system clock), so that their end is
            reported when it comes; with another clock it is reported when next noticed.
    """

    __slots__ = (
        "_background_retry",
        "_cooldown",
        "_failures",
        "_max_retry_after",
        "_monotonic",
        "_observer",
        "_store",
        "_timers",
    )

    def __init__(
        self,
        store: TokenStore,
        *,
        size: int,
        cooldown: float,
        background_retry: float,
        max_retry_after: float,
        monotonic: Callable[[], float],
        observer: Observer,
        timers: bool,
    ) -> None:
        self._store = store
        self._cooldown = cooldown
        self._background_retry = background_retry
        self._max_retry_after = max_retry_after
        self._monotonic = monotonic
        self._observer = observer
        self._timers = timers and observer.dispatch is not None
        self._failures = _Failures(size, monotonic, observer)

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` failed and its cooldown (or background pause) is still on."""
        self._failures.expire()
        return key in self._failures

    def __len__(self) -> int:
        return len(self._failures)

    def until(self, key: str, now: float) -> float | None:
        """When ``key``'s cooldown (or background pause) ends, in unix time (``now`` is the
        wall clock's now), or ``None``."""
        self._failures.expire()
        failure = self._failures.get(key)
        return None if failure is None else now + failure.until - self._monotonic()

    def forget(self, key: str, reason: Literal["refreshed", "reset"] = "reset") -> None:
        """Drop ``key``'s failure: it refreshed, or it was reconfigured, replaced or removed."""
        self._failures.expire()
        if self._failures.pop(key, None) is not None:
            self._observer.cooldown_ended(key, reason)

    async def blocking(self, key: str) -> TokenError | None:
        """The error a caller of ``key`` gets at once, without a request, or ``None``.

        That is a final error still in its cooldown, unless the stored credential changed
        since (another process, or ``asynctoken add --overwrite``, re-seeded it): one store
        read, at most once per second per key, tells.
        """
        self._failures.expire()
        failure = self._failures.get(key)  # None once its cooldown ended
        if failure is None or not failure.final or await self._changed(key, failure):
            return None
        # A copy keeps tracebacks from piling up on the remembered error.
        error = copy.copy(failure.error)
        error.__traceback__ = None
        return error

    async def _changed(self, key: str, failure: Failure) -> bool:
        now = self._monotonic()
        if now - failure.checked < RECHECK_INTERVAL:
            return False
        failure.checked = now
        try:
            stored = await self._store.get(key)
        except TokenError as exc:
            logger.debug(
                "credential %r: could not re-read the store during a cooldown: %s", key, exc
            )
            return False
        if (stored.refresh_token if stored is not None else None) == failure.refresh_token:
            return False
        logger.info("credential %r changed in the store; its cooldown ends", key)
        if self._failures.get(key) is failure:
            del self._failures[key]
            self._observer.cooldown_ended(key, "store_changed")
        return True

    def record(
        self, key: str, error: Exception, background: bool, refresh_token: str | None
    ) -> None:
        """Remember a failed refresh of ``key`` (and log it).

        Args:
            key: the credential.
            error: what the refresh raised.
            background: whether callers were still served a valid token meanwhile.
            refresh_token: what the store held when it failed.
        """
        if isinstance(error, CredentialNotFoundError):
            logger.debug("credential %r: %s", key, error.message)
            return  # nothing was requested; resolving again costs nothing
        now = self._monotonic()
        if isinstance(error, (TokenEndpointError, MalformedResponseError)):
            # Final, and so is an unusable answer: a server that always sends one must not be
            # asked by every caller.
            self._remember(key, Failure(error, now + self._cooldown, True, refresh_token, now))
            logger.error("credential %r: refresh failed: %s", key, error)
        elif isinstance(error, TokenError):
            # The next background attempt waits, at least as long as the server asked.
            pause = self._background_retry
            if isinstance(error, TransientError) and error.retry_after is not None:
                pause = max(pause, min(error.retry_after, self._max_retry_after))
            self._remember(key, Failure(error, now + pause, False, refresh_token, now))
            if background:
                logger.warning(
                    "credential %r: background refresh failed, current token still served: %s",
                    key,
                    error,
                )
            else:
                logger.error("credential %r: refresh failed: %s", key, error)
        else:
            logger.error("credential %r: refresh crashed", key, exc_info=error)

    def _remember(self, key: str, failure: Failure) -> None:
        seconds = failure.until - self._monotonic()
        self._observer.failure_remembered(key, failure.error, seconds, failure.final)
        if seconds > 0:
            self._failures[key] = failure
            if self._timers:
                # A little late rather than early: loop timers may fire a clock tick ahead.
                asyncio.get_running_loop().call_later(seconds + 0.01, self._failures.expire)
        else:  # a zero cooldown: nothing to remember, and nothing older either
            self._failures.pop(key, None)


class Rejections:
    """Access tokens that APIs rejected, per credential (bounded by ``size``).

    Args:
        size: how many credentials' rejections are kept.
        interval: seconds after a refresh caused by a rejection during which further
            rejections are refused (0: never).
        monotonic: the clock.
    """

    __slots__ = ("_interval", "_recent", "_tokens")

    def __init__(self, size: int, interval: float, monotonic: Callable[[], float]) -> None:
        self._interval = interval
        self._tokens: cachetools.LRUCache[str, str] = cachetools.LRUCache(size)
        self._recent: cachetools.TTLCache[str, bool] = cachetools.TTLCache(
            size, ttl=interval or 1e-9, timer=monotonic
        )

    def __contains__(self, key: str) -> bool:
        """Whether ``key``'s current token was rejected (its next refresh should hurry)."""
        return key in self._tokens

    def rejected(self, key: str, access_token: str) -> bool:
        """Whether ``access_token`` is the one rejected last for ``key`` (never pick it up)."""
        return self._tokens.get(key) == access_token

    def reject(self, key: str, access_token: str) -> bool:
        """Note that an API rejected ``access_token``; ``False`` if that is refused."""
        if self._interval and key in self._recent:
            # The token that a rejection had refreshed is rejected too: the API refuses this
            # credential for another reason (permissions?). Refreshing again would not help,
            # and doing it on every request would rotate the credential in a loop.
            logger.warning(
                "credential %r: access token rejected again within %g s of the last refresh "
                "caused by a rejection; not refreshing again yet",
                key,
                self._interval,
            )
            return False
        self._tokens[key] = access_token
        return True

    def replaced(self, key: str) -> None:
        """A new token of ``key`` came from the token endpoint: the rejected one is history.

        If a rejection caused that refresh, rejections are refused for ``interval`` seconds
        from now. Only then: a rejected token replaced by one another process had already
        stored (no token request) leaves the next rejection free to cause a refresh.
        """
        if self._tokens.pop(key, None) is not None and self._interval:
            self._recent[key] = True

    def forget(self, key: str) -> None:
        """Forget ``key`` (removed or replaced)."""
        self._tokens.pop(key, None)
        self._recent.pop(key, None)
