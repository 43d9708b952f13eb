"""A store in an SQLite database: many credentials, the processes of one host."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .._errors import ConfigurationError, StoreError, StoreLockTimeoutError
from .._token import Token
from ._batch import Outcome, WriteBatcher
from ._file_access import NEW_DIRECTORY_MODE, NEW_FILE_MODE
from ._key_locks import KeyLocks, make_directories
from ._records import Cipher, RecordCodec, Resealed

__all__ = ["SQLiteStore"]

_R = TypeVar("_R")

#: ``PRAGMA application_id`` of an asynctoken database ("atKS"), so that a foreign database is
#: never taken for an empty store.
APPLICATION_ID = 0x61744B53
#: ``PRAGMA user_version``: the schema version this version reads and writes.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE credentials (
    key TEXT PRIMARY KEY NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID
"""

_KEYS_PAGE = 1000
# A compare-and-swap is retried when the row changed between its read and its write (another
# writer); each retry re-reads and re-checks.
_SWAP_ATTEMPTS = 10


class SQLiteStore:
    """Keeps each credential in a row of an SQLite database; for many credentials on one host.

    Standard library :mod:`sqlite3` in WAL mode (readers never wait for writers), with
    ``synchronous=FULL`` (a write is on disk before it returns) and ``secure_delete`` (an
    overwritten record does not linger in free pages). Every database call runs in a worker
    thread, never on the event loop, on a small pool of connections (``max_connections``).
    One table, ``credentials(key TEXT PRIMARY KEY, record TEXT)``; a record is the JSON of
    :meth:`Token.to_dict`, or with a ``cipher`` a sealed record (see
    :mod:`asynctoken.stores._records`). A database of another application (its
    ``application_id``, or tables, say otherwise) or of a newer schema is refused with
    :class:`~asynctoken.StoreError`, never used or overwritten. A new database is created
    ``0600`` (its ``-wal`` and ``-shm`` files follow its mode), with missing parent directories
    ``0700``.

    Each write is a statement in a short transaction (concurrent writes of the process share one
    transaction and its fsync: see :mod:`._batch`): :meth:`put` an ``INSERT OR REPLACE``,
    :meth:`put_if_absent` an ``INSERT OR IGNORE``, :meth:`delete` a ``DELETE``, and
    :meth:`replace` a per-row compare-and-swap: the row is read, compared in this process (the
    refresh token may be sealed), and written by ``UPDATE … WHERE key = ? AND record = <what
    was read>``, re-read if another writer changed it in between.

    **The refresh lock** (:meth:`lock`) is not a database transaction: holding SQLite's write
    lock across a token request would stop every other writer of the host for a whole HTTP
    round trip. Nor is it a lease row, which a crashed holder would keep until it expires, and
    which needs renewals and trustworthy clocks. It is an OS file lock per credential
    (``<path>.locks/<hash of key>.lock`` via :mod:`filelock`), as for
    :class:`~asynctoken.stores.FileStore`: held only by the process refreshing that credential,
    taken and released without touching the database, and dropped by the kernel the moment its
    holder dies, even by ``kill -9``. Like SQLite itself, it is for processes of one host: do not
    put the database on a network filesystem.

    ``path`` is resolved once (:func:`os.path.realpath`), so that every process locks next to
    the real file.

    Args:
        path: the database file.
        cipher: seals records at rest; ``None`` keeps them in plain JSON.
        busy_timeout: how long a write waits for another process's write transaction (held for
            milliseconds) before :class:`~asynctoken.StoreLockTimeoutError`.
        poll_interval: how often a waiter of :meth:`lock` retries the per-credential lock.
        max_connections: database connections (and worker threads) used at once.

    Raises:
        ConfigurationError: a non-positive ``busy_timeout``, ``poll_interval`` or
            ``max_connections``.
    """

    __slots__ = (
        "_batcher",
        "_busy_timeout",
        "_codec",
        "_idle",
        "_key_locks",
        "_limiters",
        "_max_connections",
        "_mutex",
        "_opened",
        "_path",
        "_ready",
    )

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cipher: Cipher | None = None,
        busy_timeout: float = 10.0,
        poll_interval: float = 0.05,
        max_connections: int = 4,
    ) -> None:
        if not busy_timeout > 0:
            raise ConfigurationError(f"busy_timeout must be positive, not {busy_timeout!r}")
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be positive, not {poll_interval!r}")
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be positive, not {max_connections!r}")
        self._path = os.path.realpath(os.fspath(path))
        self._codec = RecordCodec(cipher, self._path)
        self._busy_timeout = float(busy_timeout)
        self._max_connections = max_connections
        self._key_locks = KeyLocks(self._path, float(poll_interval))
        self._idle: list[sqlite3.Connection] = []
        self._opened: list[sqlite3.Connection] = []
        self._mutex = threading.Lock()
        self._ready = False
        # One limiter per event loop (a limiter belongs to the loop that created it).
        self._limiters: dict[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = {}
        self._batcher: WriteBatcher[tuple[str, Callable[..., Any], tuple[Any, ...]]] = WriteBatcher(
            self._commit
        )

    @property
    def path(self) -> str:
        """The absolute path of the database, symbolic links resolved."""
        return self._path

    async def get(self, key: str) -> Token | None:
        """See :meth:`TokenStore.get`. One ``SELECT``.

        Raises:
            SealedRecordError: the record is sealed and cannot be opened.
            StoreError: the database fails, or the record is invalid.
        """
        raw = await self._run(key, _select, key)
        if raw is None:
            return None
        return self._decode(key, raw)

    async def put(self, key: str, token: Token) -> None:
        """See :meth:`TokenStore.put`. One ``INSERT OR REPLACE``."""
        record = self._codec.dumps(key, token)
        await self._write(key, _upsert, key, record)

    async def put_if_absent(self, key: str, token: Token) -> bool:
        """See :meth:`TokenStore.put_if_absent`. One ``INSERT OR IGNORE``."""
        record = self._codec.dumps(key, token)
        return await self._write(key, _insert, key, record)

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        """See :meth:`TokenStore.replace`: a per-row compare-and-swap.

        Also returns ``True`` without writing when the stored record already equals ``token``.

        Raises:
            SealedRecordError: the stored record is sealed and cannot be opened.
            StoreError: the stored record is invalid, or the database fails.
        """
        record = self._codec.dumps(key, token)

        def decide(raw: str) -> str | bool:
            current = self._decode(key, raw)
            if current == token:
                return True
            if current.refresh_token != expected_refresh_token:
                return False
            return record

        return await self._write(key, self._swap, key, decide)

    async def delete(self, key: str) -> bool:
        """See :meth:`TokenStore.delete`. One ``DELETE``."""
        return await self._write(key, _delete, key)

    async def keys(self) -> AsyncIterator[str]:
        """See :meth:`TokenStore.keys`: in key order, a page of 1,000 keys per query, no
        transaction held between pages (a key added or removed meanwhile may or may not be
        seen; a key present throughout is yielded once)."""
        after: str | None = None
        while True:
            page = await self._run(None, _keys_after, after, _KEYS_PAGE)
            for key in page:
                yield key
            if len(page) < _KEYS_PAGE:
                return
            after = page[-1]

    async def reseal(self, keys: Sequence[str]) -> Resealed:
        """Seal the records of ``keys`` anew with the cipher's primary key, in one transaction.

        Records already sealed with the primary key and keys no longer stored are left alone, so
        running it again after an interruption only does what is left; records that cannot be
        opened are left as they are and reported. Used by ``asynctoken rekey``.
        """
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return Resealed()
        return await self._write(wanted[0], self._reseal, wanted)

    def lock(self, key: str, *, timeout: float) -> AbstractAsyncContextManager[None]:
        """See :meth:`TokenStore.lock`: an OS file lock per key (see the class documentation).

        Raises:
            StoreLockTimeoutError: not acquired within ``timeout`` seconds (names the path and key).
        """
        return self._key_locks.hold(key, timeout)

    async def aclose(self) -> None:
        """Close the database connections (new calls open them again)."""
        with self._mutex:
            connections, self._opened, self._idle = self._opened, [], []
        for connection in connections:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def __repr__(self) -> str:
        return f"SQLiteStore(path={self._path!r})"

    def _reopen(self) -> SQLiteStore:
        """The same database, with connections, lock waiters and limiters of its own.

        For a forked child (see :mod:`asynctoken.sync`): SQLite connections must not be carried
        across a fork, and a parent's task may have held a lock of this instance at that moment.
        """
        return SQLiteStore(
            self._path,
            cipher=self._codec.cipher,
            busy_timeout=self._busy_timeout,
            poll_interval=self._key_locks.poll_interval,
            max_connections=self._max_connections,
        )

    # -- running statements ----------------------------------------------------------------------

    async def _write(self, key: str, work: Callable[..., _R], /, *args: Any) -> _R:
        """Queue a write; concurrent writes share one transaction (see :mod:`._batch`)."""
        result: _R = await self._batcher.submit((key, work, args))
        return result

    def _commit(
        self, changes: Sequence[tuple[str, Callable[..., Any], tuple[Any, ...]]]
    ) -> list[Outcome]:
        """Apply queued writes in one transaction (in a worker thread)."""
        return self._run_sync(changes[0][0], self._apply, (changes,))

    def _apply(
        self,
        connection: sqlite3.Connection,
        changes: Sequence[tuple[str, Callable[..., Any], tuple[Any, ...]]],
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            for key, work, args in changes:
                try:
                    outcomes.append((True, work(connection, *args)))
                except StoreError as exc:  # decided before writing: nothing of it was written
                    if exc.key is None:
                        exc.key = key
                    outcomes.append((False, exc))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return outcomes

    async def _run(self, key: str | None, work: Callable[..., _R], /, *args: Any) -> _R:
        """Run ``work(connection, *args)`` in a worker thread, on a connection of the pool."""
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            for old in [other for other in self._limiters if other.is_closed()]:
                del self._limiters[old]
            limiter = self._limiters[loop] = anyio.CapacityLimiter(self._max_connections)
        return await anyio.to_thread.run_sync(self._run_sync, key, work, args, limiter=limiter)

    def _run_sync(self, key: str | None, work: Callable[..., _R], args: tuple[Any, ...]) -> _R:
        connection = self._connection(key)
        try:
            return work(connection, *args)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            raise self._error(exc, key) from exc
        except UnicodeEncodeError:
            message = f"key cannot be stored in {self._path}: it is not valid Unicode"
            raise StoreError(message, location=self._path, key=key) from None
        finally:
            with self._mutex:
                kept = any(connection is opened for opened in self._opened)
                if kept:
                    self._idle.append(connection)
            if not kept:  # aclose() ran meanwhile
                connection.close()

    def _connection(self, key: str | None) -> sqlite3.Connection:
        with self._mutex:
            if self._idle:
                return self._idle.pop()
        try:
            connection = self._open()
        except sqlite3.Error as exc:
            raise self._error(exc, key) from exc
        except OSError as exc:
            message = f"cannot open {self._path}: {exc.strerror or exc}"
            raise StoreError(message, location=self._path, key=key) from exc
        with self._mutex:
            self._opened.append(connection)
        return connection

    def _open(self) -> sqlite3.Connection:
        if not os.path.exists(self._path):
            make_directories(os.path.dirname(self._path), NEW_DIRECTORY_MODE, self._path)
            with contextlib.suppress(FileExistsError):
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                os.close(os.open(self._path, flags, NEW_FILE_MODE))
        connection = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # used by one worker thread at a time, from the pool
        )
        try:
            if not self._ready:
                self._identify(connection)  # before any write: a foreign file stays untouched
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"{self._path}: SQLite could not switch to WAL mode (got {mode!r})",
                    location=self._path,
                )
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA secure_delete=ON")
            if not self._ready:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    if self._identify(connection):  # again: another process may have won
                        connection.execute(_SCHEMA)
                        connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
                        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    connection.execute("COMMIT")
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                self._ready = True
        except BaseException:
            connection.close()
            raise
        return connection

    def _identify(self, connection: sqlite3.Connection) -> bool:
        """Whether the database is new (empty); refuse a foreign or newer one.

        Raises:
            StoreError: the database belongs to another application, or to a newer asynctoken.
        """
        application_id = connection.execute("PRAGMA application_id").fetchone()[0]
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        tables = connection.execute("SELECT name FROM sqlite_master").fetchall()
        if application_id == 0 and not tables:
            return True
        if application_id != APPLICATION_ID:
            raise StoreError(
                f"{self._path} is an SQLite database of another application (application_id "
                f"{application_id}, {len(tables)} tables): it was left untouched",
                location=self._path,
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._path} was written by a newer asynctoken (schema version {version}; "
                f"this version reads {SCHEMA_VERSION}): upgrade asynctoken to use it",
                location=self._path,
            )
        return False

    def _error(self, exc: sqlite3.Error, key: str | None) -> StoreError:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
            return StoreLockTimeoutError(
                f"{self._path}: another process held the database's write lock for more than "
                f"busy_timeout={self._busy_timeout:g} s",
                location=self._path,
                key=key,
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in text:
            text = "not an SQLite database; it was left untouched"
        return StoreError(f"{self._path}: {text}", location=self._path, key=key)

    # -- work done in a worker thread ------------------------------------------------------------

    def _decode(self, key: str, raw: str) -> Token:
        try:
            record = _loads(raw)
        except ValueError:
            message = f"record {key!r} in {self._path} is not a JSON object"
            raise StoreError(message, location=self._path, key=key) from None
        return self._codec.decode(key, record, where=f"record {key!r} in {self._path}")

    def _swap(
        self, connection: sqlite3.Connection, key: str, decide: Callable[[str], str | bool]
    ) -> bool:
        for _ in range(_SWAP_ATTEMPTS):
            raw = _select(connection, key)
            if raw is None:
                return False
            verdict = decide(raw)
            if isinstance(verdict, bool):
                return verdict
            cursor = connection.execute(
                "UPDATE credentials SET record = ? WHERE key = ? AND record = ?",
                (verdict, key, raw),
            )
            if cursor.rowcount == 1:
                return True
        raise StoreError(
            f"record {key!r} in {self._path} kept changing during a compare-and-swap; the "
            f"outcome is unknown: read the record back",
            location=self._path,
            key=key,
        )

    def _reseal(self, connection: sqlite3.Connection, keys: list[str]) -> Resealed:
        rewritten, unchanged, errors = 0, 0, []
        for key in keys:
            raw = _select(connection, key)
            if raw is None:
                unchanged += 1
                continue
            try:
                record = _loads(raw)
                if self._codec.is_current(record):
                    unchanged += 1
                    continue
                token = self._decode(key, raw)
            except (StoreError, ValueError) as exc:
                if not isinstance(exc, StoreError):
                    exc = StoreError(
                        f"record {key!r} in {self._path} is not a JSON object",
                        location=self._path,
                        key=key,
                    )
                errors.append(exc)
                continue
            _upsert(connection, key, self._codec.dumps(key, token))
            rewritten += 1
        return Resealed(rewritten, unchanged, tuple(errors))


def _loads(raw: str) -> dict[str, Any]:
    record = json.loads(raw)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def _select(connection: sqlite3.Connection, key: str) -> str | None:
    row = connection.execute("SELECT record FROM credentials WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _upsert(connection: sqlite3.Connection, key: str, record: str) -> None:
    connection.execute(
        "INSERT OR REPLACE INTO credentials (key, record) VALUES (?, ?)", (key, record)
    )


def _insert(connection: sqlite3.Connection, key: str, record: str) -> bool:
    cursor = connection.execute(
        "INSERT OR IGNORE INTO credentials (key, record) VALUES (?, ?)", (key, record)
    )
    return cursor.rowcount == 1


def _delete(connection: sqlite3.Connection, key: str) -> bool:
    return connection.execute("DELETE FROM credentials WHERE key = ?", (key,)).rowcount == 1


def _keys_after(connection: sqlite3.Connection, after: str | None, limit: int) -> list[str]:
    if after is None:
        rows = connection.execute(
            "SELECT key FROM credentials ORDER BY key LIMIT ?", (limit,)
        ).fetchall()
    else:
        rows = connection.execute(
            "SELECT key FROM credentials WHERE key > ? ORDER BY key LIMIT ?", (after, limit)
        ).fetchall()
    return [str(row[0]) for row in rows]
