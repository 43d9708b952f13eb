"""Failed refreshes remembered per credential: fail fast during a cooldown, pause retries.

After a final error (``invalid_grant``, ``invalid_client``, another 4xx, an unusable answer)
callers of the credential fail fast with that error for ``error_cooldown`` seconds, without a
request; the cooldown ends early when the stored credential changes (re-seeded elsewhere). After
any other failure the next *background* attempt waits ``background_retry_interval`` seconds (or
as long as the server's ``Retry-After`` asked). A success forgets the failure.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import cachetools

from ._cache import Failure
from ._errors import (
    CredentialNotFoundError,
    MalformedResponseError,
    TokenEndpointError,
    TokenError,
    TransientError,
)
from .stores._base import TokenStore

__all__ = ["Cooldowns"]

logger = logging.getLogger("asynctoken")

#: During a cooldown, how often the store is re-read to see whether the credential changed.
RECHECK_INTERVAL = 1.0


def _failure_ttu(_key: str, failure: Failure, _now: float) -> float:
    return failure.until


class Cooldowns:
    """The last failed refresh of each credential, bounded, until its cooldown ends.

    Args:
        store: re-read during a final error's cooldown to see whether the credential changed.
        size: how many credentials' failures are kept (least recently used leave first).
        cooldown: seconds a final error is remembered.
        background_retry: seconds before the next background attempt after another failure.
        max_retry_after: cap on a server's ``Retry-After``.
        monotonic: the clock the cooldowns run on.
    """

    __slots__ = (
        "_background_retry",
        "_cooldown",
        "_failures",
        "_max_retry_after",
        "_monotonic",
        "_store",
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
    ) -> None:
        self._store = store
        self._cooldown = cooldown
        self._background_retry = background_retry
        self._max_retry_after = max_retry_after
        self._monotonic = monotonic
        self._failures: cachetools.TLRUCache[str, Failure] = cachetools.TLRUCache(
            size, ttu=_failure_ttu, timer=monotonic
        )

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` failed and its cooldown (or background pause) is still on."""
        return key in self._failures

    def __len__(self) -> int:
        return len(self._failures)

    def forget(self, key: str) -> None:
        """Drop ``key``'s failure: it refreshed, or it was reconfigured, replaced or removed."""
        self._failures.pop(key, None)

    async def blocking(self, key: str) -> TokenError | None:
        """The error a caller of ``key`` gets at once, without a request, or ``None``.

        That is a final error still in its cooldown, unless the stored credential changed
        since (another process, or ``asynctoken add --overwrite``, re-seeded it): one store
        read, at most once per second per key, tells.
        """
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
        if failure.until > self._monotonic():
            self._failures[key] = failure
        else:  # a zero cooldown: nothing to remember, and nothing older either
            self._failures.pop(key, None)
