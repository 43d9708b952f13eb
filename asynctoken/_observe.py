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

import asyncio
import copy
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from ._dispatch import Dispatcher
from ._errors import (
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    StoreError,
    TokenEndpointError,
    TokenError,
    TransientError,
)
from ._token import Token
from .events import (
    CooldownEnded,
    CooldownStarted,
    Event,
    EventCallback,
    FallbackGrantUsed,
    LockWaitedLong,
    ReauthorizationRequired,
    RefreshFailed,
    RefreshStarted,
    RefreshSucceeded,
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

__all__ = ["Observer", "RefreshWatch", "RequestWatch", "primary_grant", "scrub"]

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


def scrub(error: BaseException) -> TokenError:
    """A copy of ``error`` fit for a subscriber: no traceback, cause or secret attribute."""
    if not isinstance(error, TokenError):
        return TokenError(f"unexpected {type(error).__name__}")
    clone = copy.copy(error)
    clone.__traceback__ = None
    clone.__cause__ = clone.__context__ = None
    if isinstance(clone, MalformedResponseError):
        clone.refresh_token = None
    return clone


def outcome_of(error: BaseException | None) -> str:
    """A bounded label for the result of a token request."""
    if error is None:
        return "success"
    for kind, label in _OUTCOMES:
        if isinstance(error, kind):
            return label
    return "error"


_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (InvalidGrantError, "invalid_grant"),
    (InvalidClientError, "invalid_client"),
    (TokenEndpointError, "endpoint_error"),
    (TransientError, "transient"),
    (MalformedResponseError, "malformed"),
    (asyncio.CancelledError, "cancelled"),
)


def primary_grant(provider: Provider) -> str:
    """The grant ``provider`` uses without a refresh token (``"password"``, …)."""
    build = getattr(provider, "build_request", None)
    if build is not None:
        try:
            grant = getattr(build(None), "grant_type", None)
        except Exception:
            grant = None
        if isinstance(grant, str):
            return grant
    return "primary"


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
        "_fresh",
        "_keys",
        "_lock_threshold",
        "clock",
        "dispatch",
        "misses",
        "otel",
        "stale",
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
        self._fresh: Callable[[], int] = lambda: 0

    @property
    def active(self) -> bool:
        """Whether anyone listens (a subscriber, or OpenTelemetry)."""
        return self.dispatch is not None or self.otel is not None

    def count_lookups(self, fresh: Callable[[], int]) -> None:
        """Report the manager's cache lookups; ``fresh()`` returns its fresh hits so far."""
        self._fresh = fresh
        if self.otel is not None:
            self.otel.watch_lookups(self)

    def lookups(self) -> tuple[int, int, int]:
        """Cache lookups so far: ``(fresh, stale, miss)``."""
        return self._fresh(), self.stale, self.misses

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


class RefreshWatch:
    """One refresh, from :class:`~asynctoken.events.RefreshStarted` to its end, in a span.

    A ``with`` block around the refresh task's work: the span is current inside it, so lock
    waits and token requests are its children.
    """

    __slots__ = ("_background", "_ended", "_key", "_observer", "_span", "_started", "_trigger")

    def __init__(
        self, observer: Observer | None, key: str, trigger: Trigger, background: bool
    ) -> None:
        self._observer = observer
        self._key = key
        self._trigger = trigger
        self._background = background
        self._ended = observer is None
        self._span: Any = None
        self._started = 0.0

    def __enter__(self) -> RefreshWatch:
        observer = self._observer
        if observer is not None:
            self._started = time.perf_counter()
            observer.emit(RefreshStarted, self._key, trigger=self._trigger)
            if observer.otel is not None:
                attributes = observer.attributes(self._key, **{"asynctoken.trigger": self._trigger})
                self._span = observer.otel.start_span("asynctoken refresh", attributes)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._ended:  # cancelled
            self._end(None, None, exc or TokenError("the refresh ended without a result"))

    def succeeded(self, token: Token, provider: str, *, requested: bool) -> None:
        """It ended with ``token``: obtained from the endpoint (``requested``) or picked up."""
        self._end(provider, token, None, requested=requested)

    def failed(self, error: BaseException, provider: str | None) -> None:
        """It ended with ``error``."""
        self._end(provider, None, error)

    def _end(
        self,
        provider: str | None,
        token: Token | None,
        error: BaseException | None,
        *,
        requested: bool = False,
    ) -> None:
        observer = self._observer
        if self._ended or observer is None:
            return
        self._ended = True
        duration = time.perf_counter() - self._started
        if token is not None and provider is not None:
            observer.emit(
                RefreshSucceeded,
                self._key,
                provider=provider,
                requested=requested,
                expires_at=token.expires_at,
                duration=duration,
            )
        elif observer.dispatch is not None:
            observer.emit(
                RefreshFailed,
                self._key,
                provider=provider,
                error=scrub(error or TokenError("unknown failure")),
                background=self._background,
                duration=duration,
            )
        if observer.otel is not None:
            outcome = "failed" if error is not None else "refreshed" if requested else "picked_up"
            attributes = observer.attributes(
                self._key,
                **{
                    "asynctoken.trigger": self._trigger,
                    "asynctoken.outcome": outcome,
                    "asynctoken.provider": provider or "unknown",
                },
            )
            observer.otel.refreshes.add(1, attributes)
            span, attached = self._span
            error_type = None if error is None else type(error).__name__
            observer.otel.end(span, attached, error_type, attributes)


class RequestWatch:
    """One token request: a client span around it, its count and its duration."""

    __slots__ = ("_attributes", "_observer", "_provider", "_span", "_started")

    def __init__(
        self, observer: Observer, key: str, provider: Provider, refresh: bool, attempt: int
    ) -> None:
        self._observer = observer if observer.otel is not None else None
        self._provider = provider
        self._span: Any = None
        self._started = 0.0
        self._attributes: dict[str, Any] = {}
        if self._observer is not None:
            grant = "refresh_token" if refresh else primary_grant(provider)
            labels: dict[str, str | int] = {
                "asynctoken.provider": provider.name,
                "asynctoken.grant_type": grant,
                "asynctoken.attempt": attempt,
            }
            self._attributes = self._observer.attributes(key, **labels)

    def __enter__(self) -> RequestWatch:
        observer = self._observer
        if observer is not None and observer.otel is not None:
            from ._otel import http_attributes

            attributes = {**self._attributes, **http_attributes(self._provider.token_url)}
            self._span = observer.otel.start_span(
                "asynctoken token request", attributes, client=True
            )
            self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        observer = self._observer
        if observer is None or observer.otel is None:
            return
        otel = observer.otel
        duration = time.perf_counter() - self._started
        attributes = dict(self._attributes)
        del attributes["asynctoken.attempt"]  # per span only: metrics stay bounded
        attributes["asynctoken.outcome"] = outcome_of(exc)
        otel.requests.add(1, attributes)
        otel.request_duration.record(duration, attributes)
        span_attributes: dict[str, Any] = {"asynctoken.outcome": attributes["asynctoken.outcome"]}
        status = getattr(exc, "status", None)
        if isinstance(status, int):
            span_attributes["http.response.status_code"] = status
        span, attached = self._span
        otel.end(span, attached, None if exc is None else type(exc).__name__, span_attributes)
