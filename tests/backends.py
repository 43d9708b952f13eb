"""The persisting stores, each behind one small interface, so that a test runs against all of them:
open a store (with or without a cipher), name it for a worker process, and look at the bytes it
keeps at rest (imported by name: tests/ is not a package)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Protocol

import pytest
import redis.asyncio

from asynctoken import FileStore, SQLiteStore, TokenStore
from asynctoken.crypto import AESGCMCipher
from asynctoken.stores import RedisStore
from asynctoken.stores._records import Cipher

PERSISTING = ("file", "sqlite", "redis", "cluster")


def cipher(*names: str, primary: str | None = None) -> AESGCMCipher:
    """A cipher whose keys are derived from their names (the same name gives the same key)."""
    names = names or ("k1",)
    keys = {name: name.encode().ljust(32, b"#")[:32] for name in names}
    return AESGCMCipher(keys, primary=primary or names[0])


class Backend(Protocol):
    """One persisting store's place: where it keeps data and how to look at it raw."""

    name: str

    def open(self, cipher: Cipher | None = None) -> TokenStore:
        """A new store instance over this place."""
        ...

    def spec(self, lock_ttl: float | None = None) -> str:
        """What tests/_worker.py needs to open this store in another process (``lock_ttl``:
        the lease of a store whose lock is a lease)."""
        ...

    def cli_args(self) -> list[str]:
        """The ``asynctoken`` command's options that open this store."""
        ...

    async def raw_bytes(self) -> bytes:
        """Every byte kept at rest (files, or every value)."""
        ...

    async def read_raw(self, key: str) -> bytes | None:
        """The stored record of ``key``, as the store keeps it."""
        ...

    async def write_raw(self, key: str, raw: bytes) -> None:
        """Put ``raw`` as the record of ``key``, behind the store's back."""
        ...


class FileBackend:
    name = "file"

    def __init__(self, directory: Path) -> None:
        self.path = directory / "tokens.json"

    def open(self, cipher: Cipher | None = None) -> TokenStore:
        return FileStore(self.path, cipher=cipher)

    def spec(self, lock_ttl: float | None = None) -> str:
        return str(self.path)

    def cli_args(self) -> list[str]:
        return ["--store", str(self.path)]

    async def raw_bytes(self) -> bytes:
        # The token file and everything beside it (lock files, leftovers).
        return b"".join(p.read_bytes() for p in sorted(self.path.parent.rglob("*")) if p.is_file())

    async def read_raw(self, key: str) -> bytes | None:
        credentials = json.loads(self.path.read_bytes())["credentials"]
        return None if key not in credentials else json.dumps(credentials[key]).encode()

    async def write_raw(self, key: str, raw: bytes) -> None:
        document = json.loads(self.path.read_bytes())
        document["credentials"][key] = json.loads(raw)
        self.path.write_text(json.dumps(document))


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.path = directory / "tokens.sqlite"

    def open(self, cipher: Cipher | None = None) -> TokenStore:
        return SQLiteStore(self.path, cipher=cipher)

    def spec(self, lock_ttl: float | None = None) -> str:
        return f"sqlite:{self.path}"

    def cli_args(self) -> list[str]:
        return ["--store", f"sqlite:{self.path}"]

    async def raw_bytes(self) -> bytes:
        # The database, its write-ahead log and shared-memory index, the lock files.
        return b"".join(p.read_bytes() for p in sorted(self.path.parent.rglob("*")) if p.is_file())

    async def read_raw(self, key: str) -> bytes | None:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            row = db.execute("SELECT record FROM credentials WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0]).encode()

    async def write_raw(self, key: str, raw: bytes) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as db, db:
            db.execute("UPDATE credentials SET record = ? WHERE key = ?", (raw.decode(), key))


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def open(self, cipher: Cipher | None = None) -> TokenStore:
        return RedisStore(self.url, prefix=self.prefix, cipher=cipher)

    def spec(self, lock_ttl: float | None = None) -> str:
        return f"{self.url}|{self.prefix}" + ("" if lock_ttl is None else f"|{lock_ttl}")

    def cli_args(self) -> list[str]:
        return ["--store", self.url, "--prefix", self.prefix]

    async def raw_bytes(self) -> bytes:
        async with redis.asyncio.Redis.from_url(self.url) as client:
            names = [name async for name in client.scan_iter(match=self.prefix + "*")]
            # GET, not DUMP: DUMP may compress a value, and hide what it holds.
            values = [await client.get(name) or b"" for name in names]
        return b"".join(values)

    async def read_raw(self, key: str) -> bytes | None:
        async with redis.asyncio.Redis.from_url(self.url) as client:
            raw: bytes | None = await client.get(f"{self.prefix}cred:{key}")
            return raw

    async def write_raw(self, key: str, raw: bytes) -> None:
        async with redis.asyncio.Redis.from_url(self.url) as client:
            await client.set(f"{self.prefix}cred:{key}", raw)


class ClusterBackend:
    """RedisStore on a real three-primary Redis Cluster."""

    name = "cluster"

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    def open(self, cipher: Cipher | None = None) -> TokenStore:
        return RedisStore(self.url, prefix=self.prefix, cluster=True, cipher=cipher)

    def spec(self, lock_ttl: float | None = None) -> str:
        return f"cluster:{self.url}|{self.prefix}" + ("" if lock_ttl is None else f"|{lock_ttl}")

    def cli_args(self) -> list[str]:
        return ["--store", self.url, "--prefix", self.prefix, "--cluster"]

    async def raw_bytes(self) -> bytes:
        async with redis.asyncio.RedisCluster.from_url(self.url) as client:
            names = [name async for name in client.scan_iter(match=self.prefix + "*")]
            values = [await client.get(name) or b"" for name in names]
        return b"".join(values)

    async def read_raw(self, key: str) -> bytes | None:
        async with redis.asyncio.RedisCluster.from_url(self.url) as client:
            raw: bytes | None = await client.get(f"{self.prefix}cred:{{{key}}}")
            return raw

    async def write_raw(self, key: str, raw: bytes) -> None:
        async with redis.asyncio.RedisCluster.from_url(self.url) as client:
            await client.set(f"{self.prefix}cred:{{{key}}}", raw)


def open_backend(name: str, request: pytest.FixtureRequest) -> Backend:
    """The persisting store ``name`` (see PERSISTING), in a place of its own for this test."""
    if name == "file":
        return FileBackend(request.getfixturevalue("tmp_path"))
    if name == "sqlite":
        return SQLiteBackend(request.getfixturevalue("tmp_path"))
    if name == "redis":
        return RedisBackend(
            request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        )
    if name == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return ClusterBackend(cluster.url, request.getfixturevalue("cluster_prefix"))
    raise ValueError(name)
