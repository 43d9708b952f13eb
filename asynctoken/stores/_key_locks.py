"""Per-credential refresh locks held in OS file locks, for the stores of one host.

:class:`KeyLocks` is the :meth:`TokenStore.lock` of :class:`~asynctoken.stores.FileStore` and
:class:`~asynctoken.stores.SQLiteStore`: tasks of this process queue on an :class:`asyncio.Lock`
per key, and the one at the head polls an OS file lock per key (``<store>.locks/<hash>.lock``,
via :mod:`filelock`) that excludes other processes. The kernel drops an OS lock when its process
dies, even by ``kill -9``, so a crashed holder never blocks anyone, and no clock or lease is
involved. Lock files are left in place after release: deleting one that another process waits
on would break mutual exclusion.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from filelock import BaseFileLock, FileLock, Timeout

from .._errors import StoreError, StoreLockTimeoutError
from ._file_access import NEW_DIRECTORY_MODE, NEW_FILE_MODE, Access, access_of, adopt

__all__ = ["KeyLocks", "make_directories", "shared_access"]

# Attempts abandoned by a cancelled waiter, kept alive until their thread returns (see _attempt).
_ABANDONED: set[asyncio.Future[BaseFileLock | None]] = set()


class KeyLocks:
    """The per-key refresh locks of the store whose data is at ``path``.

    Args:
        path: the store's file; the lock files go to ``<path>.locks/`` and follow its owner and
            group (see :mod:`._file_access`).
        poll_interval: how often a waiter retries the OS lock.
    """

    __slots__ = ("_local", "_locks_dir", "_path", "_poll_interval")

    def __init__(self, path: str, poll_interval: float) -> None:
        self._path = path
        self._locks_dir = path + ".locks"
        self._poll_interval = poll_interval
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}

    @property
    def poll_interval(self) -> float:
        """How often a waiter retries the OS lock."""
        return self._poll_interval

    @asynccontextmanager
    async def hold(self, key: str, timeout: float) -> AsyncIterator[None]:
        """Hold the refresh lock of ``key``; not reentrant.

        Raises:
            StoreLockTimeoutError: not acquired within ``timeout`` seconds (names path and key).
        """
        deadline = asyncio.get_running_loop().time() + timeout
        local, users = self._local.get(key) or (asyncio.Lock(), 0)
        self._local[key] = (local, users + 1)
        try:
            await self._acquire_local(local, key, timeout, deadline)
            try:
                file_lock = await self._acquire_file(key, timeout, deadline)
                try:
                    yield
                finally:
                    # flock(LOCK_UN) and close() do not block; releasing here, without an await,
                    # means a cancellation cannot skip it.
                    file_lock.release()
            finally:
                local.release()
        finally:
            local, users = self._local[key]
            if users == 1:
                del self._local[key]
            else:
                self._local[key] = (local, users - 1)

    async def _acquire_local(
        self, local: asyncio.Lock, key: str, timeout: float, deadline: float
    ) -> None:
        # Always under the deadline: a lock that reports itself free may still be promised to
        # a waiter that was woken but has not run yet, and then acquire() queues behind it.
        acquired = False
        with anyio.move_on_after(deadline - asyncio.get_running_loop().time()):
            await local.acquire()
            acquired = True
        if not acquired:
            raise self._timeout_error(key, timeout, "another task of this process")

    async def _acquire_file(self, key: str, timeout: float, deadline: float) -> BaseFileLock:
        name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        lock_path = os.path.join(self._locks_dir, f"{name}.lock")
        loop = asyncio.get_running_loop()
        while (file_lock := await self._attempt(lock_path)) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                holder = f"another process (lock file {lock_path})"
                raise self._timeout_error(key, timeout, holder)
            await anyio.sleep(min(self._poll_interval, remaining))
        return file_lock

    async def _attempt(self, lock_path: str) -> BaseFileLock | None:
        """One non-blocking try at the lock file ``lock_path``, made in a worker thread.

        A cancelled waiter must not leak the lock: the thread cannot be interrupted, so if it wins
        after the waiter is gone, the lock is released as soon as the thread returns.
        """
        attempt = asyncio.ensure_future(anyio.to_thread.run_sync(self._try_lock, lock_path))
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            _ABANDONED.add(attempt)
            attempt.add_done_callback(_release_if_won)
            raise

    def _try_lock(self, lock_path: str) -> BaseFileLock | None:
        access = shared_access(self._path)
        if access is None:
            make_directories(self._locks_dir, NEW_DIRECTORY_MODE, self._path)
            mode = NEW_FILE_MODE
        else:
            make_directories(self._locks_dir, access.lock_directory_mode, self._path)
            adopt(self._locks_dir, access, access.lock_directory_mode)
            mode = access.lock_file_mode
        file_lock = FileLock(lock_path, mode=mode, thread_local=False)
        try:
            file_lock.acquire(timeout=0)
        except Timeout:
            return None
        except OSError as exc:
            message = f"cannot lock {lock_path}: {exc.strerror or exc}"
            raise StoreError(message, location=self._path) from exc
        if access is not None:
            adopt(lock_path, access, mode)
        return file_lock

    def _timeout_error(self, key: str, timeout: float, holder: str) -> StoreLockTimeoutError:
        return StoreLockTimeoutError(
            f"refresh lock of {self._path} not acquired within {timeout:g} s: held by {holder}",
            location=self._path,
            key=key,
        )


def make_directories(directory: str, mode: int, location: str) -> None:
    """Create ``directory`` and its missing parents with ``mode``.

    Raises:
        StoreError: a directory cannot be created (``location`` names the store).
    """
    missing: list[str] = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            pass
        except OSError as exc:
            message = f"cannot create directory {path}: {exc.strerror}"
            raise StoreError(message, location=location) from exc


def shared_access(path: str) -> Access | None:
    """The data file's access, when lock files must follow it (not this process's own 0600)."""
    access = access_of(path)
    if access is None or access.is_private_to_this_process:
        return None
    return access


def _release_if_won(attempt: asyncio.Future[BaseFileLock | None]) -> None:
    _ABANDONED.discard(attempt)
    if not attempt.cancelled() and attempt.exception() is None:
        file_lock = attempt.result()
        if file_lock is not None:
            file_lock.release()
