"""What one refresh and one token request report: :class:`RefreshWatch` and
:class:`RequestWatch`, created by :class:`~._observe.Observer`, and the helpers that keep what
they report bounded and free of secrets.
"""

from __future__ import annotations

import asyncio
import copy
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._errors import (
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    TokenEndpointError,
    TokenError,
    TransientError,
)
from ._token import Token
from .events import RefreshFailed, RefreshStarted, RefreshSucceeded, Trigger

if TYPE_CHECKING:
    from ._observe import Observer
    from .providers._base import Provider

__all__ = ["RefreshWatch", "RequestWatch", "outcome_of", "primary_grant", "scrub"]


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
