"""Writing rotated tokens to the store so that none is ever lost."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from ._errors import StoreError
from ._token import Token, storable
from .stores._base import TokenStore

__all__ = ["RotationSaver"]

logger = logging.getLogger("asynctoken")

_SAVE_ATTEMPTS: Final = 3


def _storable(key: str, token: Token) -> Token:
    """``token`` as every store can encode it: an odd field never stands between a rotated
    refresh token and the store (it is a permanent condition, not an outage to wait out)."""
    clean = storable(token)
    if clean is not token:
        logger.warning(
            "credential %r: fields of Token.extra that no store can encode (%s) were dropped "
            "or replaced before saving",
            key,
            ", ".join(
                sorted(repr(k)[:40] for k in token.extra if clean.extra.get(k) != token.extra[k])
            ),
        )
    return clean


class _Unsaved:
    """A refreshed token the store failed to take, and what the store held before."""

    __slots__ = ("existed", "expected", "token")

    def __init__(self, token: Token, expected: str | None, existed: bool) -> None:
        self.token = token
        self.expected = expected
        self.existed = existed


class RotationSaver:
    """Saves refreshed tokens with compare-and-swap, and keeps the ones a failing store
    refused until they can be written."""

    __slots__ = ("_unsaved", "store")

    def __init__(self, store: TokenStore) -> None:
        self.store = store
        self._unsaved: dict[str, _Unsaved] = {}

    def forget(self, key: str) -> None:
        """Drop a kept token (the credential was removed or replaced)."""
        self._unsaved.pop(key, None)

    async def save(self, key: str, token: Token, stored: Token | None) -> bool:
        """Write a refreshed token with compare-and-swap on the refresh token it came from.

        A store failure is retried briefly. If the store stays down, the token is kept in this
        process as *unsaved* (the server already rotated: the old refresh token is dead), to be
        written by :meth:`keep_trying`, :meth:`resume` or :meth:`flush`.

        Returns:
            ``False`` if the token is kept unsaved, ``True`` otherwise (written, or the store
            holds a credential that replaced ours meanwhile, which is never overwritten).
        """
        token = _storable(key, token)
        expected = stored.refresh_token if stored is not None else None
        # Kept from the start, so that a cancellation (aclose) in the middle loses nothing.
        pending = _Unsaved(token, expected, stored is not None)
        self._unsaved[key] = pending
        for attempt in range(_SAVE_ATTEMPTS):
            try:
                if stored is None:
                    saved = await self.store.put_if_absent(key, token)
                else:
                    saved = await self.store.replace(key, token, expected_refresh_token=expected)
            except StoreError as exc:
                if attempt + 1 < _SAVE_ATTEMPTS:
                    await asyncio.sleep(0.05 * 4**attempt)
                    continue
                logger.error(
                    "credential %r: the rotated refresh token could not be saved (%s); this "
                    "process keeps it and keeps trying",
                    key,
                    exc.message,
                )
                return False
            if self._unsaved.get(key) is pending:
                del self._unsaved[key]
            if not saved:
                # Someone replaced the credential while we held the lock (lock lease lost, or a
                # forced re-seed). Never overwrite it; our token is still valid for this process.
                logger.error(
                    "credential %r changed in the store during the refresh; the stored one is "
                    "kept and this process uses its new token until it expires",
                    key,
                )
            return True
        raise AssertionError("unreachable")  # pragma: no cover

    async def keep_trying(self, key: str, *, patience: float) -> None:
        """Retry writing ``key``'s unsaved token for up to ``patience`` seconds (the caller
        holds the credential's lock)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        delay = 0.1
        while key in self._unsaved and loop.time() + delay <= deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                await self.resume(key, await self.store.get(key))
            except StoreError:
                continue

    async def resume(self, key: str, stored: Token | None) -> Token | None:
        """Before a refresh of ``key`` (under its lock): write the token whose save failed
        earlier, if the store did not move on meanwhile. Returns what the store now holds.

        Raises:
            StoreError: the store still fails; the token stays kept for the next attempt.
        """
        pending = self._unsaved.pop(key, None)
        if pending is None:
            return stored
        if stored is not None and stored.refresh_token == pending.token.refresh_token:
            return stored  # it did land (the answer to the write was lost)
        unchanged = (stored is not None) == pending.existed and (
            stored is None or stored.refresh_token == pending.expected
        )
        if unchanged:
            try:
                if stored is None:
                    written = await self.store.put_if_absent(key, pending.token)
                else:
                    written = await self.store.replace(
                        key, pending.token, expected_refresh_token=pending.expected
                    )
            except BaseException:
                self._unsaved[key] = pending
                raise
            if written:
                logger.info(
                    "credential %r: saved the refresh token kept since the store failed", key
                )
                return pending.token
            stored = await self.store.get(key)
        logger.warning(
            "credential %r: the store changed since this process failed to save its last "
            "refresh; the stored credential wins",
            key,
        )
        return stored

    async def flush(self, *, lock_timeout: float) -> None:
        """Last attempt (on close) to write every unsaved token, each under its lock."""
        for key in list(self._unsaved):
            try:
                async with self.store.lock(key, timeout=lock_timeout):
                    await self.resume(key, await self.store.get(key))
            except StoreError as exc:
                logger.critical(
                    "credential %r: the rotated refresh token could not be saved (%s) and is "
                    "lost with this process: re-authorize the credential if the next refresh "
                    "fails",
                    key,
                    exc.message,
                )
