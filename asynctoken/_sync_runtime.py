"""The engine of the sync facade: a :class:`TokenManager` on an event loop in a thread of its own.

One :class:`Runtime` per :class:`~asynctoken.sync.SyncTokenManager` and process:

* **The loop thread** is a daemon thread running an asyncio loop (``anyio.run``) that serves an
  anyio :class:`~anyio.from_thread.BlockingPortal`: callers in other threads submit the
  manager's coroutines through it and block on the result. A daemon, so that a program that
  never closes its manager still exits; the ``atexit`` hook below closes it first.
* **Interpreter exit.** ``atexit`` runs before daemon threads are stopped: every runtime of this
  process that is still open is closed there, which is :meth:`TokenManager.aclose` (in-flight
  refreshes finish, a rotated refresh token the store refused is written).
* **Fork.** A forked child inherits a copy of every object but none of the threads: the parent's
  loop, its portal, its store connections and any lock a parent thread held at that moment are
  unusable there (using the portal would write to the parent's wake-up pipe and wait forever).
  ``os.register_at_fork`` tells every live facade of the child to forget its runtime; the
  parent's runtime objects are kept referenced, never touched, so that no finalizer of theirs
  runs in the child. The facade then starts a new runtime on first use, with a reopened store.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._errors import TokenError
from ._manager import TokenManager

__all__ = ["Runtime", "register_facade"]

logger = logging.getLogger("asynctoken")

_T = TypeVar("_T")


class _Facade(Protocol):
    def _forked(self) -> None: ...


# Open runtimes of this process, closed at exit (strong references: a facade that was garbage
# collected without close() still has its rotated refresh tokens written).
_OPEN: set[Runtime] = set()
# A parent's runtimes in a forked child: kept alive, never used (see the module docstring).
_ABANDONED: list[Runtime] = []
_FACADES: weakref.WeakSet[Any] = weakref.WeakSet()
_REGISTRY_LOCK = threading.Lock()


def register_facade(facade: _Facade) -> None:
    """Have ``facade._forked()`` called in every child forked from now on."""
    with _REGISTRY_LOCK:
        _FACADES.add(facade)


class Runtime:
    """A :class:`TokenManager` served by an event loop in a daemon thread.

    Args:
        manager: the async manager; this runtime closes it.
        name: the loop thread's name.
        close_within: seconds :meth:`close` waits for the loop thread to finish closing (the
            manager's own close is bounded by its ``close_timeout`` and lock timeouts; this
            only guards against a loop blocked by foreign code, so that exit never hangs).
    """

    __slots__ = (
        "__weakref__",
        "_close_lock",
        "_closed",
        "_finished",
        "_loop",
        "_portal",
        "_stopping",
        "_thread",
        "close_within",
        "manager",
        "pid",
    )

    def __init__(self, manager: TokenManager, *, name: str, close_within: float) -> None:
        self.manager = manager
        self.close_within = close_within
        self.pid = os.getpid()
        self._close_lock = threading.Lock()
        self._closed = False
        self._stopping = False
        self._finished = threading.Event()
        ready: concurrent.futures.Future[tuple[BlockingPortal, asyncio.AbstractEventLoop]]
        ready = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), name=name, daemon=True)
        self._thread.start()
        self._portal, self._loop = ready.result()
        with _REGISTRY_LOCK:
            _OPEN.add(self)

    def _main(
        self, ready: concurrent.futures.Future[tuple[BlockingPortal, asyncio.AbstractEventLoop]]
    ) -> None:
        async def serve() -> None:
            async with BlockingPortal() as portal:
                ready.set_result((portal, asyncio.get_running_loop()))
                await portal.sleep_until_stopped()

        try:
            anyio.run(serve, backend="asyncio")
        except BaseException as exc:  # the loop could not start, or crashed
            if not ready.done():
                ready.set_exception(exc)
            else:
                logger.exception("the sync manager's event loop thread crashed")
        finally:
            self._finished.set()

    @property
    def running(self) -> bool:
        """Whether calls are accepted (not closing, and in the process that started it)."""
        return not self._stopping and self.pid == os.getpid()

    def call(self, method: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
        """Run ``method(manager, *args)`` on the loop and wait for its result (or exception).

        Raises:
            TokenError: the runtime is closed or closing.
        """
        try:
            future: concurrent.futures.Future[_T]
            future = self._portal.start_task_soon(method, self.manager, *args)
        except RuntimeError:  # the portal stopped meanwhile
            raise TokenError("the SyncTokenManager is closed") from None
        return future.result()

    def close(self) -> None:
        """Close the manager (as :meth:`TokenManager.aclose`), then stop the loop thread.

        Idempotent; a concurrent or later call waits until the first one is done.
        """
        if self.pid != os.getpid():
            return  # a parent's runtime, in a forked child: never touched
        with self._close_lock:
            if self._closed:
                return
            try:
                self.close_soon()
                if not self._finished.wait(self.close_within):
                    logger.error(
                        "the SyncTokenManager's event loop thread did not finish closing within "
                        "%g s: something blocks that loop (a provider factory doing blocking "
                        "work on it?); giving up on it",
                        self.close_within,
                    )
            finally:
                self._closed = True
                with _REGISTRY_LOCK:
                    _OPEN.discard(self)

    def close_soon(self) -> None:
        """Start closing on the loop without waiting (also what a collected facade does).

        Never blocks, even on a busy loop: the close is handed over with
        ``call_soon_threadsafe`` (the portal's own entry points wait for the loop to take them).
        """
        if self._stopping or self.pid != os.getpid():
            return
        self._stopping = True
        with contextlib.suppress(RuntimeError):  # the loop already ended
            self._loop.call_soon_threadsafe(self._spawn_close)

    def _spawn_close(self) -> None:
        task = self._loop.create_task(_close_and_stop(self.manager, self._portal))
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)


_CLOSING: set[asyncio.Task[None]] = set()


async def _close_and_stop(manager: TokenManager, portal: BlockingPortal) -> None:
    try:
        await manager.aclose()
    except Exception:
        logger.exception("closing the sync manager failed")
    finally:
        await portal.stop()


def _close_at_exit() -> None:
    """Close every runtime of this process that is still open: flush rotated refresh tokens."""
    pid = os.getpid()
    with _REGISTRY_LOCK:
        runtimes = [runtime for runtime in _OPEN if runtime.pid == pid]
    for runtime in runtimes:
        try:
            runtime.close()
        except Exception:
            logger.exception("closing a SyncTokenManager at exit failed")


def _after_fork_in_child() -> None:
    global _REGISTRY_LOCK
    # A parent thread may have held it at the fork; no thread of the parent exists here.
    _REGISTRY_LOCK = threading.Lock()
    _ABANDONED.extend(_OPEN)
    _OPEN.clear()
    for facade in list(_FACADES):
        facade._forked()


atexit.register(_close_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
