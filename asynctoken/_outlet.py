"""Where one refresh delivers: the manager's token cache and the callers of its flight.

The refresh protocol (:mod:`asynctoken._refresh`) sees the manager only through this
:class:`~asynctoken._refresh.Outlet`: it hands over tokens picked up from the store or obtained
from the endpoint, and settles the waiting callers early when a save keeps it busy.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING

from ._cache import Entry, Flight
from ._errors import TokenError
from ._token import Token

if TYPE_CHECKING:
    from ._manager import TokenManager

__all__ = ["CacheOutlet"]

#: The context every expiry timer runs in (timers run one after another on the loop).
_TIMER_CONTEXT = contextvars.Context()


class CacheOutlet:
    """Where one refresh of ``key`` delivers: the manager's cache and ``flight``'s callers."""

    __slots__ = ("_flight", "_key", "_manager", "requested")

    def __init__(self, manager: TokenManager, key: str, flight: Flight) -> None:
        self._manager = manager
        self._key = key
        self._flight = flight
        self.requested = False  # published a token from the endpoint (not picked up)

    @property
    def fenced(self) -> bool:
        """The credential was removed or replaced meanwhile: cache nothing."""
        return self._flight.fenced

    def pick_up(self, stored: Token | None, *, need_fresh: bool) -> Token | None:
        """Cache and return ``stored`` if it is a valid token nobody rejected.

        A background refresh (of a stale token) wants a fresh one; a waiting caller takes any
        token that is not expired.
        """
        manager = self._manager
        if stored is None or not stored.access_token:
            return None
        if manager._rejected.rejected(self._key, stored.access_token):
            return None
        now = manager._clock.monotonic()
        entry = self._entry(stored, now, manager._wall())
        if now >= (entry.stale_at if need_fresh else entry.expired_at):
            return None
        if not self._flight.fenced:
            self._remember(entry)
        return stored

    def publish(self, token: Token, issued_mono: float, issued_wall: float) -> None:
        """Cache a token just obtained from the token endpoint."""
        self.requested = True
        if not self._flight.fenced:
            self._manager._rejected.replaced(self._key)
            self._remember(self._entry(token, issued_mono, issued_wall))

    def holds(self, refresh_token: str | None) -> None:
        """Note the refresh token the store holds (compared later, to end a cooldown early)."""
        self._flight.refresh_token = refresh_token

    def release(self, result: Token | BaseException) -> None:
        """Settle the waiting callers now, while the refresh goes on holding the lock."""
        # Later callers start anew (behind the lock this refresh still holds).
        self._manager._land(self._key, self._flight)
        if isinstance(result, Token):
            self._flight.succeed(result)
        else:
            if isinstance(result, TokenError) and result.key is None:
                result.key = self._key  # the callers see it now, before the refresh ends
            self._flight.fail(result)

    def _entry(self, token: Token, mono: float, wall: float) -> Entry:
        """Deadlines of ``token`` on the monotonic clock, given a (monotonic, wall) pair."""
        hard = mono + (token.expires_at - wall)
        lifetime = token.lifetime
        if lifetime is None:
            lifetime = token.expires_at - wall
        stale, expired = self._manager._margins.offsets(lifetime)
        stale_at, expired_at = hard - stale, hard - expired
        if token.refresh_at is not None:  # the server said when (refresh_in)
            stale_at = min(mono + (token.refresh_at - wall), expired_at)
        return Entry(token, stale_at, expired_at)

    def _remember(self, entry: Entry) -> None:
        """Cache ``entry`` (the hot path serves it while fresh) until its token expires."""
        manager, key = self._manager, self._key
        manager._cache[key] = entry
        if manager._drop_timers and manager._hot.get(key) is entry:
            delay = max(0.0, entry.expired_at - manager._clock.monotonic())
            # An empty context, not a copy of the caller's: a timer lives as long as the token,
            # and a copied context would keep whatever it held (a tracing span's) alive as long.
            entry.timer = asyncio.get_running_loop().call_later(
                delay, manager._drop, key, entry, context=_TIMER_CONTEXT
            )
