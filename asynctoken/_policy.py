"""When to refresh (:class:`Margins`) and how to retry (:class:`RetryPolicy`)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._errors import ConfigurationError

__all__ = ["Margins", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class Margins:
    """How long before expiry a token turns *stale* and *expired*.

    A token is **fresh** until ``refresh`` seconds before it expires, **stale** after that (callers
    still get it at once while one background refresh runs) and **expired** from ``expiry``
    seconds before its real expiry (callers wait for the refresh). Both margins shrink with short
    lifetimes: each is capped at its ratio of the token's lifetime, so a 3-second token stays fresh
    for 2.25 s with the defaults instead of being refreshed on every call.

    Attributes:
        refresh: seconds before expiry at which a background refresh starts.
        expiry: seconds before expiry after which the token is no longer handed out.
        refresh_ratio: cap on ``refresh`` as a fraction of the token's lifetime.
        expiry_ratio: cap on ``expiry`` as a fraction of the token's lifetime.
    """

    refresh: float = 300.0
    expiry: float = 30.0
    refresh_ratio: float = 0.25
    expiry_ratio: float = 0.05

    def __post_init__(self) -> None:
        if not (0 <= self.expiry <= self.refresh):
            raise ConfigurationError("Margins: need 0 <= expiry <= refresh")
        if not (0 <= self.expiry_ratio <= self.refresh_ratio < 1):
            raise ConfigurationError("Margins: need 0 <= expiry_ratio <= refresh_ratio < 1")

    def offsets(self, lifetime: float) -> tuple[float, float]:
        """Return ``(stale, expired)``: seconds before expiry for a token of ``lifetime``."""
        lifetime = max(lifetime, 0.0)
        return (
            min(self.refresh, self.refresh_ratio * lifetime),
            min(self.expiry, self.expiry_ratio * lifetime),
        )


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
        if self.attempts < 1:
            raise ConfigurationError("RetryPolicy: attempts must be >= 1")
        if self.deadline <= 0 or self.initial_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("RetryPolicy: deadline must be > 0 and delays >= 0")

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        ceiling = min(self.max_delay, self.initial_delay * (2 ** (retry - 1)))
        backoff = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            return max(backoff, min(retry_after, self.max_retry_after))
        return backoff
