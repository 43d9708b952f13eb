"""Writing rotated tokens to the store so that none is ever lost."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from ._errors import StoreError
from ._token import Token
from .stores._base import TokenStore

__all__ = ["RotationSaver"]

logger = logging.getLogger("asynctoken")

_SAVE_ATTEMPTS: Final = 3


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

    async def save(self, key: str, token: Token, stored: Token | None) -> None:
        """Write a refreshed token with compare-and-swap on the refresh token it came from.

        A store failure is retried briefly. If the store stays down, the token is still handed
        out (the server already rotated: the old refresh token is dead) and kept in this process
        as *unsaved*, to be written first thing under the next refresh lock.
        """
        expected = stored.refresh_token if stored is not None else None
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
                self._unsaved[key] = _Unsaved(token, expected, stored is not None)
                logger.error(
                    "credential %r: the rotated refresh token could not be saved (%s); this "
                    "process keeps it and saves it before its next refresh",
                    key,
                    exc.message,
                )
                return
            if not saved:
                # Someone replaced the credential while we held the lock (lock lease lost, or a
                # forced re-seed). Never overwrite it; our token is still valid for this process.
                logger.error(
                    "credential %r changed in the store during the refresh; the stored one is "
                    "kept and this process uses its new token until it expires",
                    key,
                )
            return

    async def resume(self, key: str, stored: Token | None) -> Token | None:
        """Before a refresh of ``key`` (under its lock): write the token whose save failed
        earlier, if the store did not move on meanwhile. Returns what the store now holds.

        Raises:
            StoreError: the store still fails; the token stays kept for the next attempt.
        """
        pending = self._unsaved.pop(key, None)
        if pending is None:
            return stored
        unchanged = (stored is not None) == pending.existed and (
            stored is None or stored.refresh_token == pending.expected
        )
        if not unchanged:
            logger.warning(
                "credential %r: the store changed since this process failed to save its last "
                "refresh; the stored credential wins",
                key,
            )
            return stored
        try:
            if stored is None:
                await self.store.put_if_absent(key, pending.token)
            else:
                await self.store.replace(
                    key, pending.token, expected_refresh_token=pending.expected
                )
        except StoreError:
            self._unsaved[key] = pending
            raise
        logger.info("credential %r: saved the refresh token kept since the store failed", key)
        return pending.token
