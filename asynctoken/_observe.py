"""The one seam where the manager and the refresh protocol report what they do.

:class:`Observer` turns each step into an event for the ``on_event`` subscriber (see
:mod:`asynctoken.events`, delivered by :mod:`._dispatch`) and into OpenTelemetry metrics and spans
(:mod:`._otel`, imported only when ``opentelemetry-api`` is installed and telemetry is on). The
manager, :class:`~._cooldown.Cooldowns` and :class:`~._refresh.Refresher` call it at their steps;
:class:`~._observed_store.ObservedStore` wraps the store so that store failures and lock waits
are seen wherever the store is used. With no subscriber and no telemetry the store is used as it
is, and every call here returns at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ._dispatch import Dispatcher
from ._errors import (
    InvalidGrantError,
    StoreError,
    TokenError,
)
from ._watches import RefreshWatch, RequestWatch, primary_grant, scrub
from .events import (
    CooldownEnded,
    CooldownStarted,
    Event,
    EventCallback,
    FallbackGrantUsed,
    LockWaitedLong,
    ReauthorizationRequired,
    RefreshTokenRotated,
    RetryScheduled,
    StoreFailed,
    TokenInvalidated,
    Trigger,
)
from .stores._base import TokenStore

if TYPE_CHECKING:
    from ._clock import Clock
    from ._otel import Telemetry
    from .providers._base import Provider

__all__ = ["Observer", "RefreshWatch", "RequestWatch", "scrub"]

_UNSET: Any = object()
_telemetry: Telemetry | None = _UNSET


def _load_telemetry() -> Telemetry | None:
    """The process's OpenTelemetry instruments, or ``None`` without ``opentelemetry-api``."""
    global _telemetry
    if _telemetry is _UNSET:
        try:
            from . import _otel
        except ImportError:
            _telemetry = None
        else:
            from . import __version__

            _telemetry = _otel.telemetry(__version__)
    return _telemetry


class Observer:
    """Events and telemetry of one manager.

    Args:
        on_event: the subscriber, or ``None``.
        clock: the manager's clock (event times, durations).
        telemetry: record OpenTelemetry metrics and spans if ``opentelemetry-api`` is installed.
        telemetry_keys: add the credential key to metric and span attributes
            (``asynctoken.credential``).
        lock_wait_threshold: a lock wait longer than this many seconds emits
            :class:`~asynctoken.events.LockWaitedLong`.
    """

    __slots__ = (
        "__weakref__",
        "_clock_calls",
        "_keys",
        "_lock_threshold",
        "clock",
        "dispatch",
        "fresh",
        "misses",
        "otel",
        "stale",
        "unfresh",
    )

    def __init__(
        self,
        *,
        on_event: EventCallback | None,
        clock: Clock,
        telemetry: bool,
        telemetry_keys: bool,
        lock_wait_threshold: float,
    ) -> None:
        self.dispatch = Dispatcher(on_event) if on_event is not None else None
        self.otel = _load_telemetry() if telemetry else None
        self.clock = clock
        self._keys = telemetry_keys
        self._lock_threshold = lock_wait_threshold
        self.stale = 0  # get_token calls that found a stale token
        self.misses = 0  # ... that found none it could serve
        self.unfresh = 0  # hot-path clock reads that did not serve a token
        self.fresh = 0  # fresh tokens served by the slow path (turned fresh meanwhile)
        self._clock_calls: Callable[[], Any] | None = None

    @property
    def active(self) -> bool:
        """Whether anyone listens (a subscriber, or OpenTelemetry)."""
        return self.dispatch is not None or self.otel is not None

    def hot_clock(self, monotonic: Callable[[], float]) -> Callable[[], float]:
        """The clock for the manager's hot path: with telemetry, one that counts its calls in
        C (``functools.lru_cache`` without a cache counts each call as a miss), so that fresh
        hits are counted with no Python work per call; else ``monotonic`` itself."""
        if self.otel is None:
            return monotonic
        counting = functools.lru_cache(maxsize=0)(monotonic)
        self._clock_calls = counting.cache_info
        self.otel.watch_lookups(self)
        return counting

    def lookups(self) -> tuple[int, int, int]:
        """Cache lookups so far: ``(fresh, stale, miss)``. Fresh ones are the hot path's clock
        reads, less those that served nothing, plus the slow path's fresh ones."""
        calls = self._clock_calls().misses if self._clock_calls is not None else 0
        return calls - self.unfresh + self.fresh, self.stale, self.misses

    def store(self, store: TokenStore) -> TokenStore:
        """``store``, wrapped so that its failures and lock waits are seen, if anyone listens."""
        if not self.active:
            return store
        from ._observed_store import ObservedStore

        return ObservedStore(store, self)

    async def aclose(self, timeout: float) -> None:
        """Deliver the events still queued (up to ``timeout`` seconds), then stop."""
        if self.otel is not None:
            self.otel.retire_lookups(self)
        if self.dispatch is not None:
            await self.dispatch.aclose(timeout)

    def emit(self, kind: Callable[..., Event], key: str, **fields: Any) -> None:
        """Queue ``kind(key=key, time=now, **fields)`` for the subscriber, if there is one."""
        if self.dispatch is not None:
            self.dispatch.put(kind(key=key, time=self.clock.time(), **fields))

    def attributes(self, key: str, **attributes: str | int) -> dict[str, str | int]:
        """Telemetry attributes, with ``asynctoken.credential`` if the user opted in."""
        if self._keys:
            attributes["asynctoken.credential"] = key
        return attributes

    # ---------------------------------------------------------------- the refresh protocol

    def refresh(self, key: str, trigger: Trigger, background: bool) -> RefreshWatch:
        """A refresh of ``key`` starts (``with`` block); the watch reports how it ends."""
        return RefreshWatch(self if self.active else None, key, trigger, background)

    def request(
        self, key: str, provider: Provider, refresh_token_grant: bool, attempt: int
    ) -> RequestWatch:
        """A token request is sent (``with`` block around it): the refresh-token grant, or
        the provider's own (password, client credentials)."""
        return RequestWatch(self, key, provider, refresh_token_grant, attempt)

    def retrying(
        self, key: str, provider: Provider, attempt: int, delay: float, error: TokenError
    ) -> None:
        self.emit(
            RetryScheduled,
            key,
            provider=provider.name,
            attempt=attempt,
            delay=delay,
            error=scrub(error),
        )

    def fallback(self, key: str, provider: Provider) -> None:
        if self.dispatch is not None:
            self.emit(FallbackGrantUsed, key, provider=provider.name, grant=primary_grant(provider))

    def rotated(self, key: str, provider: Provider, saved: bool) -> None:
        self.emit(RefreshTokenRotated, key, provider=provider.name, saved=saved)

    # ---------------------------------------------------------------- the manager

    def failure_remembered(self, key: str, error: TokenError, seconds: float, final: bool) -> None:
        """A failed refresh: re-authorization may be required, a cooldown may start."""
        if isinstance(error, InvalidGrantError):
            self.emit(ReauthorizationRequired, key, error=scrub(error))
        if seconds > 0:
            self.emit(CooldownStarted, key, error=scrub(error), seconds=seconds, final=final)

    def cooldown_ended(
        self, key: str, reason: Literal["elapsed", "store_changed", "refreshed", "reset"]
    ) -> None:
        self.emit(CooldownEnded, key, reason=reason)

    def invalidated(self, key: str, outcome: Literal["dropped", "refused", "superseded"]) -> None:
        """An API rejected ``key``'s token; what the manager did about it."""
        if self.otel is not None:
            self.otel.invalidations.add(1, self.attributes(key, **{"asynctoken.outcome": outcome}))
        if outcome != "superseded":
            self.emit(TokenInvalidated, key, dropped=outcome == "dropped")

    def store_failed(self, store: TokenStore, key: str, operation: str, error: StoreError) -> None:
        if self.otel is not None:
            attributes = self.attributes(
                key,
                **{
                    "asynctoken.store": type(store).__name__,
                    "asynctoken.operation": operation,
                    "error.type": type(error).__name__,
                },
            )
            self.otel.store_errors.add(1, attributes)
        self.emit(StoreFailed, key, operation=operation, error=scrub(error))

    def lock_waited(self, key: str, seconds: float, acquired: bool) -> None:
        if seconds > self._lock_threshold:
            self.emit(LockWaitedLong, key, seconds=seconds, acquired=acquired)
