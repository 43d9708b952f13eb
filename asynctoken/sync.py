"""Tokens for sync code (Celery tasks, Django views, scripts): :class:`SyncTokenManager`.

It is the async :class:`~asynctoken.TokenManager` running on an event loop in a thread of its
own (see :mod:`asynctoken._sync_runtime`), not a second implementation of its rules: single
flight, rotation, stores, cooldowns and errors are the async manager's. Sync processes, threads
and async processes sharing one store share one credential safely.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from asyncio import _get_running_loop
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, NoReturn

import anyio
import anyio.to_thread

from ._clock import Clock
from ._errors import TokenError
from ._manager import ProviderFactory, TokenManager
from ._policy import Margins, RetryPolicy
from ._status import CredentialStatus
from ._sync_calls import close_iterator, events_off_the_loop, next_batch, off_the_loop, register
from ._sync_runtime import Runtime, register_facade
from ._token import Token
from .events import EventCallback
from .providers._base import Provider
from .stores._base import TokenStore

__all__ = ["SyncTokenManager"]

_ASYNC_NAMES = {"close": "aclose"}
# Beyond close_timeout, what closing may take: a last save under the store lock (bounded at 5 s
# by the manager), closing the store and the HTTP session.
_CLOSE_SLACK = 30.0


def _nothing(_key: str) -> None:
    return None


def _refuse_in_loop(method: str) -> NoReturn:
    name = _ASYNC_NAMES.get(method, method)
    raise RuntimeError(
        f"SyncTokenManager.{method}() blocks its thread and was called from a running event "
        f"loop, which it would stall (or deadlock, in the manager's own loop); in async code "
        f"use asynctoken.TokenManager: `await tm.{name}(...)`"
    )


class SyncTokenManager:
    """A :class:`~asynctoken.TokenManager` for threads: the same options, methods and errors,
    with plain (blocking) methods.

    Example::

        import os

        import requests
        from asynctoken import FileStore, KeliwebProvider
        from asynctoken.sync import SyncTokenManager

        with SyncTokenManager(store=FileStore("tokens.json")) as tm:
            tm.add("keliweb", KeliwebProvider(client_id=..., client_secret=...),
                   refresh_token=os.environ["KELIWEB_REFRESH_TOKEN"])
            token = tm.get_token("keliweb")
            requests.get(url, headers={"Authorization": token.authorization})

    The async manager runs on an event loop in a daemon thread of its own, started on first
    use. Any number of threads may call :meth:`get_token`: a fresh cached token is read
    directly, without a round trip through that thread; otherwise the caller waits for the one
    refresh shared by every caller, thread or coroutine, of the credential.

    **Processes.** Give every process the same :class:`~asynctoken.FileStore`,
    :class:`~asynctoken.SQLiteStore` or :class:`~asynctoken.RedisStore` and they make one token
    request per expiry between them, whatever mix of sync and async code they run. A manager created
    before a fork (Celery's prefork pool, gunicorn's ``--preload``, ``multiprocessing``) starts a
    loop thread of its own in the child on first use, with the store reopened there: the child
    shares no thread, connection or lock with its parent. A :class:`~asynctoken.MemoryStore` (or a
    store of your own) cannot be reopened: the child's calls raise :class:`~asynctoken.TokenError`
    saying so.

    **Shutdown.** :meth:`close` (or leaving the ``with`` block) is :meth:`TokenManager.aclose`:
    in-flight refreshes finish (up to ``close_timeout``), a rotated refresh token the store
    refused earlier is written. A process that exits without closing gets the same at
    interpreter exit (``atexit``).

    Calling any blocking method from a running event loop raises :class:`RuntimeError`: in async
    code use :class:`~asynctoken.TokenManager`.

    Args:
        store: see :class:`~asynctoken.TokenManager`.
        provider_factory: called with a key that was not registered with :meth:`add`, returns
            its provider or ``None``. Called in a worker thread, so it may block (a database
            lookup); results are cached.
        margins: see :class:`~asynctoken.TokenManager`.
        retry: see :class:`~asynctoken.TokenManager`.
        cache_size: see :class:`~asynctoken.TokenManager`.
        lock_timeout: see :class:`~asynctoken.TokenManager`.
        error_cooldown: see :class:`~asynctoken.TokenManager`.
        background_retry_interval: see :class:`~asynctoken.TokenManager`.
        invalidate_interval: see :class:`~asynctoken.TokenManager`.
        close_timeout: see :class:`~asynctoken.TokenManager`.
        save_patience: see :class:`~asynctoken.TokenManager`.
        min_refresh_interval: see :class:`~asynctoken.TokenManager`.
        clock: see :class:`~asynctoken.TokenManager`.
        on_event: called with every :mod:`asynctoken.events` event, in order. A plain function
            is called in a worker thread, so it may block (write to a database, Django's ORM);
            a coroutine function runs on the manager's loop. Either way a slow subscriber never
            delays a refresh.
        telemetry: see :class:`~asynctoken.TokenManager`.
        telemetry_keys: see :class:`~asynctoken.TokenManager`.
        lock_wait_threshold: see :class:`~asynctoken.TokenManager`.
        keep_alive: see :class:`~asynctoken.TokenManager`: the scans run on the manager's loop
            thread.
        keep_alive_interval: see :class:`~asynctoken.TokenManager`.

    There is no ``session`` option: an :class:`aiohttp.ClientSession` belongs to one event loop,
    and the manager's loop is its own.

    Raises:
        ConfigurationError: an argument is out of range (as :class:`~asynctoken.TokenManager`).
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_finalizer",
        "_lock",
        "_manager",
        "_options",
        "_peek",
        "_pid",
        "_providers",
        "_runtime",
    )

    def __init__(
        self,
        store: TokenStore | None = None,
        *,
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
        self._options: dict[str, Any] = {
            "provider_factory": off_the_loop(provider_factory) if provider_factory else None,
            "margins": margins,
            "retry": retry,
            "cache_size": cache_size,
            "lock_timeout": lock_timeout,
            "error_cooldown": error_cooldown,
            "background_retry_interval": background_retry_interval,
            "invalidate_interval": invalidate_interval,
            "close_timeout": close_timeout,
            "save_patience": save_patience,
            "min_refresh_interval": min_refresh_interval,
            "clock": clock,
            "on_event": events_off_the_loop(on_event) if on_event else None,
            "telemetry": telemetry,
            "telemetry_keys": telemetry_keys,
            "lock_wait_threshold": lock_wait_threshold,
            "keep_alive": keep_alive,
            "keep_alive_interval": keep_alive_interval,
        }
        # Built here, so that bad options fail here, with the async manager's errors.
        self._manager = TokenManager(store, **self._options)
        self._pid = os.getpid()  # the process self._manager belongs to
        self._runtime: Runtime | None = None
        self._finalizer: weakref.finalize[..., Any] | None = None
        self._providers: dict[str, Provider] = {}  # registered again in a forked child
        self._peek: Callable[[str], Token | None] = _nothing
        self._lock = threading.Lock()
        self._closed = False
        register_facade(self)

    # ------------------------------------------------------------------ public API

    def get_token(self, key: str) -> Token:
        """Return a valid access token for ``key`` (see :meth:`TokenManager.get_token`).

        A fresh cached token is returned without involving the loop thread.

        Raises:
            TokenError: the errors of :meth:`TokenManager.get_token`.
            RuntimeError: called from a running event loop.
        """
        if _get_running_loop() is not None:
            _refuse_in_loop("get_token")
        token = self._peek(key)
        if token is not None:
            return token
        return self._running().call(TokenManager.get_token, key)

    def add(
        self,
        key: str,
        provider: Provider,
        *,
        refresh_token: str | None = None,
        overwrite: bool = False,
    ) -> bool:
        """Register ``provider`` for ``key`` and optionally seed a refresh token.

        See :meth:`TokenManager.add`: the seed is stored only if the store holds nothing for
        ``key``, unless ``overwrite=True``.

        Returns:
            Whether the seed was written to the store.
        """
        if _get_running_loop() is not None:
            _refuse_in_loop("add")
        method = functools.partial(
            TokenManager.add, refresh_token=refresh_token, overwrite=overwrite
        )
        stored = self._running().call(method, key, provider)
        self._providers[key] = provider
        return stored

    def invalidate(self, key: str, token: Token) -> bool:
        """Drop ``token`` if it is still the current token of ``key`` (an API rejected it).

        See :meth:`TokenManager.invalidate`.

        Returns:
            Whether the token was dropped.
        """
        if _get_running_loop() is not None:
            _refuse_in_loop("invalidate")
        return self._running().call(TokenManager.invalidate, key, token)

    def token_rejected(self, key: str, token: Token) -> Token | None:
        """An API rejected ``token`` (HTTP 401): the token to retry with, or ``None``.

        See :meth:`TokenManager.token_rejected`: ``token`` is dropped if it is still the
        current one and the next token is returned (any number of threads rejecting the same
        token cause one refresh); ``None`` means a retry would not help.

        Raises:
            TokenError: the errors of :meth:`get_token`, when no token can be had.
            RuntimeError: called from a running event loop.
        """
        if _get_running_loop() is not None:
            _refuse_in_loop("token_rejected")
        return self._running().call(TokenManager.token_rejected, key, token)

    def refresh(self, key: str) -> Token:
        """Refresh ``key`` now and return the result (see :meth:`TokenManager.refresh`)."""
        if _get_running_loop() is not None:
            _refuse_in_loop("refresh")
        return self._running().call(TokenManager.refresh, key)

    def remove(self, key: str) -> bool:
        """Forget ``key`` everywhere (see :meth:`TokenManager.remove`).

        Returns:
            Whether the store held a credential for ``key``.
        """
        if _get_running_loop() is not None:
            _refuse_in_loop("remove")
        self._providers.pop(key, None)
        return self._running().call(TokenManager.remove, key)

    def refresh_due(self) -> dict[str, TokenError | None]:
        """Renew every credential whose refresh token would die of idleness soon.

        See :meth:`TokenManager.refresh_due`.

        Raises:
            StoreError: the store cannot list its keys.
            RuntimeError: called from a running event loop.
        """
        if _get_running_loop() is not None:
            _refuse_in_loop("refresh_due")
        return self._running().call(TokenManager.refresh_due)

    def status(self, key: str) -> CredentialStatus:
        """What ``key`` is doing: its tokens, its last refresh, failures, cooldown.

        See :meth:`TokenManager.status`.

        Raises:
            CredentialNotFoundError: the store holds nothing for ``key`` and no provider is
                registered for it.
            StoreError: the store failed.
            RuntimeError: called from a running event loop.
        """
        if _get_running_loop() is not None:
            _refuse_in_loop("status")
        return self._running().call(TokenManager.status, key)

    def statuses(self) -> Iterator[CredentialStatus]:
        """The status of every credential in the store (see :meth:`TokenManager.statuses`).

        Fetched from the loop a batch at a time, so memory stays bounded on a large store.

        Raises:
            StoreError: the store cannot list its keys.
            RuntimeError: called from a running event loop.
        """
        if _get_running_loop() is not None:
            _refuse_in_loop("statuses")
        return self._statuses(self._running())

    def _statuses(self, runtime: Runtime) -> Iterator[CredentialStatus]:
        statuses = TokenManager.statuses(runtime.manager)
        try:
            while batch := runtime.call(next_batch, statuses):
                yield from batch
        finally:
            # Left early: close the generator on its loop (nothing to do once it ended).
            with contextlib.suppress(TokenError):
                runtime.call(close_iterator, statuses)

    @property
    def store(self) -> TokenStore:
        """The store this manager reads and writes in this process."""
        return self._manager.store

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close like :meth:`TokenManager.aclose`, then stop the loop thread.

        In-flight refreshes finish (up to ``close_timeout``) and a rotated refresh token the
        store refused earlier gets a last chance to be written. Idempotent; safe from several
        threads (each returns once the close is done).

        Raises:
            RuntimeError: called from a running event loop.
        """
        if _get_running_loop() is not None:
            _refuse_in_loop("close")
        with self._lock:
            self._closed = True
            self._peek = _nothing
            runtime = self._runtime
            if runtime is None or runtime.pid != os.getpid():
                # Never used in this process: release the store if it is this process's own.
                if self._pid == os.getpid() and not self._manager.closed:
                    anyio.run(self._manager.aclose)
                return
        runtime.close()

    def __enter__(self) -> SyncTokenManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> NoReturn:
        raise TypeError(
            "a SyncTokenManager cannot be pickled (it owns a thread): create one in each "
            "process; they share credentials through their store"
        )

    def __repr__(self) -> str:
        runtime = self._runtime
        if self._closed:
            state = "closed"
        elif runtime is not None and runtime.running:
            state = "running"
        else:
            state = "not started"
        return f"SyncTokenManager(store={self.store!r}, registered={len(self._providers)}, {state})"

    # ------------------------------------------------------------------ the loop thread

    def _running(self) -> Runtime:
        """The runtime of this process, started on first use (again in a forked child)."""
        runtime = self._runtime
        if runtime is not None and runtime.running:
            return runtime
        with self._lock:
            if self._closed:
                raise TokenError("the SyncTokenManager is closed")
            runtime = self._runtime
            if runtime is None or runtime.pid != os.getpid():
                runtime = self._start()
            elif not runtime.running:
                raise TokenError("the SyncTokenManager is closed")
        return runtime

    def _start(self) -> Runtime:
        pid = os.getpid()
        manager = self._manager
        forked = self._pid != pid
        if forked:
            manager = TokenManager(self._reopened_store(), **self._options)
        runtime = Runtime(
            manager,
            name=f"asynctoken-sync-{id(self):x}",
            close_within=self._options["close_timeout"] + _CLOSE_SLACK,
        )
        if forked and self._providers:
            try:
                runtime.call(register, dict(self._providers))
            except BaseException:
                runtime.close()
                raise
        self._manager, self._pid, self._runtime = manager, pid, runtime
        self._peek = manager._peek_fresh
        # Garbage collected without close(): close in the background (and at exit anyway).
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, runtime.close_soon)
        self._finalizer.atexit = False
        return runtime

    def _reopened_store(self) -> TokenStore:
        store = self._manager.store
        reopen: Callable[[], TokenStore] | None = getattr(store, "_reopen", None)
        if reopen is None:
            raise TokenError(
                f"this SyncTokenManager was created in process {self._pid} and is used in "
                f"process {os.getpid()}, forked from it, but its {type(store).__name__} cannot "
                "be shared with another process. Use FileStore, SQLiteStore or RedisStore (every "
                "process then shares the credential), or create the SyncTokenManager in each "
                "process after the fork (Celery: in a worker_process_init signal handler)"
            )
        return reopen()

    def _forked(self) -> None:
        """In a forked child (see :mod:`asynctoken._sync_runtime`): forget the parent's loop."""
        self._lock = threading.Lock()
        self._peek = _nothing
