"""SQLiteStore against real SQLite files and real processes: what it creates, what it refuses,
and a refresh lock that never holds the database's write lock (the shared contract is in
test_stores.py, the multi-process and kill -9 tests in test_multiprocess.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import pytest
from support import collect, token

from asynctoken import ConfigurationError, SQLiteStore, StoreError, StoreLockTimeoutError, Token
from asynctoken.stores._records import RecordCodec

REPO = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.sqlite"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    children: list[subprocess.Popen[str]] = []
    yield children
    for child in children:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def test_a_new_database_is_private_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "tokens.sqlite"
    old = os.umask(0)
    try:
        store = SQLiteStore(path)
        await store.put("k", token(1))
        async with store.lock("k", timeout=1):
            pass
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    for suffix in ("-wal", "-shm"):
        assert mode(Path(f"{path}{suffix}")) == 0o600, suffix
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x61744B53
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        [(record,)] = db.execute("SELECT record FROM credentials WHERE key = 'k'").fetchall()
    assert RecordCodec(None, "").decode("k", json.loads(record), where="") == token(1)
    await store.aclose()


async def test_a_missing_database_is_an_empty_store(path: Path) -> None:
    store = SQLiteStore(path)
    assert await store.get("k") is None
    assert await collect(store.keys()) == []
    assert await store.delete("k") is False
    await store.aclose()


@pytest.mark.parametrize("kind", ["foreign", "newer", "not sqlite"])
async def test_a_database_that_is_not_ours_is_refused_and_left_untouched(
    path: Path, kind: str
) -> None:
    if kind == "not sqlite":
        path.write_bytes(b'{"format": "asynctoken.filestore"}')
    else:
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
            if kind == "newer":
                db.execute("CREATE TABLE credentials (key TEXT PRIMARY KEY, record TEXT)")
                db.execute("PRAGMA application_id = 1635011411")
                db.execute("PRAGMA user_version = 2")
    before = path.read_bytes()
    store = SQLiteStore(path)
    for call in (store.get("k"), store.put("k", token(1))):
        with pytest.raises(StoreError) as caught:
            await call
        assert caught.value.location == str(path)
        assert str(path) in str(caught.value)
    if kind == "newer":
        assert "upgrade asynctoken" in str(caught.value)
    await store.aclose()
    assert path.read_bytes() == before


async def test_keys_are_listed_a_page_at_a_time(path: Path) -> None:
    store = SQLiteStore(path)
    await store.put("first", token(0))  # creates the schema
    codec = RecordCodec(None, str(path))
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO credentials VALUES (?, ?)",
            [(f"tenant-{n:05}", codec.dumps(f"tenant-{n:05}", token(n))) for n in range(2500)],
        )
    keys = await collect(store.keys())
    assert len(keys) == 2501
    assert set(keys) == {"first"} | {f"tenant-{n:05}" for n in range(2500)}
    assert await store.get("tenant-02499") == token(2499)
    await store.aclose()


async def test_concurrent_replaces_through_separate_connections_have_one_winner(
    path: Path,
) -> None:
    stores = [SQLiteStore(path, max_connections=4) for _ in range(3)]
    try:
        await stores[0].put("k", token(0))
        for round_ in range(1, 4):
            expected = f"refresh-{(round_ - 1) * 100}"
            contenders = [token(round_ * 100 + i) for i in range(30)]
            results = await asyncio.gather(
                *(
                    stores[i % 3].replace("k", candidate, expected_refresh_token=expected)
                    for i, candidate in enumerate(contenders)
                )
            )
            assert results.count(True) == 1
            assert await stores[1].get("k") == contenders[results.index(True)]
            await stores[0].put("k", token(round_ * 100))
    finally:
        for store in stores:
            await store.aclose()


HOLDER = """
    import asyncio, sys
    from asynctoken import SQLiteStore

    async def main():
        async with SQLiteStore(sys.argv[1]).lock(sys.argv[2], timeout=5):
            print("locked", flush=True)
            await asyncio.sleep(120)

    asyncio.run(main())
"""


async def test_the_refresh_lock_holds_no_database_lock_and_dies_with_its_holder(
    path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    store = SQLiteStore(path, poll_interval=0.01, busy_timeout=0.5)
    await store.put("tenant-1", token(1))
    holder = spawn(HOLDER, str(path), "tenant-1")
    processes.append(holder)
    assert holder.stdout is not None
    line = await anyio.to_thread.run_sync(holder.stdout.readline)
    assert line == "locked\n", holder.communicate()[1]

    with pytest.raises(StoreLockTimeoutError) as caught:
        async with store.lock("tenant-1", timeout=0.3):
            pytest.fail("entered a lock held by another process")
    assert caught.value.key == "tenant-1"
    # While another process holds the credential's refresh lock (across its token request),
    # the database stays writable: for other credentials, and for a raw write transaction.
    await store.put("tenant-2", token(2))
    assert await store.replace("tenant-1", token(3), expected_refresh_token="refresh-1")
    with contextlib.closing(sqlite3.connect(path, timeout=0)) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")

    holder.send_signal(signal.SIGKILL)  # the kernel drops the lock at once
    await anyio.to_thread.run_sync(holder.wait)
    started = time.monotonic()
    async with store.lock("tenant-1", timeout=5):
        pass
    assert time.monotonic() - started < 1
    await store.aclose()


async def test_a_long_write_transaction_elsewhere_times_out_without_blocking_the_loop(
    path: Path,
) -> None:
    store = SQLiteStore(path, busy_timeout=0.4)
    await store.put("k", token(1))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process writing for a long time
        task = asyncio.create_task(ticker())
        try:
            assert await store.get("k") == token(1)  # WAL: readers never wait for writers
            with pytest.raises(StoreLockTimeoutError) as caught:
                await store.put("k", token(2))
        finally:
            task.cancel()
        other.execute("ROLLBACK")
    assert caught.value.key == "k"
    assert ticks > 20
    await store.put("k", token(2))
    assert await store.get("k") == token(2)
    await store.aclose()


async def test_aclose_closes_connections_and_the_store_can_be_used_again(path: Path) -> None:
    store = SQLiteStore(path)
    await asyncio.gather(*(store.put(f"k{n}", token(n)) for n in range(10)))
    await store.aclose()
    assert await store.get("k3") == token(3)
    await store.aclose()


def test_repr_path_and_arguments(tmp_path: Path) -> None:
    link = tmp_path / "link.sqlite"
    link.symlink_to(tmp_path / "real.sqlite")
    store = SQLiteStore(link)
    assert store.path == str(tmp_path / "real.sqlite")
    assert repr(store) == f"SQLiteStore(path={str(tmp_path / 'real.sqlite')!r})"
    for kwargs in ({"busy_timeout": 0}, {"poll_interval": -1.0}, {"max_connections": 0}):
        with pytest.raises(ConfigurationError):
            SQLiteStore(link, **kwargs)  # type: ignore[arg-type]


async def test_a_key_that_is_not_valid_unicode_is_a_store_error(path: Path) -> None:
    store = SQLiteStore(path)
    with pytest.raises(StoreError) as caught:
        await store.put("bad\udc80key", Token(access_token="a", expires_at=1.0))
    assert "Unicode" in str(caught.value)
    await store.aclose()
