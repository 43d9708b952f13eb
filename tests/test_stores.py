"""The TokenStore contract, run against every store: memory, a real file, a real redis-server,
each persisting one also with its records sealed by a cipher."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from backends import PERSISTING, cipher, open_backend

import asynctoken.stores
from asynctoken import StoreError, StoreLockTimeoutError, Token
from asynctoken.stores import MemoryStore, TokenStore


async def collect(keys: AsyncIterator[str]) -> list[str]:
    """Every key of an iteration (``[k async for k in store.keys()]``)."""
    return [key async for key in keys]


def token(n: int, refresh: str | None = "default") -> Token:
    return Token(
        access_token=f"access-{n}",
        expires_at=1_700_000_000.5 + n,
        refresh_token=f"refresh-{n}" if refresh == "default" else refresh,
        scope="read write",
        extra={"company_id": 7, "nested": {"a": [1, 2.5, None]}},
        issued_at=1_699_999_000.25,
        provider="oauth2",
    )


@pytest.fixture(params=["memory", *PERSISTING, *(f"{name}+cipher" for name in PERSISTING)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TokenStore]:
    name, _, sealed = request.param.partition("+")
    if name == "memory":
        instance: TokenStore = MemoryStore()
    else:
        instance = open_backend(name, request).open(cipher() if sealed else None)
    yield instance
    await instance.aclose()


def test_exported_members() -> None:
    names = {"FileStore", "MemoryStore", "RedisStore", "SQLiteStore", "TokenStore"}
    assert asynctoken.stores.__all__ == sorted(names)
    for name in names:
        assert getattr(asynctoken.stores, name).__name__ == name
    assert names <= set(dir(asynctoken.stores))


def test_redis_store_without_redis_installed_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import asynctoken, asynctoken.stores\n"
        "from asynctoken.stores import FileStore, MemoryStore\n"
        "try:\n"
        "    from asynctoken.stores import RedisStore\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert "pip install 'asynctoken[redis]'" in result.stdout


async def test_implements_protocol(store: TokenStore) -> None:
    assert isinstance(store, TokenStore)


async def test_get_missing_is_none(store: TokenStore) -> None:
    assert await store.get("nobody") is None


async def test_put_get_round_trip(store: TokenStore) -> None:
    await store.put("k", token(1))
    assert await store.get("k") == token(1)
    await store.put("k", token(2))  # put overwrites
    assert await store.get("k") == token(2)


async def test_round_trip_of_unusual_keys_and_values(store: TokenStore) -> None:
    odd = Token(access_token="", expires_at=0, token_type="mac", extra={"ü": "☃"})
    for key in ["a:b*c?[d]\\e", "ünïcødé ☃", "x" * 300, "spaces and\nnewline"]:
        await store.put(key, odd)
        assert await store.get(key) == odd


async def test_put_if_absent(store: TokenStore) -> None:
    assert await store.put_if_absent("k", token(1)) is True
    assert await store.put_if_absent("k", token(2)) is False
    assert await store.get("k") == token(1)


async def test_replace_with_matching_refresh_token(store: TokenStore) -> None:
    await store.put("k", token(1))
    assert await store.replace("k", token(2), expected_refresh_token="refresh-1") is True
    assert await store.get("k") == token(2)


async def test_replace_rejects_stale_refresh_token(store: TokenStore) -> None:
    await store.put("k", token(1))
    assert await store.replace("k", token(2), expected_refresh_token="refresh-1") is True
    # A writer that refreshed from the old refresh token must not overwrite the rotated one.
    assert await store.replace("k", token(3), expected_refresh_token="refresh-1") is False
    assert await store.get("k") == token(2)


async def test_replace_rejects_missing_record(store: TokenStore) -> None:
    assert await store.replace("k", token(1), expected_refresh_token="refresh-0") is False
    assert await store.replace("k", token(1), expected_refresh_token=None) is False
    assert await store.get("k") is None


async def test_replace_with_none_refresh_tokens(store: TokenStore) -> None:
    await store.put("k", token(1, refresh=None))
    assert await store.replace("k", token(2), expected_refresh_token="refresh-1") is False
    assert await store.replace("k", token(2), expected_refresh_token="") is False
    assert await store.get("k") == token(1, refresh=None)
    assert await store.replace("k", token(2), expected_refresh_token=None) is True
    assert await store.get("k") == token(2)
    assert await store.replace("k", token(3), expected_refresh_token=None) is False
    assert await store.replace("k", token(4, None), expected_refresh_token="refresh-2") is True
    assert await store.get("k") == token(4, None)


async def test_replace_empty_string_is_not_none(store: TokenStore) -> None:
    await store.put("k", token(1, refresh=""))
    assert await store.replace("k", token(2), expected_refresh_token=None) is False
    assert await store.replace("k", token(2), expected_refresh_token="") is True


async def test_delete(store: TokenStore) -> None:
    await store.put("k", token(1))
    await store.put("other", token(2))
    assert await store.delete("k") is True
    assert await store.delete("k") is False
    assert await store.get("k") is None
    assert await store.get("other") == token(2)
    assert await store.put_if_absent("k", token(3)) is True


async def test_keys(store: TokenStore) -> None:
    assert await collect(store.keys()) == []
    expected = {f"tenant-{n}" for n in range(25)} | {"a*b", "ünï"}
    for key in expected:
        await store.put(key, token(1))
    assert set(await collect(store.keys())) == expected
    await store.delete("tenant-3")
    assert set(await collect(store.keys())) == expected - {"tenant-3"}


async def test_lock_timeout(store: TokenStore) -> None:
    async with store.lock("k", timeout=1):
        with pytest.raises(StoreLockTimeoutError) as caught:
            async with store.lock("k", timeout=0.1):
                pytest.fail("entered a lock that is held")
    assert caught.value.key == "k"
    assert caught.value.location
    assert isinstance(caught.value, StoreError)
    async with store.lock("k", timeout=1):  # free again after release
        pass


async def test_lock_blocks_until_holder_releases(store: TokenStore) -> None:
    holder_in = asyncio.Event()
    holder_may_leave = asyncio.Event()
    holder_left = asyncio.Event()

    async def holder() -> None:
        async with store.lock("k", timeout=5):
            holder_in.set()
            await holder_may_leave.wait()
            holder_left.set()

    async def waiter() -> None:
        async with store.lock("k", timeout=5):
            assert holder_left.is_set(), "two holders at once"

    holder_task = asyncio.create_task(holder())
    await holder_in.wait()
    # While held, nobody else gets in...
    with pytest.raises(StoreLockTimeoutError):
        async with store.lock("k", timeout=0.05):
            pass
    # ...and a waiter that started while it was held enters only after release.
    waiter_task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    holder_may_leave.set()
    await asyncio.gather(holder_task, waiter_task)


async def test_lock_excludes_concurrent_holders(store: TokenStore) -> None:
    inside = 0
    log: list[str] = []

    async def worker(n: int) -> None:
        nonlocal inside
        async with store.lock("k", timeout=10):
            inside += 1
            log.append(f"in-{n}")
            assert inside == 1
            await store.put("k", token(n))  # real I/O while holding
            await asyncio.sleep(0)
            log.append(f"out-{n}")
            inside -= 1

    await asyncio.gather(*(worker(n) for n in range(6)))
    assert len(log) == 12
    for i in range(0, 12, 2):  # strictly in, out, in, out
        assert log[i].startswith("in-")
        assert log[i + 1] == "out-" + log[i][3:]


async def test_locks_of_different_keys_are_independent(store: TokenStore) -> None:
    async with store.lock("a", timeout=1), store.lock("b", timeout=0.5):
        pass


async def test_lock_released_when_body_raises(store: TokenStore) -> None:
    with pytest.raises(RuntimeError):
        async with store.lock("k", timeout=1):
            raise RuntimeError("boom")
    async with store.lock("k", timeout=0.5):
        pass


async def test_cancelled_waiter_does_not_keep_the_lock(store: TokenStore) -> None:
    entered = asyncio.Event()

    async def waiter() -> None:
        async with store.lock("k", timeout=10):
            entered.set()

    async with store.lock("k", timeout=1):
        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not entered.is_set()
    async with store.lock("k", timeout=1):
        pass
