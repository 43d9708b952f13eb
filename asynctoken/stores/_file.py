"""A store that keeps every credential in one JSON file, shared by the processes of a host."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from filelock import FileLock, Timeout

from .._errors import ConfigurationError, StoreError, StoreLockTimeoutError
from .._token import Token
from ._batch import Outcome, WriteBatcher
from ._file_access import NEW_DIRECTORY_MODE, NEW_FILE_MODE, adopt
from ._file_format import (
    copy_aside,
    is_current,
    read_document,
    remove_stale_temp_files,
    write_document,
)
from ._file_layout import CorruptFileError, Layout, Stamp
from ._key_locks import KeyLocks, make_directories, shared_access
from ._records import Cipher, RecordCodec, Resealed

__all__ = ["FileStore"]

_R = TypeVar("_R")

#: A change of the records (key -> JSON text): returns its result and whether it changed them.
_Change = Callable[[dict[str, str]], tuple[Any, bool]]

_WRITE_LOCK_POLL = 0.002


class FileStore:
    """Keeps every credential in one JSON file; safe for many processes on one host.

    The file (format in :mod:`asynctoken.stores._file_format`) is replaced atomically on every
    write: a new file in the same directory is written, fsync'd and renamed over the old one, then
    the directory is fsync'd. Readers never see a half-written file, and a crash leaves the
    previous version. A new file is created ``0600``; a rewritten one keeps the owner (when this
    process may set it, i.e. as root), group and mode of the file it replaces, so that service
    accounts sharing it through a group, or an operator running the ``asynctoken`` command as
    root, never take anyone's access away. Lock files follow the token file's owner and group.

    ``path`` is resolved once, when the store is created (:func:`os.path.realpath`): if it is a
    symbolic link, writes replace the file it points to and the locks sit next to that file, so
    processes that name the file by its real path or through any link exclude each other.

    Two kinds of OS file locks (via :mod:`filelock`, released by the kernel if the holder dies,
    even by ``kill -9``) coordinate processes:

    * ``<path>.lock``, held briefly around every read-modify-write, so that concurrent writers
      never lose each other's updates;
    * ``<path>.locks/<hash of key>.lock``, the per-credential refresh lock of :meth:`lock`, held
      across the manager's token request. These files are left in place after release (deleting
      a lock file that another process waits on would break mutual exclusion).

    All file I/O runs in worker threads (:func:`anyio.to_thread.run_sync`); lock waits poll with
    ``poll_interval`` and never block the event loop. Writes of this process that overlap are
    applied together, in order and each with its own result, in one rewrite of the file (see
    :mod:`._batch`), and records are kept as their JSON text, so a write encodes only what it
    changes (see :mod:`._file_layout`). The version last read or written is reused while the
    file is unchanged. Still, every write rewrites the whole file: beyond some 10,000
    credentials, :class:`~asynctoken.stores.SQLiteStore` is the better choice.

    A file that is not a valid asynctoken file is never read as empty and never overwritten: every
    call raises :class:`~asynctoken.StoreError` naming the path and the problem, and a copy is
    saved once as ``<path>.corrupt-<UTC timestamp>``. A missing file is an empty store; it is
    created on the first write, with missing parent directories created ``0700``.

    With a ``cipher`` (:class:`asynctoken.crypto.AESGCMCipher`), every record written is sealed
    (see :mod:`asynctoken.stores._records`); plain records written before are still read, and
    sealed on their next write. A record that cannot be opened raises
    :class:`~asynctoken.SealedRecordError` naming the key and the key id.

    Args:
        path: the JSON file.
        cipher: seals records at rest; ``None`` keeps them in plain JSON.
        lock_timeout: how long a write waits for the store-wide write lock before raising
            :class:`~asynctoken.StoreLockTimeoutError`. Writers hold it for milliseconds.
        poll_interval: how often a waiter of :meth:`lock` retries the per-credential lock.

    Raises:
        ConfigurationError: ``lock_timeout`` or ``poll_interval`` is not positive.
    """

    __slots__ = (
        "_batcher",
        "_cache",
        "_codec",
        "_corrupt_copies",
        "_key_locks",
        "_lock_path",
        "_lock_timeout",
        "_parsing",
        "_path",
        "_poll_interval",
        "_swept",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cipher: Cipher | None = None,
        lock_timeout: float = 10.0,
        poll_interval: float = 0.05,
    ) -> None:
        if not lock_timeout > 0:
            raise ConfigurationError(f"lock_timeout must be positive, not {lock_timeout!r}")
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be positive, not {poll_interval!r}")
        self._path = os.path.realpath(os.fspath(path))
        self._lock_path = self._path + ".lock"
        self._codec = RecordCodec(cipher, self._path)
        self._lock_timeout = float(lock_timeout)
        self._poll_interval = float(poll_interval)
        # The version of the file last read or written, reused while it is current.
        self._cache: Layout | None = None
        self._corrupt_copies: dict[Stamp, str] = {}
        self._key_locks = KeyLocks(self._path, self._poll_interval)
        self._batcher: WriteBatcher[tuple[str, _Change]] = WriteBatcher(self._commit)
        self._parsing = threading.Lock()
        self._swept = False

    @property
    def path(self) -> str:
        """The absolute path of the JSON file, symbolic links resolved."""
        return self._path

    async def get(self, key: str) -> Token | None:
        """See :meth:`TokenStore.get`.

        Raises:
            StoreError: the file is unreadable, corrupt, from a newer version, or the record of
                ``key`` is invalid.
        """
        text = (await anyio.to_thread.run_sync(self._read_cached, key)).records.get(key)
        if text is None:
            return None
        return self._decode(key, text)

    async def put(self, key: str, token: Token) -> None:
        """See :meth:`TokenStore.put`. Overwrites a record even if it is invalid."""
        record = self._codec.dumps(key, token)

        def change(records: dict[str, str]) -> tuple[None, bool]:
            records[key] = record
            return None, True

        await self._mutate(key, change)

    async def put_if_absent(self, key: str, token: Token) -> bool:
        """See :meth:`TokenStore.put_if_absent`."""
        record = self._codec.dumps(key, token)

        def change(records: dict[str, str]) -> tuple[bool, bool]:
            if key in records:
                return False, False
            records[key] = record
            return True, True

        return await self._mutate(key, change)

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        """See :meth:`TokenStore.replace`.

        Also returns ``True`` without writing when the stored record already equals ``token``, so
        that retrying a replace whose outcome was not seen is harmless.

        Raises:
            StoreError: the stored record of ``key`` is invalid (it cannot be compared).
        """
        record = self._codec.dumps(key, token)

        def change(records: dict[str, str]) -> tuple[bool, bool]:
            if key not in records:
                return False, False
            current = self._decode(key, records[key])
            if current == token:
                return True, False
            if current.refresh_token != expected_refresh_token:
                return False, False
            records[key] = record
            return True, True

        return await self._mutate(key, change)

    async def delete(self, key: str) -> bool:
        """See :meth:`TokenStore.delete`. Deletes a record even if it is invalid."""

        def change(records: dict[str, str]) -> tuple[bool, bool]:
            if key not in records:
                return False, False
            del records[key]
            return True, True

        return await self._mutate(key, change)

    async def reseal(self, keys: Sequence[str]) -> Resealed:
        """Seal the records of ``keys`` anew with the cipher's primary key, in one write.

        Records already sealed with the primary key and keys no longer stored are left alone, so
        running it again after an interruption only does what is left; records that cannot be
        opened are left as they are and reported. Used by ``asynctoken rekey``.
        """
        wanted = list(dict.fromkeys(keys))

        def change(records: dict[str, str]) -> tuple[Resealed, bool]:
            rewritten, unchanged, errors = 0, 0, []
            for key in wanted:
                text = records.get(key)
                try:
                    if text is None or self._codec.is_current(self._parse_record(key, text)):
                        unchanged += 1
                        continue
                    records[key] = self._codec.dumps(key, self._decode(key, text))
                except StoreError as exc:
                    errors.append(exc)
                    continue
                rewritten += 1
            return Resealed(rewritten, unchanged, tuple(errors)), rewritten > 0

        if not wanted:
            return Resealed()
        return await self._mutate(wanted[0], change)

    async def keys(self) -> AsyncIterator[str]:
        """See :meth:`TokenStore.keys`. The keys of the file as it was when iteration began."""
        layout = await anyio.to_thread.run_sync(self._read_cached, None)
        for key in list(layout.records):
            yield key

    def lock(self, key: str, *, timeout: float) -> AbstractAsyncContextManager[None]:
        """See :meth:`TokenStore.lock`: OS file locks per key (see :mod:`._key_locks`).

        Raises:
            StoreLockTimeoutError: not acquired within ``timeout`` seconds (names the path and key).
        """
        return self._key_locks.hold(key, timeout)

    async def aclose(self) -> None:
        """Forget the cached file content; the store holds no open files between calls."""
        self._cache = None

    def __repr__(self) -> str:
        return f"FileStore(path={self._path!r})"

    def _reopen(self) -> FileStore:
        """The same file, with none of this instance's lock waiters, cache or event-loop state.

        For a forked child (see :mod:`asynctoken.sync`): a parent's task may have held a lock of
        this instance at the moment of the fork, and that task never runs in the child.
        """
        return FileStore(
            self._path,
            cipher=self._codec.cipher,
            lock_timeout=self._lock_timeout,
            poll_interval=self._poll_interval,
        )

    # -- reading ---------------------------------------------------------------------------------

    def _decode(self, key: str, text: str) -> Token:
        where = f"record {key!r} in {self._path}"
        return self._codec.decode(key, self._parse_record(key, text), where=where)

    def _parse_record(self, key: str, text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:  # pragma: no cover - only valid JSON is ever kept
            message = f"record {key!r} in {self._path} is not JSON"
            raise StoreError(message, location=self._path, key=key) from None

    def _read_cached(self, key: str | None) -> Layout:
        """The file's current version: the last one read or written while it is still current
        (see :func:`._file_format.is_current`), else parsed anew.

        One thread at a time parses (the others then reuse its parse), and never while this
        process writes the file: a reader that sees the new file before the writer has cached
        it waits for that instead of parsing it again.
        """
        cached = self._cache
        if cached is not None and is_current(self._path, cached):
            return cached
        with self._parsing:
            return self._read_cached_locked(key)

    def _read_cached_locked(self, key: str | None) -> Layout:
        cached = self._cache
        if cached is not None and is_current(self._path, cached):
            return cached
        layout = self._read(key)
        self._cache = layout
        return layout

    def _read(self, key: str | None) -> Layout:
        try:
            return read_document(self._path)
        except CorruptFileError as exc:
            raise self._corrupt(exc, key) from None

    def _corrupt(self, exc: CorruptFileError, key: str | None) -> StoreError:
        copy = self._corrupt_copies.get(exc.stamp)
        if copy is None:
            try:
                copy = copy_aside(self._path, exc.raw)
            except OSError as error:
                saved = f"saving a copy failed too ({error.strerror or error})"
            else:
                self._corrupt_copies[exc.stamp] = copy
                saved = f"a copy was saved as {copy}"
        else:
            saved = f"a copy was saved as {copy}"
        return StoreError(
            f"{self._path} is not a usable asynctoken token file: {exc.reason}. It was left "
            f"untouched and writes are refused until it is repaired or removed; {saved}",
            location=self._path,
            key=key,
        )

    # -- writing ---------------------------------------------------------------------------------

    async def _mutate(self, key: str, change: Callable[[dict[str, str]], tuple[_R, bool]]) -> _R:
        result: _R = await self._batcher.submit((key, change))
        return result

    def _commit(self, changes: Sequence[tuple[str, _Change]]) -> list[Outcome]:
        """Apply queued changes in one read-modify-write under the store-wide write lock, and
        write the file once if any of them changed something (in a worker thread)."""
        key = changes[0][0]
        make_directories(os.path.dirname(self._path), NEW_DIRECTORY_MODE, self._path)
        access = shared_access(self._path)
        mode = NEW_FILE_MODE if access is None else access.lock_file_mode
        write_lock = FileLock(self._lock_path, mode=mode, thread_local=False)
        try:
            # Writers hold this lock for milliseconds: poll fast, or waiters starve behind a
            # process that writes in a loop.
            write_lock.acquire(timeout=self._lock_timeout, poll_interval=_WRITE_LOCK_POLL)
            if access is not None:
                adopt(self._lock_path, access, mode)
        except Timeout:
            raise StoreLockTimeoutError(
                f"the write lock {self._lock_path} of {self._path} was not acquired within "
                f"{self._lock_timeout:g} s",
                location=self._path,
                key=key,
            ) from None
        except OSError as exc:
            message = f"cannot lock {self._lock_path}: {exc.strerror or exc}"
            raise StoreError(message, location=self._path, key=key) from exc
        try:
            if not self._swept:
                remove_stale_temp_files(self._path)
                self._swept = True
            with self._parsing:
                return self._apply(key, changes)
        finally:
            write_lock.release()

    def _apply(self, key: str, changes: Sequence[tuple[str, _Change]]) -> list[Outcome]:
        """Apply ``changes`` and write the file once if any changed it (under both locks)."""
        # The version this process read or wrote last is reused only if it is still the
        # file's (another process may have written since).
        layout = self._read_cached_locked(key)
        records = dict(layout.records)  # the cache stays as on disk if the write fails
        outcomes: list[Outcome] = []
        changed = False
        for change_key, change in changes:
            try:
                result, changed_now = change(records)
            except StoreError as exc:
                if exc.key is None:
                    exc.key = change_key
                outcomes.append((False, exc))
                continue
            outcomes.append((True, result))
            changed = changed or changed_now
        if changed:
            self._cache = write_document(self._path, layout.top, records)
        return outcomes
