"""A store in Redis, shared by every process and host that uses the same server and prefix."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

try:
    from redis.asyncio import Redis, RedisCluster
    from redis.exceptions import RedisError, ResponseError

    from ._redis_client import (
        Client,
        KeyNames,
        connect,
        describe,
        password_of,
        redact_url,
        reopen,
    )
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "RedisStore needs the redis package: pip install 'asynctoken[redis]'"
    ) from exc

from .._errors import ConfigurationError, StoreError, StoreLockTimeoutError
from .._token import Token
from ._records import Cipher, RecordCodec, Resealed, is_sealed
from ._redis_scripts import RENEW_LUA, REPLACE_LUA, SWAP_ATTEMPTS, SWAP_LUA, UNLOCK_LUA

__all__ = ["RedisStore", "redact_url"]

_log = logging.getLogger("asynctoken.stores")

#: Version of the JSON record stored under each credential key (field ``"v"``).
RECORD_VERSION = 1


class RedisStore:
    """Keeps each credential under its own Redis key; for many processes and hosts.

    Layout (``prefix`` defaults to ``"asynctoken:"``):

    * ``{prefix}cred:{key}``: a JSON string, the fields of :meth:`Token.to_dict` plus ``"v": 1``,
      or with a ``cipher`` a sealed record (see :mod:`asynctoken.stores._records`).
    * ``{prefix}lock:{key}``: the refresh lock, a random token set with ``SET NX PX lock_ttl``.

    **Redis Cluster**: pass a :class:`redis.asyncio.RedisCluster` client, or a URL of any node
    with ``cluster=True`` (redis-py has no URL scheme of its own for clusters: its
    ``RedisCluster.from_url`` takes ``redis://`` and ``rediss://`` URLs, and so does this). Key
    names then carry the credential key as a hash tag, ``{prefix}cred:{{key}}`` and
    ``{prefix}lock:{{key}}``, so both keys of a credential live in one slot and every script
    touches one key; :meth:`keys` scans every primary in turn. The prefix must not contain
    braces.

    Every per-key call is one round trip: :meth:`get` is ``GET``, :meth:`put` ``SET``,
    :meth:`put_if_absent` ``SET NX``, :meth:`replace` one Lua script (compare-and-swap on the
    stored refresh token, atomic in the server), :meth:`delete` ``DEL``. :meth:`keys` walks the
    keyspace with ``SCAN``, a batch at a time, so a million credentials are never in memory at once.

    The refresh lock is a lease, renewed every ``lock_ttl / 3`` while it is held, so a slow
    refresh never outlives it, and a holder that crashes blocks others for at most ``lock_ttl``.
    A lease lost anyway (Redis failover, a renewal that could not reach Redis) is logged as a
    warning; :meth:`replace` still refuses to overwrite a newer refresh token in that case.

    With a ``cipher`` (:class:`asynctoken.crypto.AESGCMCipher`), every record written is sealed
    and the server cannot see refresh tokens: :meth:`replace` then reads the record, compares in
    the process, and swaps with a script that writes only if the stored value is still the one
    read (two round trips). Plain records written before are still read, and sealed on their next
    write; a record that cannot be opened raises :class:`~asynctoken.SealedRecordError`.

    Connection errors, timeouts and server errors raise :class:`~asynctoken.StoreError` whose
    message and ``location`` carry the URL with the password replaced by ``***``. Nothing is
    retried blindly: a write whose outcome is unknown is reported, never assumed.

    Args:
        url_or_client: a ``redis://``, ``rediss://`` or ``unix://`` URL, or a
            :class:`redis.asyncio.Redis` client. A client passed in is not closed by
            :meth:`aclose`; its own timeout and retry settings apply.
        cipher: seals records at rest; ``None`` keeps them in plain JSON.
        cluster: ``url_or_client`` is a URL of a node of a Redis Cluster (implied by a
            ``RedisCluster`` client).
        prefix: prepended to every key; stores with different prefixes share nothing. Prefixes
            must not nest (``"a:"`` and ``"a:cred:"`` would see each other's keys).
        lock_ttl: seconds after which an unreleased refresh lock expires.
        poll_interval: seconds between attempts while waiting for a refresh lock.
        socket_timeout: seconds to wait for a reply (for a URL only).
        connect_timeout: seconds to wait for a connection (for a URL only).
        max_connections: size of the connection pool (for a URL only); more concurrent calls
            wait for a free connection.
        scan_count: the ``COUNT`` hint of each ``SCAN`` call in :meth:`keys`.

    Raises:
        ConfigurationError: a bad URL, or a non-positive ``lock_ttl``, ``poll_interval``,
            ``max_connections`` or ``scan_count``.
    """

    __slots__ = (
        "_client",
        "_codec",
        "_gate",
        "_location",
        "_lock_ttl",
        "_names",
        "_owns_client",
        "_pending",
        "_poll_interval",
        "_prefix",
        "_renew_script",
        "_replace_script",
        "_scan_count",
        "_secret",
        "_swap_script",
        "_unlock_script",
    )

    def __init__(
        self,
        url_or_client: str | Redis | RedisCluster,
        *,
        cipher: Cipher | None = None,
        cluster: bool = False,
        prefix: str = "asynctoken:",
        lock_ttl: float = 60.0,
        poll_interval: float = 0.05,
        socket_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        max_connections: int = 50,
        scan_count: int = 1000,
    ) -> None:
        if not lock_ttl > 0:
            raise ConfigurationError(f"lock_ttl must be positive, not {lock_ttl!r}")
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be positive, not {poll_interval!r}")
        if scan_count < 1:
            raise ConfigurationError(f"scan_count must be positive, not {scan_count!r}")
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be positive, not {max_connections!r}")
        cluster = cluster or isinstance(url_or_client, RedisCluster)
        self._names = KeyNames(prefix, cluster=cluster)
        if isinstance(url_or_client, str):
            self._location = redact_url(url_or_client) + (" (cluster)" if cluster else "")
            try:
                self._client: Client = connect(
                    url_or_client,
                    cluster=cluster,
                    max_connections=max_connections,
                    socket_timeout=socket_timeout,
                    connect_timeout=connect_timeout,
                )
            except (ValueError, RedisError) as exc:
                raise ConfigurationError(f"invalid Redis URL {self._location}: {exc}") from None
            # Callers beyond the pool's size wait here, rather than fail with "Too many
            # connections" (redis-py's own BlockingConnectionPool deadlocks on connection errors
            # in the 5.0 releases).
            self._gate: asyncio.Semaphore | None = asyncio.Semaphore(max_connections)
            self._owns_client = True
        else:
            self._client = url_or_client
            self._owns_client = False
            self._gate = None  # the client's own pool settings apply
            self._location = describe(url_or_client)
        self._secret = password_of(self._client)
        self._prefix = prefix
        self._lock_ttl = float(lock_ttl)
        self._poll_interval = float(poll_interval)
        self._scan_count = scan_count
        self._codec = RecordCodec(cipher, self._location, header={"v": RECORD_VERSION})
        self._replace_script = self._client.register_script(REPLACE_LUA)
        self._swap_script = self._client.register_script(SWAP_LUA)
        self._unlock_script = self._client.register_script(UNLOCK_LUA)
        self._renew_script = self._client.register_script(RENEW_LUA)
        # Lock releases that outlive a cancelled caller; awaited by aclose().
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def location(self) -> str:
        """The server's URL without its password."""
        return self._location

    @property
    def prefix(self) -> str:
        """The prefix of every key of this store."""
        return self._prefix

    async def get(self, key: str) -> Token | None:
        """See :meth:`TokenStore.get`. One ``GET``."""
        # The cold-tenant path: no context-manager generators here, only try/except.
        name = self._names.cred(key)
        try:
            if self._gate is None:
                raw = await self._client.get(name)
            else:
                async with self._gate:
                    raw = await self._client.get(name)
        except (RedisError, OSError) as exc:
            raise self._error("GET", key, exc) from _cause(exc)
        if raw is None:
            return None
        return self._decode(key, raw)

    async def put(self, key: str, token: Token) -> None:
        """See :meth:`TokenStore.put`. One ``SET``."""
        data = self._encode(key, token)
        async with self._guard("SET", key):
            await self._client.set(self._cred(key), data)

    async def put_if_absent(self, key: str, token: Token) -> bool:
        """See :meth:`TokenStore.put_if_absent`. One ``SET NX`` (and a ``GET`` if a record
        exists: a retried ``SET NX`` whose first attempt stored this very record reports it
        stored)."""
        data = self._encode(key, token)
        async with self._guard("SET NX", key):
            if await self._client.set(self._cred(key), data, nx=True):
                return True
            return await self._client.get(self._cred(key)) in (data, data.decode())

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        """See :meth:`TokenStore.replace`. One Lua script, atomic in the server; with a cipher,
        a ``GET`` and a script that swaps only if the value is still the one read.

        Also returns ``True`` when the stored record already equals ``token``, so that retrying a
        replace whose reply was lost is harmless.

        Raises:
            SealedRecordError: the stored record is sealed and cannot be opened.
            StoreError: the stored record is not JSON, or Redis failed (the outcome is then
                unknown: read the record back).
        """
        data = self._encode(key, token)
        if self._codec.cipher is not None:
            return await self._swap(key, data, token, expected_refresh_token)
        expected = "" if expected_refresh_token is None else expected_refresh_token
        flag = "0" if expected_refresh_token is None else "1"
        async with self._guard("replace", key):
            result = await self._replace_script(keys=[self._cred(key)], args=[data, flag, expected])
        if result == -1:  # sealed: reading it raises the precise SealedRecordError
            await self.get(key)
            raise self._bad_record(key, "is sealed")  # pragma: no cover - get() raised
        return bool(result)

    async def reseal(self, keys: Sequence[str]) -> Resealed:
        """Seal the records of ``keys`` anew with the cipher's primary key.

        Per record: ``GET``, then (unless it is already sealed with the primary key) a script
        that writes the re-sealed record only if the stored value is still the one read, so a
        refresh that wrote meanwhile is never overwritten. Records that cannot be opened are
        left as they are and reported. Used by ``asynctoken rekey``.
        """
        rewritten, unchanged, errors = 0, 0, []
        for key in dict.fromkeys(keys):
            try:
                done = await self._reseal_one(key)
            except StoreError as exc:
                errors.append(exc)
                continue
            if done:
                rewritten += 1
            else:
                unchanged += 1
        return Resealed(rewritten, unchanged, tuple(errors))

    async def _reseal_one(self, key: str) -> bool:
        name = self._cred(key)
        for _ in range(SWAP_ATTEMPTS):
            async with self._guard("GET", key):
                raw = await self._client.get(name)
            if raw is None:
                return False
            record = self._parse(key, raw)
            if self._codec.is_current(record):
                return False
            data = self._encode(key, self._codec.decode(key, record, where=self._where(key)))
            async with self._guard("reseal", key):
                if await self._swap_script(keys=[name], args=[raw, data]):
                    return True
        raise StoreError(
            f"{self._where(key)} kept changing while it was re-sealed; try again",
            location=self._location,
            key=key,
        )

    async def _swap(self, key: str, data: bytes, token: Token, expected: str | None) -> bool:
        """:meth:`replace` of a record the server cannot read: read and compare here, then swap
        if the stored value is unchanged; read again if it changed meanwhile."""
        name = self._cred(key)
        for _ in range(SWAP_ATTEMPTS):
            async with self._guard("GET", key):
                raw = await self._client.get(name)
            if raw is None:
                return False
            verdict = _decide(self._decode(key, raw), token, expected)
            if verdict is not None:
                return verdict
            async with self._guard("replace", key):
                if await self._swap_script(keys=[name], args=[raw, data]):
                    return True
        raise StoreError(
            f"{self._where(key)} kept changing during a compare-and-swap; the outcome is "
            f"unknown: read the record back",
            location=self._location,
            key=key,
        )

    async def delete(self, key: str) -> bool:
        """See :meth:`TokenStore.delete`. One ``DEL``; the refresh lock is left to expire."""
        async with self._guard("DEL", key):
            return bool(await self._client.delete(self._cred(key)))

    async def keys(self) -> AsyncIterator[str]:
        """See :meth:`TokenStore.keys`.

        ``SCAN`` with a ``MATCH`` on this store's prefix, ``scan_count`` keys per round trip. Per
        Redis's ``SCAN`` guarantees, a key present for the whole iteration is yielded at least once
        (rarely twice, if the server resizes its table meanwhile).
        """
        pattern = self._names.pattern()
        if isinstance(self._client, RedisCluster):
            async for key in self._cluster_keys(self._client, pattern):
                yield key
            return
        cursor: int = 0
        while True:
            async with self._guard("SCAN", None):
                cursor, batch = await self._client.scan(
                    cursor=cursor, match=pattern, count=self._scan_count
                )
            for name in batch:
                yield self._names.key_of(name)
            if not cursor:
                return

    async def _cluster_keys(self, client: RedisCluster, pattern: str) -> AsyncIterator[str]:
        """``SCAN`` every primary of the cluster in turn, each to the end of its cursor."""
        async with self._guard("cluster discovery", None):
            await client.initialize()  # a new client knows no primaries before its first command
        for node in client.get_primaries():
            cursor: int = 0
            while True:
                async with self._guard("SCAN", None):
                    cursors, batch = await client.scan(
                        cursor=cursor, match=pattern, count=self._scan_count, target_nodes=node
                    )
                for name in batch:
                    yield self._names.key_of(name)
                cursor = int(cursors[node.name])  # type: ignore[index]  # a dict per node
                if not cursor:
                    break

    @asynccontextmanager
    async def lock(self, key: str, *, timeout: float) -> AsyncIterator[None]:
        """See :meth:`TokenStore.lock`: a lease of ``lock_ttl`` seconds.

        Waiting polls ``SET NX`` every ``poll_interval``. Release deletes the lock only if it
        still holds this holder's random token; a lease that already expired is logged, not raised.

        Raises:
            StoreLockTimeoutError: not acquired within ``timeout`` seconds.
            StoreError: Redis failed while acquiring.
        """
        name = self._names.lock(key)
        token = secrets.token_hex(16)
        ttl_ms = max(1, int(self._lock_ttl * 1000))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self._try_lock(name, token, ttl_ms, key):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StoreLockTimeoutError(
                    f"refresh lock {name!r} at {self._location} not acquired within "
                    f"{timeout:g} s: another holder has it (a crashed holder's lease ends "
                    f"within lock_ttl={self._lock_ttl:g} s)",
                    location=self._location,
                    key=key,
                )
            await asyncio.sleep(min(self._poll_interval, remaining))
        # Renewed while held, so a slow refresh never outlives its lease; a crashed holder
        # stops renewing and its lease ends within lock_ttl.
        renewer = loop.create_task(self._renew(name, token, ttl_ms, key), name="asynctoken-lease")
        self._pending.add(renewer)
        renewer.add_done_callback(self._pending.discard)
        try:
            yield
        finally:
            renewer.cancel()
            # Shielded: a caller cancelled now still frees the lock instead of waiting out its TTL.
            await asyncio.shield(self._spawn_unlock(name, token, key))

    async def _renew(self, name: str, token: str, ttl_ms: int, key: str) -> None:
        """Extend our lease every third of ``lock_ttl`` while the lock is held."""
        while True:
            await asyncio.sleep(self._lock_ttl / 3)
            try:
                async with self._guard("lock renewal", key):
                    still_ours = await self._renew_script(keys=[name], args=[token, ttl_ms])
            except StoreError as exc:
                _log.warning("[%s] could not renew the refresh lock: %s", key, exc.message)
                continue
            except Exception:  # never a silent dead task: log, and keep trying
                _log.exception("[%s] renewing the refresh lock failed", key)
                continue
            if not still_ours:
                _log.warning(
                    "[%s] the refresh lock at %s was lost before it could be renewed",
                    key,
                    self._location,
                )
                return

    async def aclose(self) -> None:
        """Finish pending lock releases, then close the client if this store created it."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=5.0)
        if self._owns_client:
            close = getattr(self._client, "aclose", None)
            if close is None:  # pragma: no cover - redis 5.0.0 has only close()
                await self._client.close()
            else:
                await close()

    def __repr__(self) -> str:
        return f"RedisStore(url={self._location!r}, prefix={self._prefix!r})"

    def _reopen(self) -> RedisStore:
        """The same server, prefix and settings, through a connection pool of its own.

        For a forked child (see :mod:`asynctoken.sync`): the parent's connections are shared
        sockets (their replies would interleave) bound to an event loop that does not run in
        the child. The new store owns its client, even if this one was given a client.
        """
        client, pool_size = reopen(self._client)
        store = RedisStore(
            client,
            cipher=self._codec.cipher,
            prefix=self._prefix,
            lock_ttl=self._lock_ttl,
            poll_interval=self._poll_interval,
            scan_count=self._scan_count,
        )
        store._owns_client = True
        store._location = self._location
        store._codec = self._codec  # the same cipher and the same password-free location
        if self._gate is not None:
            store._gate = asyncio.Semaphore(pool_size)
        return store

    # -- helpers ---------------------------------------------------------------------------------

    def _cred(self, key: str) -> str:
        return self._names.cred(key)

    def _encode(self, key: str, token: Token) -> bytes:
        return self._codec.dumps(key, token).encode("ascii")

    def _decode(self, key: str, raw: bytes | str) -> Token:
        return self._codec.decode(key, self._parse(key, raw), where=self._where(key))

    def _parse(self, key: str, raw: bytes | str) -> dict[str, Any]:
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._bad_record(key, "is not JSON") from None
        if not isinstance(record, dict):
            raise self._bad_record(key, "is not a JSON object")
        version = record.get("v", RECORD_VERSION)
        newest = 1 if is_sealed(record) else RECORD_VERSION
        if isinstance(version, int) and not isinstance(version, bool) and version > newest:
            raise self._bad_record(
                key,
                f"was written by a newer asynctoken (record version {version}; this version "
                f"reads {newest}): upgrade asynctoken",
            )
        return record

    def _where(self, key: str) -> str:
        return f"record {self._cred(key)!r} at {self._location}"

    def _bad_record(self, key: str, what: str) -> StoreError:
        return StoreError(f"{self._where(key)} {what}", location=self._location, key=key)

    async def _try_lock(self, name: str, token: str, ttl_ms: int, key: str) -> bool:
        try:
            async with self._guard("lock", key):
                if await self._client.set(name, token, nx=True, px=ttl_ms):
                    return True
                # A client that retries (a RedisCluster, or one passed in) may have sent this
                # SET NX twice: the first one took the lock, the retry found it taken. The lock
                # is ours if it holds our random token.
                holder = await self._client.get(name)
                return holder in (token, token.encode())
        except BaseException:
            # The SET may have reached the server before the failure or cancellation: undo it.
            self._spawn_unlock(name, token, key, quiet=True)
            raise

    def _spawn_unlock(
        self, name: str, token: str, key: str, quiet: bool = False
    ) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._unlock(name, token, key, quiet))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _unlock(self, name: str, token: str, key: str, quiet: bool) -> None:
        try:
            async with self._guard("unlock", key):
                released = await self._unlock_script(keys=[name], args=[token])
        except StoreError as exc:
            if not quiet:
                _log.warning(
                    "[%s] could not release the refresh lock (%s); it expires within %g s",
                    key,
                    exc.message,
                    self._lock_ttl,
                )
            return
        if not released and not quiet:
            _log.warning(
                "[%s] the refresh lock at %s expired before it was released (held longer than "
                "lock_ttl=%g s); another process may have taken it meanwhile",
                key,
                self._location,
                self._lock_ttl,
            )

    @asynccontextmanager
    async def _guard(self, operation: str, key: str | None) -> AsyncIterator[None]:
        """Wait for a free connection, then run one command with its errors translated."""
        if self._gate is None:
            with self._translate(operation, key):
                yield
        else:
            async with self._gate:
                with self._translate(operation, key):
                    yield

    @contextmanager
    def _translate(self, operation: str, key: str | None) -> Iterator[None]:
        """Turn a redis-py or socket failure into a StoreError without the password."""
        try:
            yield
        except (RedisError, OSError) as exc:
            raise self._error(operation, key, exc) from _cause(exc)
        except AttributeError as exc:
            if not self._names.cluster:
                raise
            # redis-py's asyncio cluster client can hand out a connection that another task is
            # disconnecting after a connection error (its writer is gone): a failed command,
            # like any connection error, not a crash.
            raise self._error(operation, key, ConnectionError(str(exc))) from exc

    def _error(self, operation: str, key: str | None, exc: BaseException) -> StoreError:
        """The StoreError for a redis-py or socket failure, without the password."""
        if isinstance(exc, ResponseError):
            detail = self._scrub(str(exc))
            if "ASYNCTOKEN_BAD_RECORD" in detail:
                detail = "the stored record is not a JSON object"
            message = f"Redis at {self._location} refused {operation}: {detail}"
            return StoreError(message, location=self._location, key=key)
        message = (
            f"Redis at {self._location} failed during {operation}: "
            f"{type(exc).__name__}: {self._scrub(str(exc))}"
        )
        return StoreError(message, location=self._location, key=key)

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


def _decide(current: Token, token: Token, expected: str | None) -> bool | None:
    """The compare of :meth:`RedisStore.replace`: ``True``/``False`` to answer at once without
    writing, ``None`` to swap."""
    if current == token:
        return True
    if current.refresh_token != expected:
        return False
    return None


def _cause(exc: BaseException) -> BaseException | None:
    """What a StoreError is chained to: a refusal's text is already in the message."""
    return None if isinstance(exc, ResponseError) else exc
