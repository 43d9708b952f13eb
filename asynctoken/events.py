"""What a :class:`~asynctoken.TokenManager` reports as it works: one event per step that matters.

Subscribe with ``TokenManager(on_event=callback)``; the callback gets every event, may be a
plain function or a coroutine function, and runs in a task of its own after the step that emitted
the event, in order: a slow or failing callback never delays or breaks a refresh (failures are
logged; when more than 10,000 events wait, newer ones are dropped and that is logged once). A
plain callback runs on the event loop: it must not block (write to a queue, bump a counter).

Example::

    from asynctoken.events import Event, ReauthorizationRequired, RefreshFailed

    def on_event(event: Event) -> None:
        if isinstance(event, ReauthorizationRequired):
            alert(f"credential {event.key} needs re-authorization")
        elif isinstance(event, RefreshFailed):
            log.warning("refresh of %s failed: %s", event.key, event.error)

    tm = TokenManager(store=..., on_event=on_event)

Events never carry a secret: no access or refresh token, client secret or password, in any field,
``repr`` or attached error (errors are copies without traceback, cause or the secret attribute
:attr:`~asynctoken.MalformedResponseError.refresh_token`). Every event has the credential
``key`` and ``time`` (unix epoch seconds, on the manager's clock).

A refresh emits, in order: ``RefreshStarted``; maybe ``LockWaitedLong``, ``RetryScheduled``
(once per retry), ``FallbackGrantUsed`` and ``RefreshTokenRotated``; then exactly one of
``RefreshSucceeded`` or ``RefreshFailed``, the latter maybe followed by
``ReauthorizationRequired`` and ``CooldownStarted``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ._errors import InvalidGrantError, StoreError, TokenError

__all__ = [
    "CooldownEnded",
    "CooldownStarted",
    "Event",
    "EventCallback",
    "FallbackGrantUsed",
    "LockWaitedLong",
    "ReauthorizationRequired",
    "RefreshFailed",
    "RefreshStarted",
    "RefreshSucceeded",
    "RefreshTokenRotated",
    "RetryScheduled",
    "StoreFailed",
    "TokenInvalidated",
    "Trigger",
]

Trigger: TypeAlias = Literal["miss", "stale", "forced", "rejected", "keep_alive"]
"""Why a refresh started: no usable token in this process (``"miss"``: never fetched, evicted
or expired), a stale token served while refreshing in the background (``"stale"``),
:meth:`~asynctoken.TokenManager.refresh` (``"forced"``), an API rejected the current token
(``"rejected"``), or its refresh token was about to die of idleness (``"keep_alive"``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of every event.

    Attributes:
        key: the credential it concerns.
        time: when it happened, unix epoch seconds (the manager's clock).
    """

    key: str
    time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshStarted(Event):
    """A refresh of ``key`` started: this process needs a token it does not have.

    It ends with :class:`RefreshSucceeded` (a new token, or one another process stored) or
    :class:`RefreshFailed`. Callers of the key that arrive meanwhile share it.

    Attributes:
        trigger: why it started (see :data:`Trigger`).
    """

    trigger: Trigger


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshSucceeded(Event):
    """A refresh ended with a token.

    Attributes:
        provider: the provider's name (``"keliweb"``, …).
        requested: ``True`` when this process asked the token endpoint; ``False`` when it picked
            up a token that another process (or an earlier run) had stored.
        expires_at: when the token expires, unix epoch seconds.
        duration: seconds since :class:`RefreshStarted`.
    """

    provider: str
    requested: bool
    expires_at: float
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshFailed(Event):
    """A refresh ended with an error; its callers got ``error``.

    Attributes:
        provider: the provider's name, or ``None`` when none could be resolved.
        error: what the callers got (a copy, without traceback and secrets).
        background: ``True`` when a valid token was still served meanwhile (a failed refresh
            of a stale token: nobody got the error).
        duration: seconds since :class:`RefreshStarted`.
    """

    provider: str | None
    error: TokenError
    background: bool
    duration: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """A token request failed transiently (5xx, 429, network) and will be retried.

    Attributes:
        provider: the provider's name.
        attempt: the number of the request that failed, from 1.
        delay: seconds before the next one.
        error: what that request raised.
    """

    provider: str
    attempt: int
    delay: float
    error: TokenError


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackGrantUsed(Event):
    """The server declared the refresh token dead, and the provider's own grant is used instead.

    Emitted before that request is sent; :class:`RefreshSucceeded` or :class:`RefreshFailed`
    tells how it went.

    Attributes:
        provider: the provider's name.
        grant: the grant used instead (``"password"``, ``"client_credentials"``).
    """

    provider: str
    grant: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshTokenRotated(Event):
    """The token endpoint issued a new refresh token (the old one is dead now).

    Attributes:
        provider: the provider's name.
        saved: whether the store took it. ``False``: the store failed; this process keeps it
            and keeps trying to write it (see ``save_patience``).
    """

    provider: str
    saved: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ReauthorizationRequired(Event):
    """The credential is dead: its refresh token (or password) was rejected and nothing else
    can renew it. A person must re-authorize and seed it again (``add(..., overwrite=True)`` or
    ``asynctoken add --overwrite``).

    Attributes:
        error: the rejection.
    """

    error: InvalidGrantError


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreFailed(Event):
    """A store operation failed.

    Attributes:
        operation: ``"get"``, ``"put"``, ``"put_if_absent"``, ``"replace"``, ``"delete"``,
            ``"keys"`` or ``"lock"``.
        error: what the store raised (:class:`~asynctoken.StoreLockTimeoutError` for a lock
            that was not acquired in time).
    """

    operation: str
    error: StoreError


@dataclass(frozen=True, slots=True, kw_only=True)
class CooldownStarted(Event):
    """After a failed refresh, callers of ``key`` are held back for a while.

    Attributes:
        error: the failure.
        seconds: how long.
        final: ``True`` for a final error (``invalid_grant``, ``invalid_client``, another 4xx,
            an unusable answer): callers fail fast with it, without a request, until the
            cooldown ends. ``False`` after a transient failure of a background refresh: the
            next background attempt waits.
    """

    error: TokenError
    seconds: float
    final: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CooldownEnded(Event):
    """A cooldown ended.

    Attributes:
        reason: ``"elapsed"``, ``"store_changed"`` (the stored credential was re-seeded),
            ``"refreshed"`` (a refresh succeeded) or ``"reset"`` (the credential was
            registered again, replaced or removed).
    """

    reason: Literal["elapsed", "store_changed", "refreshed", "reset"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenInvalidated(Event):
    """An API rejected the current token of ``key`` (:meth:`~asynctoken.TokenManager.invalidate`,
    ``token_rejected`` or a client adapter after a 401).

    Attributes:
        dropped: ``True`` when the token was dropped (the next call refreshes); ``False`` when
            the invalidation was refused: a token obtained after a rejection less than
            ``invalidate_interval`` ago was rejected again.
    """

    dropped: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LockWaitedLong(Event):
    """Taking the store's lock of ``key`` took longer than ``lock_wait_threshold``: another
    process held it (refreshing, or stuck).

    Attributes:
        seconds: how long the wait took.
        acquired: whether it ended with the lock (else :class:`StoreFailed` follows).
    """

    seconds: float
    acquired: bool


EventCallback: TypeAlias = Callable[[Event], "Awaitable[None] | None"]
"""What ``TokenManager(on_event=...)`` takes: a function or coroutine function of an event."""
