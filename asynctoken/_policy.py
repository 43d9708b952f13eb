"""When to refresh (:class:`Margins`) and how to retry (:class:`RetryPolicy`)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._errors import ConfigurationError

__all__ = ["Margins", "RetryPolicy", "check_seconds"]

#: Servers keep expiry in whole seconds (``exp = floor(now) + TTL``, as in every JWT) while they
#: answer ``expires_in = TTL``: a token can die up to this long before ``issued_at + expires_in``.
EXPIRY_GRANULARITY = 1.0


def check_seconds(owner: str, name: str, value: object, *, positive: bool = False) -> float:
    """Validate a duration option: a finite number, ``>= 0`` (``> 0`` if ``positive``).

    Raises:
        ConfigurationError: not a number, ``NaN``, infinite, or out of range.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        bound = "> 0" if positive else ">= 0"
        raise ConfigurationError(f"{owner}: {name} must be a finite number of seconds {bound}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Margins:
    """How long before expiry a token turns *stale* and *expired*.

    A token is **fresh** until ``refresh`` seconds before it expires, **stale** after that (callers
    still get it at once while one background refresh runs) and **expired** from ``expiry``
    seconds before its real expiry (callers wait for the refresh). Both margins shrink for short
    lifetimes: each is capped at its ratio of the token's lifetime, so a one-minute token is not
    refreshed on every call.

    The expiry margin never drops below ``1 + in_flight`` seconds: servers keep expiry in whole
    seconds (a token can die up to 1 s before ``issued_at + expires_in``), and a token handed out
    must outlive the request that carries it, queueing in a connection pool included. Raise
    ``in_flight`` when requests can wait long in your client. For tokens shorter than twice that
    floor, the expiry margin is half the lifetime instead (the token is used for its first half),
    and the stale window keeps its width. With the defaults, a 3,600 s token is fresh for 3,300 s
    and handed out until 30 s before expiry; an 8 s token is fresh for 4.4 s and handed out until
    2 s before expiry.

    Attributes:
        refresh: seconds before expiry at which a background refresh starts.
        expiry: seconds before expiry after which the token is no longer handed out.
        refresh_ratio: cap on ``refresh`` as a fraction of the token's lifetime.
        expiry_ratio: cap on ``expiry`` as a fraction of the token's lifetime.
        in_flight: seconds a handed-out token must stay valid for the request that sends it.

    Raises:
        ConfigurationError: a value is ``NaN``, negative, or the margins are out of order.
    """

    refresh: float = 300.0
    expiry: float = 30.0
    refresh_ratio: float = 0.25
    expiry_ratio: float = 0.05
    in_flight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("refresh", "expiry", "in_flight"):
            check_seconds("Margins", name, getattr(self, name))
        for name in ("refresh_ratio", "expiry_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ConfigurationError(f"Margins: {name} must be a number")
        if not (self.expiry <= self.refresh):
            raise ConfigurationError("Margins: need 0 <= expiry <= refresh")
        if not (0 <= self.expiry_ratio <= self.refresh_ratio < 1):
            raise ConfigurationError("Margins: need 0 <= expiry_ratio <= refresh_ratio < 1")

    def offsets(self, lifetime: float) -> tuple[float, float]:
        """Return ``(stale, expired)``: seconds before expiry for a token of ``lifetime``."""
        lifetime = max(lifetime, 0.0)
        stale = min(self.refresh, self.refresh_ratio * lifetime)
        expired = min(self.expiry, self.expiry_ratio * lifetime)
        floor = EXPIRY_GRANULARITY + self.in_flight
        if expired < floor:
            # Raised to the floor (at most half the lifetime); the stale window keeps its width.
            raised = min(floor, 0.5 * lifetime)
            if raised > expired:
                stale = max(stale, min(raised + (stale - expired), 0.75 * lifetime))
                expired = raised
        return stale, expired


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of transient token-endpoint failures (5xx, 408, 429, network errors, timeouts).

    Delays grow exponentially with full jitter; a server's ``Retry-After`` is honoured (capped at
    ``max_retry_after``). Retrying stops after ``attempts`` requests or when the next delay would
    pass ``deadline`` seconds since the first request, whichever comes first; the caller then
    gets a :class:`~asynctoken.TransientError`. Final errors (``invalid_grant``,
    ``invalid_client``, other 4xx, malformed answers) are never retried.

    Attributes:
        attempts: maximum number of requests, the first included.
        deadline: total seconds allowed for all attempts and delays.
        initial_delay: delay before the first retry, before jitter.
        max_delay: cap on one backoff delay.
        max_retry_after: cap on a server's ``Retry-After``.
    """

    attempts: int = 4
    deadline: float = 30.0
    initial_delay: float = 0.2
    max_delay: float = 5.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError("RetryPolicy: attempts must be an integer")
        if self.attempts < 1:
            raise ConfigurationError("RetryPolicy: attempts must be >= 1")
        check_seconds("RetryPolicy", "deadline", self.deadline, positive=True)
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            check_seconds("RetryPolicy", name, getattr(self, name))

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_delay, self.initial_delay * (2 ** (retry - 1)))
        backoff = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            return max(backoff, min(retry_after, self.max_retry_after))
        return backoff
