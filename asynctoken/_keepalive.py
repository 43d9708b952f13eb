"""Keeping credentials alive: renewing refresh tokens before they die of idleness.

A credential is *due* when its refresh token has a known death (see :mod:`asynctoken._status`)
and less than a safe margin of its life is left: a quarter of its lifetime, at most two days (a
Keliweb refresh token, which dies after 10 idle days, is renewed after 8), or at once when the
limit is known but the refresh token's age is not. :func:`renew_due` scans the store and renews
the due credentials through the manager's ordinary refresh, which takes the credential's store
lock and re-reads it first: among all processes that share the store, the first renews it and
the others find it renewed and send nothing. :class:`KeepAlive` runs that scan in the
background.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ._errors import CredentialNotFoundError, StoreError, TokenError
from ._status import read_records, renew_at
from ._token import Token
from .stores._base import TokenStore

__all__ = ["KeepAlive", "is_due", "renew_due"]

logger = logging.getLogger("asynctoken")

#: Credentials renewed at once by one scan.
CONCURRENCY = 8


def is_due(token: Token | None, now: float) -> bool:
    """Whether ``token``'s refresh token must be renewed now so as not to die of idleness."""
    if token is None:
        return False
    at = renew_at(token)
    return at is not None and at <= now


async def renew_due(
    store: TokenStore, now: Callable[[], float], renew: Callable[[str], Awaitable[object]]
) -> dict[str, TokenError | None]:
    """Renew every due credential of ``store`` with ``renew(key)``, :data:`CONCURRENCY` at a
    time (the store is read in batches, so memory stays bounded).

    Returns:
        The due keys: ``None`` for each renewed (here or by another process), the error for
        each that failed (:class:`~asynctoken.CredentialNotFoundError` when no provider is
        known for it).
    """
    results: dict[str, TokenError | None] = {}
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(key: str) -> None:
        try:
            await renew(key)
        except TokenError as exc:
            results[key] = exc
        finally:
            slots.release()

    tasks: list[asyncio.Task[None]] = []
    try:
        async for key, record in read_records(store):
            if isinstance(record, StoreError) or not is_due(record, now()):
                continue
            results[key] = None
            await slots.acquire()
            tasks.append(asyncio.ensure_future(one(key)))
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return results


class KeepAlive:
    """Runs :func:`renew_due` through ``scan`` every ``interval`` seconds, in the background.

    Args:
        scan: renews the due credentials (the manager's ``refresh_due``).
        interval: seconds between scans.
    """

    __slots__ = ("_interval", "_scan", "_task")

    def __init__(
        self, scan: Callable[[], Awaitable[dict[str, TokenError | None]]], interval: float
    ) -> None:
        self._scan = scan
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        """Start the background scans if they are not running (needs a running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="asynctoken-keep-alive"
            )

    async def _run(self) -> None:
        while True:
            try:
                results = await self._scan()
            except TokenError as exc:
                logger.warning("keep-alive: could not scan the store: %s", exc)
            else:
                failed = {
                    key: error
                    for key, error in results.items()
                    if error is not None and not isinstance(error, CredentialNotFoundError)
                }
                if results:
                    logger.info(
                        "keep-alive: %d credential(s) due, %d failed",
                        len(results),
                        len(failed),
                    )
                for key, error in failed.items():
                    logger.warning("keep-alive: credential %r not renewed: %s", key, error)
            await asyncio.sleep(self._interval)

    async def aclose(self) -> None:
        """Stop the background scans (a renewal in progress finishes as the manager closes)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
