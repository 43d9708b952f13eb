"""One token request as the manager makes it: retries with backoff, password-grant fallback."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from ._clock import Clock
from ._errors import InvalidGrantError, TransientError
from ._policy import RetryPolicy
from ._secrets import mask
from ._token import Token
from .providers._base import Provider

__all__ = ["request_token"]

logger = logging.getLogger("asynctoken")


async def request_token(
    key: str,
    provider: Provider,
    session: aiohttp.ClientSession,
    refresh_token: str | None,
    *,
    retry: RetryPolicy,
    clock: Clock,
) -> tuple[Token, float, float]:
    """Get a token from ``provider``, retrying transient failures as ``retry`` says.

    Uses the refresh token when there is one; when the server declares it dead and the provider
    has a password (or client-credentials) grant, falls back to that grant once.

    Returns:
        The token, and the monotonic and wall-clock times at which its request was sent.

    Raises:
        InvalidGrantError: no usable refresh token and no fallback grant.
        TransientError: still failing when the retry policy gave up.
        TokenError: any final error from the provider.
    """
    if refresh_token is None and not provider.can_reauthenticate:
        raise InvalidGrantError(
            "no refresh token is stored for this credential and no password grant is "
            "configured: re-authorize and seed it with add(key, provider, refresh_token=...)",
            key=key,
        )
    # One deadline for everything, the password fallback included: the caller holds the
    # credential's lock meanwhile. Measured on the loop's clock, like the sleeps it bounds.
    started = asyncio.get_running_loop().time()
    try:
        return await _with_retries(key, provider, session, refresh_token, retry, clock, started)
    except InvalidGrantError:
        if refresh_token is None or not provider.can_reauthenticate:
            raise
        logger.warning(
            "credential %r: refresh token %s rejected; requesting a new one with the "
            "configured password grant",
            key,
            mask(refresh_token),
        )
        return await _with_retries(key, provider, session, None, retry, clock, started)


async def _with_retries(
    key: str,
    provider: Provider,
    session: aiohttp.ClientSession,
    refresh_token: str | None,
    policy: RetryPolicy,
    clock: Clock,
    started: float,
) -> tuple[Token, float, float]:
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        attempt += 1
        issued_wall = clock.time()
        issued_mono = clock.monotonic()
        try:
            token = await provider.fetch_token(
                session, refresh_token=refresh_token, issued_at=issued_wall
            )
            return token, issued_mono, issued_wall
        except TransientError as exc:
            delay = policy.delay(attempt, exc.retry_after)
            elapsed = loop.time() - started
            if attempt >= policy.attempts or elapsed + delay > policy.deadline:
                raise TransientError(
                    f"token endpoint still failing after {attempt} attempt(s) in "
                    f"{elapsed:.1f} s: {exc.message}",
                    status=exc.status,
                    retry_after=exc.retry_after,
                    attempts=attempt,
                    key=key,
                ) from exc
            logger.warning(
                "credential %r: %s; retry %d in %.2f s",
                key,
                exc.message,
                attempt,
                delay,
                extra={"asynctoken_retry_delay": delay},
            )
            await asyncio.sleep(delay)
