"""The refresh protocol: how one credential is renewed, step by step.

:meth:`Refresher.run` is the whole protocol, in the order it happens:

1. **Pick up.** One store read: a valid token that another process stored (or that was stored
   before a restart) ends the refresh without a request.
2. **Lock.** The store's per-credential lock, which spans processes and hosts: among everyone
   sharing the store, one holder at a time gets to use the refresh token.
3. **Re-read.** Under the lock: first write a rotated refresh token this process could not save
   earlier, then pick up again (the previous holder may have just refreshed). A credential
   refreshed less than ``min_interval`` ago is not refreshed again before that (unless forced),
   whatever its answer said: a lifetime of zero must not turn into a request per call.
4. **Request.** One token request, retried with backoff on transient failures within one
   deadline; when the server declares the refresh token dead and the provider has a password or
   client-credentials grant, that grant once.
5. **Save.** The rotated refresh token reaches the store (compare-and-swap on the refresh token
   the refresh started from) before anyone sees the new access token. An unusable answer still
   has its new refresh token saved, and so has a token that expired before its answer arrived
   (which is then refused).
6. **Publish.** The manager caches the token and hands it to every waiting caller.

If the store refuses the save, callers get the token at once and the protocol keeps the lock while
it keeps trying to write it (``save_patience``), so that no other process refreshes with the dead
refresh token meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import aiohttp

from ._clock import Clock
from ._errors import (
    InvalidGrantError,
    MalformedResponseError,
    TokenEndpointError,
    TransientError,
)
from ._observe import Observer
from ._policy import RetryPolicy
from ._saving import RotationSaver
from ._secrets import mask
from ._status import note_failure, stamp
from ._token import Token
from .providers._base import Provider, takes_current
from .stores._base import TokenStore

__all__ = ["Outlet", "Refresher"]

logger = logging.getLogger("asynctoken")


class Outlet(Protocol):
    """Where one refresh delivers: the manager's cache and the callers waiting for it."""

    @property
    def fenced(self) -> bool:
        """The credential was removed or replaced meanwhile: cache nothing, create nothing."""
        ...

    def pick_up(self, stored: Token | None, *, need_fresh: bool) -> Token | None:
        """``stored`` if it can be served (and cache it), else ``None``."""
        ...

    def publish(self, token: Token, issued_mono: float, issued_wall: float) -> None:
        """Cache a token just obtained from the token endpoint."""
        ...

    def holds(self, refresh_token: str | None) -> None:
        """Note the refresh token the store holds (compared later, to end a cooldown early)."""
        ...

    def release(self, result: Token | BaseException) -> None:
        """Settle the waiting callers now, while the refresh goes on holding the lock."""
        ...


class Refresher:
    """Runs the refresh protocol for any credential of one store.

    Args:
        store: the credentials' store (lock, compare-and-swap).
        saver: writes rotated tokens, keeps the ones a failing store refused.
        session: returns the aiohttp session token requests are sent with.
        retry: retries of transient failures.
        clock: time source.
        lock_timeout: seconds to wait for the store's lock.
        save_patience: seconds to keep trying a refused save while holding the lock.
        min_interval: seconds a credential must have been issued before an unforced refresh.
        observer: told about each token request, retry, fallback and rotation.
    """

    __slots__ = (
        "_clock",
        "_lock_timeout",
        "_min_interval",
        "_observe",
        "_retry",
        "_save_patience",
        "_saver",
        "_session",
        "_store",
    )

    def __init__(
        self,
        store: TokenStore,
        saver: RotationSaver,
        *,
        session: Callable[[], aiohttp.ClientSession],
        retry: RetryPolicy,
        clock: Clock,
        lock_timeout: float,
        save_patience: float,
        min_interval: float,
        observer: Observer,
    ) -> None:
        self._store = store
        self._saver = saver
        self._session = session
        self._retry = retry
        self._clock = clock
        self._lock_timeout = lock_timeout
        self._save_patience = save_patience
        self._min_interval = min_interval
        self._observe = observer

    async def run(
        self,
        key: str,
        provider: Provider,
        outlet: Outlet,
        *,
        force: bool,
        background: bool,
        hurry: bool,
        renew_if: Callable[[Token | None], bool] | None = None,
    ) -> Token:
        """Renew ``key``'s token, or pick up one renewed elsewhere; return it.

        Args:
            key: the credential.
            provider: its token endpoint.
            outlet: where the token goes.
            force: request a new token even if the stored one is valid.
            background: a stale token is still being served; a picked-up token must be fresh.
            hurry: skip the minimum refresh interval (forced, or the token was rejected).
            renew_if: decides on the record re-read under the lock whether to request a new
                token even though the stored one is valid (keep-alive: only while its refresh
                token is still due, so that among processes only the first renews it).

        Raises:
            TokenError: any failure (the manager sets its ``key``).
        """
        store = self._store
        # 1. Pick up: a cold cache or another process may already have a good token.
        if not force and renew_if is None:
            token = outlet.pick_up(await store.get(key), need_fresh=background)
            if token is not None:
                return token
        # 2. Lock.
        async with store.lock(key, timeout=self._lock_timeout):
            # 3. Re-read, after writing what an earlier save left unsaved.
            stored = await self._saver.resume(key, await store.get(key))
            if renew_if is not None:
                force = force or renew_if(stored)
            if not force:
                token = outlet.pick_up(stored, need_fresh=background)
                if token is not None:
                    logger.debug("credential %r: picked up a token refreshed elsewhere", key)
                    return token
            old_refresh = stored.refresh_token if stored is not None else None
            outlet.holds(old_refresh)
            if not hurry:
                await self._pace(key, stored)
            # 4. Request.
            try:
                token, issued_mono, issued_wall = await self._request(
                    key, provider, old_refresh, stored
                )
            except MalformedResponseError as exc:
                # 5'. Save what an unusable answer carried: the server has probably rotated.
                saved = await self._salvage(key, exc, stored, provider)
                if exc.refresh_token and exc.refresh_token != old_refresh:
                    self._observe.rotated(key, provider, saved)
                if saved and exc.refresh_token:
                    outlet.holds(exc.refresh_token)
                if not saved:
                    outlet.release(exc)
                    await self._saver.keep_trying(key, patience=self._save_patience)
                await note_failure(store, key, exc, self._clock.time())
                raise
            except (TokenEndpointError, TransientError) as exc:
                await note_failure(store, key, exc, self._clock.time())  # 5''. for status
                raise
            if token.refresh_token is None and old_refresh is not None:
                token = token.with_refresh_token(old_refresh)  # RFC 6749 §6: keep the old one
            token = stamp(token, stored, issued_wall)  # the refresh token's issue and death
            # 5. Save, before anyone sees the token.
            if outlet.fenced and stored is None:
                saved = True  # removed meanwhile: never bring the credential back
            else:
                saved = await self._saver.save(key, token, stored)
            if token.refresh_token != old_refresh:
                self._observe.rotated(key, provider, saved)
            if self._clock.time() >= token.expires_at:
                outlet.holds(token.refresh_token)
                error = MalformedResponseError(
                    f"{provider.name} token endpoint issued a token that expired before its "
                    f"answer arrived (lifetime {token.expires_at - issued_wall:g} s)",
                    reason="token expired on arrival",
                    key=key,
                )
                if not saved:
                    outlet.release(error)
                    await self._saver.keep_trying(key, patience=self._save_patience)
                await note_failure(store, key, error, self._clock.time())
                raise error
            # 6. Publish.
            outlet.publish(token, issued_mono, issued_wall)
            if not saved:
                # The server rotated but the store refused the new refresh token. Callers get
                # the token now; the lock stays held (no other process may refresh with the dead
                # refresh token) while the save is retried.
                outlet.release(token)
                await self._saver.keep_trying(key, patience=self._save_patience)
        logger.info(
            "credential %r refreshed: access token %s, expires in %.0f s, refresh token %s",
            key,
            mask(token.access_token),
            token.expires_at - self._clock.time(),
            "rotated" if token.refresh_token != old_refresh else "kept",
        )
        return token

    async def _pace(self, key: str, stored: Token | None) -> None:
        """Wait until ``stored`` was issued ``min_interval`` ago (the lock is held meanwhile)."""
        if stored is None or stored.issued_at is None:
            return
        wait = stored.issued_at + self._min_interval - self._clock.time()
        if wait > 0:
            logger.info(
                "credential %r: refreshed %.2f s ago and unusable already; next request in %.2f s",
                key,
                self._min_interval - wait,
                wait,
            )
            await asyncio.sleep(min(wait, self._min_interval))

    async def _request(
        self, key: str, provider: Provider, refresh_token: str | None, stored: Token | None
    ) -> tuple[Token, float, float]:
        """Step 4: the refresh-token grant, or the provider's primary grant as a fallback.

        Returns:
            The token, and the monotonic and wall-clock times at which its request was sent.
        """
        if refresh_token is None and not provider.can_reauthenticate:
            raise InvalidGrantError(
                "no refresh token is stored for this credential and no password grant is "
                "configured: re-authorize and seed it with add(key, provider, refresh_token=...)",
                key=key,
            )
        # One deadline for everything, the password fallback included: the lock is held
        # meanwhile. Measured on the loop's clock, like the sleeps it bounds.
        started = asyncio.get_running_loop().time()
        try:
            return await self._with_retries(key, provider, refresh_token, started, stored)
        except InvalidGrantError:
            if refresh_token is None or not provider.can_reauthenticate:
                raise
            logger.warning(
                "credential %r: refresh token %s rejected; requesting a new one with the "
                "configured password grant",
                key,
                mask(refresh_token),
            )
            self._observe.fallback(key, provider)
            return await self._with_retries(key, provider, None, started, stored)

    async def _with_retries(
        self,
        key: str,
        provider: Provider,
        refresh_token: str | None,
        started: float,
        stored: Token | None,
    ) -> tuple[Token, float, float]:
        loop = asyncio.get_running_loop()
        policy = self._retry
        session = self._session()
        # A provider that keeps state with the credential (a DPoP key) gets the stored token.
        extra = {"current": stored} if takes_current(provider) else {}
        attempt = 0
        while True:
            attempt += 1
            issued_wall = self._clock.time()
            issued_mono = self._clock.monotonic()
            try:
                with self._observe.request(key, provider, refresh_token is not None, attempt):
                    token = await provider.fetch_token(
                        session, refresh_token=refresh_token, issued_at=issued_wall, **extra
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
                self._observe.retrying(key, provider, attempt, delay, exc)
                await asyncio.sleep(delay)

    async def _salvage(
        self, key: str, error: MalformedResponseError, stored: Token | None, provider: Provider
    ) -> bool:
        """Step 5 for an unusable answer: keep the new refresh token it carried.

        Returns:
            ``False`` if that refresh token is kept unsaved (the store refused it).
        """
        refresh_token = error.refresh_token
        old = stored.refresh_token if stored is not None else None
        if not refresh_token or refresh_token == old:
            return True
        seed = Token(
            access_token="",
            expires_at=0.0,
            refresh_token=refresh_token,
            provider=provider.name,
            # A refresh token may be bound to the credential's DPoP key (public clients).
            dpop_key=stored.dpop_key if stored is not None else None,
            refresh_token_issued_at=self._clock.time(),
        )
        saved = await self._saver.save(key, seed, stored)
        if saved:
            logger.warning(
                "credential %r: the token answer was unusable (%s), but its new refresh token "
                "was saved",
                key,
                error.reason,
            )
        return saved
