"""The :class:`TokenManager`: cached tokens for many coroutines, one refresh per credential.

The manager holds the caching, the single flight and the public API; how one credential is
renewed (lock, re-read, request, save, publish) is :mod:`asynctoken._refresh`.

* **Hot path.** A fresh cached token is returned by one dict lookup and one clock read: no
  lock, no task, no await of anything else. The clock read compares the token's freshness
  deadline, so a token is never handed out late, even right after the event loop stalled.
* **Single flight.** A refresh is one :class:`asyncio.Task` per credential key, owned by the
  manager. Each caller waits on a future of its own that the task settles (what
  :func:`asyncio.shield` does, with one callback for all callers instead of three per caller);
  cancelling any caller, or all of them, never cancels the refresh, so its answer is always
  parsed, saved and cached.
* **Across processes.** Inside that task the store's per-key lock is taken and the stored
  credential re-read before any request, so among all processes sharing a store only one calls
  the token endpoint per expiry; the others pick up the winner's token.
* **Rotation.** A new refresh token is written to the store (compare-and-swap on the refresh
  token the refresh started from) before the new access token reaches anyone.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp

from . import _fork
from ._cache import Entry, Flight, HotCache
from ._clock import Clock, SystemClock
from ._cooldown import Cooldowns, Rejections
from ._errors import ConfigurationError, CredentialNotFoundError, StoreError, TokenError
from ._keepalive import KeepAlive, is_due, renew_due
from ._observe import Observer, RefreshWatch
from ._outlet import CacheOutlet
from ._policy import Margins, RetryPolicy, check_seconds
from ._refresh import Refresher
from ._registry import ProviderFactory, ProviderRegistry, TokenSession
from ._saving import RotationSaver
from ._secrets import mask
from ._status import CredentialStatus, describe, read_records
from ._token import Token
from .events import EventCallback, Trigger
from .providers._base import Provider
from .stores._base import TokenStore
from .stores._memory import MemoryStore

if TYPE_CHECKING:
    from ._middleware import TokenMiddleware
    from .httpx import TokenAuth

__all__ = ["ProviderFactory", "TokenManager"]

logger = logging.getLogger("asynctoken")


class TokenManager:
    """Hands valid access tokens to any number of coroutines; refreshes each credential once.

    Example::

        async with TokenManager(store=FileStore("tokens.json")) as tm:
            await tm.add("keliweb", KeliwebProvider(client_id=..., client_secret=...),
                         refresh_token=os.environ["KELIWEB_REFRESH_TOKEN"])
            token = await tm.get_token("keliweb")
            headers = {"Authorization": token.authorization}

    Args:
        store: where credentials live; :class:`MemoryStore` (this process only) by default. Use
            :class:`FileStore` or :class:`RedisStore` to share credentials between processes. The
            manager closes it on :meth:`aclose`.
        session: an :class:`aiohttp.ClientSession` whose connection pool token requests reuse.
            Token requests never pass through its middlewares or its cookie jar. Without one, the
            manager owns a session. The manager never closes a session it was given.
        provider_factory: called with a key that was not registered with :meth:`add`, returns
            its provider (or an awaitable of it, or ``None`` for unknown keys). Results are cached
            (bounded by ``cache_size``). This is how a multi-tenant app avoids registering every
            tenant at start-up.
        margins: when tokens turn stale and expired; see :class:`Margins`.
        retry: retries of transient failures; see :class:`RetryPolicy`.
        cache_size: how many access tokens (and resolved providers) this process keeps in
            memory. Eviction only costs a store read, never a credential.
        lock_timeout: seconds to wait for another process's refresh of the same credential.
        error_cooldown: after a final error from the token endpoint (``invalid_grant``,
            ``invalid_client``, any other 4xx), calls within this many seconds fail fast with the
            same error, without a request.
        background_retry_interval: after a failed background refresh of a still-valid token,
            seconds before the next background attempt.
        invalidate_interval: after a rejected token (:meth:`invalidate`) caused a refresh of a
            key, seconds during which further invalidations of that key are refused (at most
            one refresh per interval is caused by rejected tokens).
        close_timeout: on :meth:`aclose`, seconds to let in-flight refreshes finish (so rotated
            refresh tokens get saved) before they are cancelled.
        save_patience: when the store refuses a rotated refresh token, seconds during which the
            refresh keeps the credential's lock and keeps trying to write it (callers already
            have the new token). Afterwards it is kept in memory and written before the next
            refresh, or on :meth:`aclose`.
        clock: time source; inject a fake one in tests.
        on_event: called with every :mod:`asynctoken.events` event (a function or coroutine
            function), from a task of its own: it never delays a refresh.
        telemetry: record OpenTelemetry metrics and spans when ``opentelemetry-api`` is
            installed (``asynctoken[otel]``), through whatever SDK the application configured.
        telemetry_keys: add the credential key to telemetry attributes. Off by default: keys
            can be tenant ids (unbounded cardinality, personal data).
        lock_wait_threshold: a wait for a credential's store lock longer than this many
            seconds emits :class:`~asynctoken.events.LockWaitedLong`.
        keep_alive: every ``keep_alive_interval`` seconds, renew in the background the
            credentials whose refresh token would otherwise die of idleness soon (see
            :meth:`refresh_due`). Starts with the first use of the manager.
        keep_alive_interval: seconds between two keep-alive scans of the store.

    Raises:
        ConfigurationError: an argument is out of range.
    """

    __slots__ = (
        "__weakref__",
        "_cache",
        "_clock",
        "_close_timeout",
        "_closed",
        "_closing",
        "_drop_timers",
        "_failures",
        "_forked_from",
        "_fresh",
        "_hot",
        "_inflight",
        "_keep_alive",
        "_lock_timeout",
        "_margins",
        "_monotonic",
        "_observer",
        "_providers",
        "_refresher",
        "_rejected",
        "_retry",
        "_saver",
        "_sessions",
        "_store",
        "_tasks",
        "_used",
        "_wall",
    )

    def __init__(
        self,
        store: TokenStore | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        provider_factory: ProviderFactory | None = None,
        margins: Margins | None = None,
        retry: RetryPolicy | None = None,
        cache_size: int = 10_000,
        lock_timeout: float = 90.0,
        error_cooldown: float = 30.0,
        background_retry_interval: float = 10.0,
        invalidate_interval: float = 5.0,
        close_timeout: float = 10.0,
        save_patience: float = 30.0,
        min_refresh_interval: float = 1.0,
        clock: Clock | None = None,
        on_event: EventCallback | None = None,
        telemetry: bool = True,
        telemetry_keys: bool = False,
        lock_wait_threshold: float = 1.0,
        keep_alive: bool = False,
        keep_alive_interval: float = 3600.0,
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ConfigurationError("cache_size must be an integer >= 1")
        lock_timeout = check_seconds("TokenManager", "lock_timeout", lock_timeout, positive=True)
        check_seconds("TokenManager", "keep_alive_interval", keep_alive_interval, positive=True)
        seconds = {
            "error_cooldown": error_cooldown,
            "background_retry_interval": background_retry_interval,
            "invalidate_interval": invalidate_interval,
            "close_timeout": close_timeout,
            "save_patience": save_patience,
            "min_refresh_interval": min_refresh_interval,
            "lock_wait_threshold": lock_wait_threshold,
        }
        for name, value in seconds.items():
            check_seconds("TokenManager", name, value)
        if store is not None and not isinstance(store, TokenStore):
            raise ConfigurationError(f"store must implement TokenStore, got {type(store).__name__}")
        self._store: TokenStore = store if store is not None else MemoryStore()
        self._sessions = TokenSession(session)  # never the user's session itself
        self._margins = margins or Margins()
        self._retry = retry or RetryPolicy()
        self._lock_timeout = lock_timeout
        self._close_timeout = close_timeout
        self._clock: Clock = clock or SystemClock()
        self._wall = self._clock.time
        self._observer = Observer(
            on_event=on_event,
            clock=self._clock,
            telemetry=telemetry,
            telemetry_keys=telemetry_keys,
            lock_wait_threshold=lock_wait_threshold,
        )
        # With telemetry, a clock that counts the hot path's reads (asynctoken.cache.lookups).
        self._monotonic = self._observer.hot_clock(self._clock.monotonic)
        store = self._observer.store(self._store)  # store errors and lock waits seen
        self._hot: dict[str, Entry] = {}
        self._fresh: dict[str, tuple[float, Token]] = {}
        self._cache = HotCache(cache_size, self._hot, self._fresh)
        # With the system clock, a loop timer drops each entry when its token expires; with an
        # injected clock (which the loop cannot follow) entries leave when replaced or evicted.
        self._drop_timers = isinstance(self._clock, SystemClock)
        self._providers = ProviderRegistry(provider_factory, cache_size)
        self._inflight: dict[str, Flight] = {}
        self._failures = Cooldowns(
            store,
            size=cache_size,
            cooldown=error_cooldown,
            background_retry=background_retry_interval,
            max_retry_after=self._retry.max_retry_after,
            monotonic=self._clock.monotonic,
            observer=self._observer,
            timers=self._drop_timers,
        )
        self._rejected = Rejections(cache_size, invalidate_interval, self._clock.monotonic)
        self._saver = RotationSaver(store)
        self._refresher = Refresher(
            store,
            self._saver,
            session=self._sessions,
            retry=self._retry,
            clock=self._clock,
            lock_timeout=lock_timeout,
            save_patience=save_patience,
            min_interval=min_refresh_interval,
            observer=self._observer,
        )
        self._closed = False
        # Used by an event loop of this process (then its session, store connections, locks and
        # tasks belong to that loop), and the parent's pid when this is a forked child's copy.
        self._used = False
        self._forked_from: int | None = None
        _fork.watch(self)
        self._closing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._keep_alive = KeepAlive(self.refresh_due, keep_alive_interval) if keep_alive else None

    # ------------------------------------------------------------------ public API

    async def get_token(self, key: str) -> Token:
        """Return a valid access token for ``key``.

        A fresh cached token comes back at once. A stale one also comes back at once, and one
        background refresh starts. Only a missing or expired token makes the caller wait, for the
        one refresh shared by every caller of that key. A token is never handed out within the
        expiry margin of its expiry (see :class:`Margins`), even after the event loop stalled.

        Raises:
            CredentialNotFoundError: no provider for ``key``.
            InvalidGrantError: the refresh token is dead and no password grant is configured.
            InvalidClientError: the client credentials were rejected.
            TokenEndpointError: another final error from the token endpoint.
            TransientError: the endpoint kept failing until the retry deadline.
            MalformedResponseError: the endpoint answered with something that is not a token.
            StoreError: the store failed.
        """
        hit = self._fresh.get(key)
        if hit is not None and self._monotonic() < hit[0]:
            return hit[1]
        return await self._get_slow(key)

    async def add(
        self,
        key: str,
        provider: Provider,
        *,
        refresh_token: str | None = None,
        overwrite: bool = False,
    ) -> bool:
        """Register ``provider`` for ``key`` and optionally seed a refresh token.

        The seed is stored only if the store holds nothing for ``key``: after a restart the
        configured seed is older than the rotated refresh token in the store, and using it would
        fail. Pass ``overwrite=True`` to replace the stored credential (after re-authorizing).

        Args:
            key: the credential's name.
            provider: how to reach its token endpoint.
            refresh_token: an initial refresh token.
            overwrite: replace whatever the store holds for ``key``.

        Returns:
            Whether the seed was written to the store.

        Raises:
            ConfigurationError: ``provider`` is not a provider or ``key`` is empty.
            StoreError: the store failed.
        """
        self._check_open()
        if not key or not isinstance(key, str):
            raise ConfigurationError("key must be a non-empty string")
        if not isinstance(provider, Provider):
            raise ConfigurationError(
                f"provider must implement the Provider protocol, got {type(provider).__name__}"
            )
        self._providers.register(key, provider)
        self._failures.forget(key)  # a new configuration deserves a new attempt
        if refresh_token is None:
            return False
        if not isinstance(refresh_token, str) or not refresh_token:
            raise ConfigurationError("refresh_token must be a non-empty string")
        seed = Token(
            access_token="", expires_at=0.0, refresh_token=refresh_token, provider=provider.name
        )
        if overwrite:
            await self._store.put(key, seed)
            self._forget(key)
            logger.info("credential %r seeded (overwrite)", key)
            return True
        stored = await self._store.put_if_absent(key, seed)
        if stored:
            logger.info("credential %r seeded", key)
        else:
            logger.debug("credential %r already in the store; seed ignored", key)
        return stored

    async def invalidate(self, key: str, token: Token) -> bool:
        """Drop ``token`` if it is still the current token of ``key``.

        Call this when an API rejected the token (HTTP 401). A newer token that another request
        already obtained is left alone, so N requests failing with the same token cause one
        refresh, not N. The next :meth:`get_token` refreshes (or picks up a newer token another
        process stored). Within ``invalidate_interval`` seconds of a refresh that an
        invalidation caused, further invalidations of ``key`` are refused, so an API that
        rejects every token cannot make the manager refresh in a loop. (A rejected token whose
        replacement another process had already stored caused no refresh: the replacement may
        still be rejected and refreshed.)

        Returns:
            Whether the token was dropped.
        """
        entry = self._hot.get(key)
        if entry is not None and entry.token.access_token != token.access_token:
            self._observer.invalidated(key, "superseded")
            return False
        if not self._rejected.reject(key, token.access_token):
            self._observer.invalidated(key, "refused")
            return False
        if entry is not None:
            self._cache.pop(key, None)
        logger.info("credential %r: access token %s invalidated", key, mask(token.access_token))
        self._observer.invalidated(key, "dropped")
        return True

    async def token_rejected(self, key: str, token: Token) -> Token | None:
        """An API rejected ``token`` (HTTP 401): return the token to retry with, or ``None``.

        This is the call to build your own retry on; the aiohttp middleware and the httpx and
        requests adapters use it. It drops ``token`` if it is still ``key``'s current token (as
        :meth:`invalidate` does) and gets the next one, so any number of requests rejected
        together cause one refresh. A token obtained meanwhile by another request comes back
        at once. ``None`` means a retry would not help: the rejection came within
        ``invalidate_interval`` of a refresh already caused by one (the API refuses this
        credential for another reason), or the token endpoint answered with the same token.

        Example::

            response = await call_api(token)
            if response.status == 401:
                retry_with = await tm.token_rejected("keliweb", token)
                if retry_with is not None:
                    response = await call_api(retry_with)

        Returns:
            The token to retry with, or ``None`` when retrying would not help.

        Raises:
            TokenError: as :meth:`get_token`, when no token could be had.
        """
        await self.invalidate(key, token)
        current = await self.get_token(key)
        if current.access_token == token.access_token:
            return None
        return current

    def _peek_fresh(self, key: str) -> Token | None:
        """The fresh cached token of ``key``, or ``None``: the hot path without an await.

        Safe to call from any thread (one dict read and one clock read); used by the sync
        facade to serve fresh tokens without a round trip through the loop thread.
        """
        hit = self._fresh.get(key)
        if hit is not None:
            if self._monotonic() < hit[0]:
                return hit[1]
            self._observer.unfresh += 1
        return None

    async def refresh(self, key: str) -> Token:
        """Refresh ``key`` now, whatever the state of its current token, and return the result.

        Joins a refresh already in flight for ``key`` rather than starting a second one.
        """
        self._check_open()
        flight = self._inflight.get(key) or self._start(key, force=True, background=False)
        return await flight.join()

    async def remove(self, key: str) -> bool:
        """Forget ``key`` everywhere: store, cache and registration (e.g. off-boarding a tenant).

        Returns:
            Whether the store held a credential for ``key``.
        """
        self._check_open()
        self._providers.unregister(key)
        self._forget(key)  # fences a refresh in flight: it caches and creates nothing
        async with self._store.lock(key, timeout=self._lock_timeout):
            existed = await self._store.delete(key)
        self._forget(key)  # anything cached while waiting for the lock
        return existed

    async def refresh_due(self) -> dict[str, TokenError | None]:
        """Renew every credential of the store whose refresh token would die of idleness soon.

        Due: a refresh token with a known death (the server's word, else its provider's idle
        limit: Keliweb's 10 days) and less than a quarter of its life left (at most 2 days),
        or a known limit and an unknown age. Each is refreshed under its store lock after a
        re-read, so among all processes sharing the store only the first renews it.
        ``keep_alive=True`` runs this every ``keep_alive_interval``; ``asynctoken refresh
        --due`` runs it once (from cron).

        Returns:
            Every due key: ``None`` when renewed (here or elsewhere), else the error
            (:class:`CredentialNotFoundError` when no provider is known for it).

        Raises:
            StoreError: the store cannot list its keys.
        """
        self._check_open()
        return await renew_due(self._store, self._wall, self._renew)

    async def _renew(self, key: str) -> None:
        await self._providers.resolve(key)  # no provider, no renewal (CredentialNotFoundError)
        due = self._inflight.get(key) or self._start(
            key, force=False, background=True, renew_if=lambda t: is_due(t, self._wall())
        )
        await due.join()

    async def status(self, key: str) -> CredentialStatus:
        """What ``key`` is doing: its tokens, its last refresh, failures, cooldown (one store
        read). Only the cooldown and ``refreshing`` are this process's own.

        Raises:
            CredentialNotFoundError: the store holds nothing for ``key`` and no provider is
                registered for it.
            StoreError: the store failed.
        """
        stored = await self._store.get(key)
        if stored is None and self._providers.known(key) is None:
            raise CredentialNotFoundError("no credential stored for this key", key=key)
        return self._describe(key, stored)

    async def statuses(self) -> AsyncIterator[CredentialStatus]:
        """The status of every credential in the store (see :meth:`status`).

        Records are read in batches of 100, fetched concurrently; a record that cannot be read
        has :attr:`~CredentialStatus.damaged` set instead of ending the iteration.

        Raises:
            StoreError: the store cannot list its keys.
        """
        async for key, record in read_records(self._store):
            if isinstance(record, StoreError):
                yield self._describe(key, None, damaged=record.message)
            else:
                yield self._describe(key, record)

    def _describe(
        self, key: str, stored: Token | None, damaged: str | None = None
    ) -> CredentialStatus:
        now, inflight = self._wall(), key in self._inflight
        until = self._failures.until(key, now)
        return describe(key, stored, now, self._providers.known(key), until, inflight, damaged)

    def middleware(self, key: str, **options: Any) -> TokenMiddleware:
        """An aiohttp client middleware that authorizes requests with ``key``'s token.

        See :class:`~asynctoken.TokenMiddleware` for the options.
        """
        from ._middleware import TokenMiddleware

        return TokenMiddleware(self, key, **options)

    def httpx_auth(self, key: str, **options: Any) -> TokenAuth:
        """An ``httpx.Auth`` for ``httpx.AsyncClient``: requests get ``key``'s token.

        Needs the ``httpx`` extra. See :class:`asynctoken.httpx.TokenAuth` for the options.
        """
        from .httpx import TokenAuth

        return TokenAuth(self, key, **options)

    @property
    def store(self) -> TokenStore:
        """The store this manager reads and writes."""
        return self._store

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    async def aclose(self) -> None:
        """Let in-flight refreshes finish (up to ``close_timeout``), then release everything.

        Refreshes still running after the timeout are cancelled and awaited, so no task is left
        pending; a rotated refresh token the store refused earlier gets a last chance to be
        written. Idempotent, and safe to cancel: a later call finishes the same close.
        """
        if self._forked_from is not None:  # the parent's session and store: not ours to close
            self._closed = True
            return
        self._closed = True
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(), name="asynctoken-close"
            )
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._keep_alive is not None:
            await self._keep_alive.aclose()
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                logger.warning("closing: cancelled %d unfinished refresh(es)", len(pending))
                await asyncio.wait(pending)
        self._cache.clear()
        try:
            await self._saver.flush(lock_timeout=min(self._lock_timeout, 5.0))
        finally:
            try:
                await self._sessions.aclose()
            finally:
                try:
                    await self._store.aclose()
                finally:
                    await self._observer.aclose(self._close_timeout)

    close = aclose

    async def __aenter__(self) -> TokenManager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"TokenManager(store={self._store!r}, registered={len(self._providers)}, "
            f"cached={len(self._hot)}, refreshing={len(self._inflight)}, closed={self._closed})"
        )

    # ------------------------------------------------------------------ slow path

    async def _get_slow(self, key: str) -> Token:
        self._check_open()
        entry = self._hot.get(key)
        if key in self._fresh:  # the hot path read its clock for nothing
            self._observer.unfresh += 1
        now = self._clock.monotonic()
        if entry is not None and now < entry.stale_at:
            self._observer.fresh += 1
            return entry.token  # turned fresh between the hot path's clock read and this one
        if entry is not None and now < entry.expired_at:
            # Stale: serve it, refresh in the background once.
            # (A failure in its backoff holds the next attempt; expired ones leave on their own.)
            self._observer.stale += 1
            if key not in self._inflight and key not in self._failures:
                self._start(key, force=False, background=True)
            return entry.token
        self._observer.misses += 1
        flight = self._inflight.get(key)
        if flight is None:
            error = await self._failures.blocking(key)
            if error is not None:
                raise error  # fail fast without hammering the server
            flight = self._inflight.get(key) or self._start(key, force=False, background=False)
        return await flight.join()

    def _start(
        self,
        key: str,
        *,
        force: bool,
        background: bool,
        renew_if: Callable[[Token | None], bool] | None = None,
    ) -> Flight:
        flight = Flight()
        # An invalidated token is replaced at once, whatever the minimum refresh interval.
        rejected = key in self._rejected
        trigger: Trigger = (
            "forced" if force else "rejected" if rejected else "stale" if background else "miss"
        )
        watch = self._observer.refresh(key, "keep_alive" if renew_if else trigger, background)
        coro = self._run(
            key,
            flight,
            watch,
            force=force,
            background=background,
            hurry=force or rejected,
            renew_if=renew_if,
        )
        name = f"asynctoken-refresh:{key}"
        loop = asyncio.get_running_loop()
        # The refresh is every caller's, not the first one's: it runs in a context of its own
        # (the first caller's would be kept alive, span and all, by the session and timers the
        # refresh creates, and would make the refresh look like a part of that one request).
        context = contextvars.Context()
        if sys.version_info >= (3, 12):
            # Start the refresh right away, in this caller's step, instead of behind every
            # caller already queued: in a stampede the token request goes out first.
            task = asyncio.Task(coro, loop=loop, name=name, eager_start=True, context=context)
        else:
            task = context.run(loop.create_task, coro, name=name)
        flight.task = task
        if not task.done():  # an eager start may finish at once (a store hit)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if not flight.settled:
            self._inflight[key] = flight
        return flight

    async def _run(
        self,
        key: str,
        flight: Flight,
        watch: RefreshWatch,
        *,
        force: bool,
        background: bool,
        hurry: bool,
        renew_if: Callable[[Token | None], bool] | None,
    ) -> None:
        """The refresh task: refresh, then settle every caller in this same step."""
        name = None
        with watch:
            try:
                provider = await self._providers.resolve(key)
                name = provider.name
                outlet = CacheOutlet(self, key, flight)
                token = await self._refresher.run(
                    key,
                    provider,
                    outlet,
                    force=force,
                    background=background,
                    hurry=hurry,
                    renew_if=renew_if,
                )
            except Exception as exc:
                if isinstance(exc, TokenError) and exc.key is None:
                    exc.key = key
                self._land(key, flight)
                watch.failed(exc, name)
                if not flight.fenced:
                    self._failures.record(key, exc, background, flight.refresh_token)
                flight.fail(exc)
                return  # every caller gets it through its own future; nobody awaits the task
            except BaseException as exc:  # cancelled by aclose(), or the process is going down
                self._land(key, flight)
                if isinstance(exc, asyncio.CancelledError) and self._closed:
                    # The callers were not cancelled themselves: tell them what happened.
                    closed = TokenError("the TokenManager was closed during the refresh", key=key)
                    watch.failed(closed, name)
                    flight.fail(closed)
                else:
                    flight.fail(exc)
                raise
            self._land(key, flight)
            watch.succeeded(token, provider.name, requested=outlet.requested)
            if not flight.fenced:
                self._failures.forget(key, "refreshed")
            flight.succeed(token)

    def _land(self, key: str, flight: Flight) -> None:
        if self._inflight.get(key) is flight:
            del self._inflight[key]

    # ------------------------------------------------------------------ helpers

    def _drop(self, key: str, entry: Entry) -> None:
        """Timer callback: ``entry`` expired unused; free its place in the cache."""
        entry.timer = None
        if self._hot.get(key) is entry:
            self._cache.pop(key, None)

    def _forget(self, key: str) -> None:
        flight = self._inflight.pop(key, None)
        if flight is not None:
            flight.fenced = True  # its callers still get its result; the cache does not
        self._cache.pop(key, None)
        self._failures.forget(key)
        self._rejected.forget(key)
        self._saver.forget(key)

    def _check_open(self) -> None:
        if self._closed:
            raise TokenError("the TokenManager is closed")
        if self._forked_from is not None:
            raise ConfigurationError(
                f"this TokenManager was used in process {self._forked_from}, which then forked "
                f"process {os.getpid()}: its connections, locks and tasks belong to the parent. "
                "Create the manager in each worker process, after the fork (aiohttp: in a "
                "cleanup_ctx; FastAPI/Starlette: in the lifespan; never used at import time "
                "with gunicorn --preload)"
            )
        self._used = True
        if self._keep_alive is not None:
            self._keep_alive.ensure_running()

    def _after_fork_in_child(self) -> None:
        """In a forked child (see :mod:`asynctoken._fork`): refuse a manager the parent used."""
        if self._used and not self._closed:
            self._forked_from = os.getppid()
            self._fresh.clear()  # so that even a cached token goes the slow way, and is refused
