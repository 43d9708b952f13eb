"""What a credential is doing (:class:`CredentialStatus`), and its refresh token's lifecycle.

The facts that other processes and restarts need live in the stored record (see
:class:`~asynctoken.Token`): when the current refresh token was issued, when the server said it
dies, and the refreshes that failed since the last good token. The refresh protocol writes them
(:func:`stamp` before a save, :func:`note_failure` after a failed request); the manager's
``status()`` and ``asynctoken status`` read them through :func:`describe`.

A refresh token dies at the time the server's answer gave (``refresh_token_expires_in``,
``refresh_expires_in``), else after the provider's known idle limit (Keliweb: 10 days without
use; every Keliweb refresh rotates, so its idle time is the age of the current refresh token),
else at an unknown time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from ._errors import StoreError, TokenError
from ._token import RefreshFailure, Token
from .providers._base import Provider
from .stores._base import TokenStore

__all__ = [
    "REFRESH_TOKEN_IDLE_LIMITS",
    "CredentialStatus",
    "describe",
    "note_failure",
    "read_records",
    "renew_at",
    "stamp",
]

logger = logging.getLogger("asynctoken")

DAY: Final = 86_400.0

#: Seconds a refresh token of these providers survives without use.
REFRESH_TOKEN_IDLE_LIMITS: Final[Mapping[str, float]] = {"keliweb": 10 * DAY}

#: Answer fields giving the refresh token's lifetime in seconds (GitHub and Azure AD B2C;
#: Keycloak).
_LIFETIME_FIELDS: Final = ("refresh_token_expires_in", "refresh_expires_in")

#: Keep-alive renews a refresh token this share of its lifetime before it dies (at most
#: ``_MAX_KEEP_ALIVE_MARGIN``): a Keliweb refresh token is renewed after 8 of its 10 idle days.
_KEEP_ALIVE_SHARE: Final = 0.25
_MAX_KEEP_ALIVE_MARGIN: Final = 2 * DAY

_MAX_MESSAGE: Final = 300


def _seconds(value: Any) -> float | None:
    """A positive, finite number of seconds from an answer field (a number or a decimal
    string); ``None`` otherwise."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and 0 < seconds < 100 * 365 * DAY else None


def stamp(token: Token, stored: Token | None, issued_at: float) -> Token:
    """``token`` (just obtained, requested at ``issued_at``) with its refresh token's times.

    A new refresh token was issued at ``issued_at``; a kept one keeps its times. The answer's
    refresh token lifetime, if any, gives its death. The failures before are over.
    """
    issued: float | None = issued_at
    expires: float | None = None
    if stored is not None and token.refresh_token == stored.refresh_token:  # kept
        issued, expires = stored.refresh_token_issued_at, stored.refresh_token_expires_at
    for name in _LIFETIME_FIELDS:
        lifetime = _seconds(token.extra.get(name))
        if lifetime is not None:
            expires = issued_at + lifetime
            break
    if token.refresh_token is None:
        issued = expires = None
    return dataclasses.replace(
        token, refresh_token_issued_at=issued, refresh_token_expires_at=expires, failure=None
    )


async def note_failure(store: TokenStore, key: str, error: TokenError, now: float) -> None:
    """Count a failed refresh of ``key`` in its stored record (the caller holds its lock).

    Best effort: a store that fails meanwhile is logged, never raised over ``error``.
    """
    try:
        current = await store.get(key)
        if current is None:
            return
        count = current.failure.count + 1 if current.failure is not None else 1
        message = error.message
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 1] + "…"
        failure = RefreshFailure(at=now, error=type(error).__name__, message=message, count=count)
        noted = dataclasses.replace(current, failure=failure)
        await store.replace(key, noted, expected_refresh_token=current.refresh_token)
    except StoreError as exc:
        logger.debug("credential %r: the failed refresh was not noted in the store: %s", key, exc)


def refresh_token_death(token: Token) -> tuple[float | None, float | None]:
    """When ``token``'s refresh token dies and its lifetime, each ``None`` when unknown.

    The death is unknown for a refresh token of unknown age, even when its provider's idle
    limit (the lifetime) is known.
    """
    if not token.refresh_token:
        return None, None
    if token.refresh_token_expires_at is not None:
        issued = token.refresh_token_issued_at
        lifetime = None if issued is None else token.refresh_token_expires_at - issued
        return token.refresh_token_expires_at, lifetime
    limit = REFRESH_TOKEN_IDLE_LIMITS.get(token.provider or "")
    if limit is None or token.refresh_token_issued_at is None:
        return None, limit
    return token.refresh_token_issued_at + limit, limit


def renew_at(token: Token) -> float | None:
    """When keep-alive should renew ``token``'s refresh token (unix time; ``-inf``: now), or
    ``None`` when it need not (no refresh token, or no known limit)."""
    death, lifetime = refresh_token_death(token)
    if death is None:
        # A known limit and an unknown age: renew now, which makes the age known.
        return -math.inf if lifetime is not None and token.refresh_token else None
    margin = _MAX_KEEP_ALIVE_MARGIN
    if lifetime is not None:
        margin = min(margin, _KEEP_ALIVE_SHARE * lifetime)
    return death - margin


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialStatus:
    """What a credential is doing, from its stored record and this process's state.

    Times are unix epoch seconds. The stored facts (everything but ``cooldown_until`` and
    ``refreshing``) are the same in every process sharing the store, and in
    ``asynctoken status``.

    Attributes:
        key: the credential.
        checked_at: when this status was taken.
        provider: the provider's name, when known.
        stored: whether the store holds a record for ``key``.
        damaged: why the record cannot be read, or ``None``.
        access_token_expires_at: when the current access token expires; ``None`` if it has
            never been refreshed.
        last_refresh_at: when the current access token was requested.
        has_refresh_token: whether a refresh token is stored.
        refresh_token_issued_at: when the stored refresh token was issued, when known.
        refresh_token_expires_at: when it dies, when known: the server's word, else its issue
            time plus the provider's known idle limit (Keliweb: 10 days).
        refresh_token_lifetime: that limit in seconds, when known.
        last_failure: the refreshes that failed since the current token was obtained.
        cooldown_until: this process fails calls fast (a final error) or holds background
            refreshes back until then; ``None`` when not cooling down.
        refreshing: this process is refreshing ``key`` now.
        needs_reauthorization: a person must re-authorize the credential: its refresh token
            (or password) was rejected, or its refresh token died and nothing else can renew
            it.
    """

    key: str
    checked_at: float
    provider: str | None = None
    stored: bool = True
    damaged: str | None = None
    access_token_expires_at: float | None = None
    last_refresh_at: float | None = None
    has_refresh_token: bool = False
    refresh_token_issued_at: float | None = None
    refresh_token_expires_at: float | None = None
    refresh_token_lifetime: float | None = None
    last_failure: RefreshFailure | None = None
    cooldown_until: float | None = None
    refreshing: bool = False
    needs_reauthorization: bool = False

    @property
    def access_token_state(self) -> Literal["valid", "expired", "never_refreshed", "unknown"]:
        """The access token's state at ``checked_at``."""
        if self.damaged is not None:
            return "unknown"
        if self.access_token_expires_at is None:
            return "never_refreshed"
        return "valid" if self.access_token_expires_at > self.checked_at else "expired"

    @property
    def consecutive_failures(self) -> int:
        """Refreshes failed in a row since the last good token."""
        return self.last_failure.count if self.last_failure is not None else 0

    @property
    def refresh_token_age(self) -> float | None:
        """Seconds since the refresh token was issued, when known."""
        issued = self.refresh_token_issued_at
        return None if issued is None else self.checked_at - issued

    @property
    def refresh_token_remaining(self) -> float | None:
        """Seconds until the refresh token dies (negative: dead), when known."""
        expires = self.refresh_token_expires_at
        return None if expires is None else expires - self.checked_at

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field and property."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["last_failure"] = self.last_failure.to_dict() if self.last_failure else None
        for name in (
            "access_token_state",
            "consecutive_failures",
            "refresh_token_age",
            "refresh_token_remaining",
        ):
            data[name] = getattr(self, name)
        return data


def describe(
    key: str,
    token: Token | None,
    now: float,
    registered: Provider | None = None,
    cooldown_until: float | None = None,
    refreshing: bool = False,
    damaged: str | None = None,
) -> CredentialStatus:
    """The status of ``key`` whose stored record is ``token`` (``None``: nothing stored).

    Args:
        key: the credential.
        token: its stored record.
        now: unix time of the status.
        registered: its provider in this process; ``None`` when unknown (``asynctoken
            status``): then whether a password grant could take over is unknown too.
        cooldown_until: see :attr:`CredentialStatus.cooldown_until`.
        refreshing: see :attr:`CredentialStatus.refreshing`.
        damaged: why the record could not be read.
    """
    provider = registered.name if registered is not None else None
    can_reauthenticate = registered.can_reauthenticate if registered is not None else None
    if token is None:
        return CredentialStatus(
            key=key,
            checked_at=now,
            provider=provider,
            stored=damaged is not None,
            damaged=damaged,
            cooldown_until=cooldown_until,
            refreshing=refreshing,
            needs_reauthorization=can_reauthenticate is False,
        )
    death, lifetime = refresh_token_death(token)
    dead = death is not None and death <= now
    rejected = token.failure is not None and token.failure.needs_reauthorization
    stuck = (not token.refresh_token or dead) and can_reauthenticate is False
    return CredentialStatus(
        key=key,
        checked_at=now,
        provider=token.provider or provider,
        access_token_expires_at=token.expires_at if token.access_token else None,
        last_refresh_at=token.issued_at if token.access_token else None,
        has_refresh_token=bool(token.refresh_token),
        refresh_token_issued_at=token.refresh_token_issued_at,
        refresh_token_expires_at=death,
        refresh_token_lifetime=lifetime,
        last_failure=token.failure,
        cooldown_until=cooldown_until,
        refreshing=refreshing,
        needs_reauthorization=rejected or stuck or (dead and can_reauthenticate is None),
    )


async def read_records(
    store: TokenStore, batch: int = 100
) -> AsyncIterator[tuple[str, Token | StoreError]]:
    """Every ``(key, record)`` of ``store``; a record that cannot be read is its
    :class:`StoreError`. Keys are read in batches of ``batch`` whose records are fetched
    concurrently, so memory stays bounded however many the store holds. Records deleted while
    iterating are skipped; a key that Redis ``SCAN`` yields twice within a batch once."""
    keys: list[str] = []
    async for key in store.keys():
        keys.append(key)
        if len(keys) >= batch:
            for item in await _get_all(store, keys):
                yield item
            keys = []
    if keys:
        for item in await _get_all(store, keys):
            yield item


async def _get_all(store: TokenStore, keys: list[str]) -> list[tuple[str, Token | StoreError]]:
    async def get(key: str) -> Token | StoreError | None:
        try:
            return await store.get(key)
        except StoreError as exc:
            return exc

    unique = list(dict.fromkeys(keys))
    tasks = [asyncio.ensure_future(get(key)) for key in unique]
    try:
        records = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    pairs = zip(unique, records, strict=True)
    return [(key, record) for key, record in pairs if record is not None]
