"""RedisStore against real redis-server processes: atomicity, leases, SCAN, outages."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
import redis.asyncio
from redis_server import RedisServer, free_port
from support import collect, token

from asynctoken import ConfigurationError, StoreError, StoreLockTimeoutError
from asynctoken.stores import RedisStore

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-very-secret"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A raw client, to look at what the store wrote."""
    raw = redis.asyncio.Redis.from_url(redis_url)
    yield raw
    await raw.aclose()


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    instance = RedisStore(redis_url, prefix=redis_prefix, poll_interval=0.01)
    yield instance
    await instance.aclose()


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on."""
    return free_port()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def command_calls(client: redis.asyncio.Redis) -> dict[str, int]:
    stats: dict[str, Any] = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


# -- format and round trips ---------------------------------------------------------------------


async def test_record_format(store: RedisStore, client: redis.asyncio.Redis) -> None:
    await store.put("tenant/1", token(1))
    raw = await client.get(f"{store.prefix}cred:tenant/1")
    assert raw is not None
    assert json.loads(raw) == {"v": 1, **token(1).to_dict()}


async def test_each_per_key_operation_is_one_command(
    store: RedisStore, client: redis.asyncio.Redis
) -> None:
    await store.put("k", token(0))
    await store.replace("k", token(0), expected_refresh_token="refresh-0")  # loads the script
    before = await command_calls(client)
    for n in range(1, 21):
        await store.get("k")
        await store.replace("k", token(n), expected_refresh_token=f"refresh-{n - 1}")
        await store.put_if_absent("k", token(n))
    after = await command_calls(client)
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert delta["evalsha"] == 20  # replace: one script call (its GET and SET run in the server)
    # get, the script's GET, and put_if_absent of an existing key reads it (a retried SET NX
    # of this very record counts as stored).
    assert delta["get"] == 20 + 20 + 20
    assert delta["set"] == 20 + 20  # put_if_absent's SET NX and the script's SET
    assert {name for name, calls in delta.items() if calls} <= {"evalsha", "get", "set", "info"}


async def test_bursts_beyond_the_pool_size_wait_for_a_connection(
    redis_url: str, redis_prefix: str
) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix, max_connections=4)
    try:
        await store.put("k", token(1))
        results = await asyncio.gather(*(store.get("k") for _ in range(300)))
        assert results == [token(1)] * 300
    finally:
        await store.aclose()


async def test_decode_responses_client_is_supported_and_not_closed(
    redis_url: str, redis_prefix: str
) -> None:
    raw = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = RedisStore(raw, prefix=redis_prefix)
        assert repr(store) == f"RedisStore(url={redis_url!r}, prefix={redis_prefix!r})"
        await store.put("k", token(1))
        assert await store.get("k") == token(1)
        assert await store.replace("k", token(2), expected_refresh_token="refresh-1")
        assert await collect(store.keys()) == ["k"]
        async with store.lock("k", timeout=1):
            pass
        await store.aclose()
        assert await raw.ping()  # a client passed in stays open
    finally:
        await raw.aclose()


# -- compare-and-swap ---------------------------------------------------------------------------


async def test_concurrent_replace_with_the_same_expected_value_has_one_winner(
    redis_url: str, redis_prefix: str
) -> None:
    stores = [RedisStore(redis_url, prefix=redis_prefix) for _ in range(3)]
    try:
        await stores[0].put("k", token(0))
        for round_ in range(1, 4):
            expected = f"refresh-{(round_ - 1) * 100}"
            contenders = [token(round_ * 100 + i) for i in range(60)]
            results = await asyncio.gather(
                *(
                    stores[i % 3].replace("k", candidate, expected_refresh_token=expected)
                    for i, candidate in enumerate(contenders)
                )
            )
            assert results.count(True) == 1
            winner = contenders[results.index(True)]
            assert await stores[1].get("k") == winner
            # Make the next round's expected value the winner's refresh token.
            await stores[0].put("k", token(round_ * 100))
    finally:
        for instance in stores:
            await instance.aclose()


async def test_replace_retried_after_success_reports_success(store: RedisStore) -> None:
    await store.put("k", token(1))
    assert await store.replace("k", token(2), expected_refresh_token="refresh-1") is True
    # The same call again (its reply was lost, say) is harmless and says "stored".
    assert await store.replace("k", token(2), expected_refresh_token="refresh-1") is True
    assert await store.replace("k", token(3), expected_refresh_token="refresh-1") is False
    assert await store.get("k") == token(2)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"v": 2, "access_token": "a", "expires_at": 1}', "upgrade asynctoken"),
        (b'{"v": 1, "expires_at": 1, "refresh_token": "SECRET-RT-123456"}', "access_token"),
    ],
)
async def test_bad_record_is_an_error_naming_the_key(
    store: RedisStore, client: redis.asyncio.Redis, raw: bytes, message: str
) -> None:
    await client.set(f"{store.prefix}cred:k", raw)
    with pytest.raises(StoreError, match=message) as caught:
        await store.get("k")
    assert caught.value.key == "k"
    assert "SECRET-RT" not in str(caught.value)
    await store.put("other", token(1))  # other credentials are unaffected
    assert await store.get("other") == token(1)


async def test_replace_over_a_record_that_is_not_json(
    store: RedisStore, client: redis.asyncio.Redis
) -> None:
    await client.set(f"{store.prefix}cred:k", b"not json")
    with pytest.raises(StoreError, match="not a JSON object") as caught:
        await store.replace("k", token(1), expected_refresh_token="x")
    assert caught.value.key == "k"
    assert await client.get(f"{store.prefix}cred:k") == b"not json"


# -- locks --------------------------------------------------------------------------------------

HOLDER = """
    import asyncio, sys
    from asynctoken.stores import RedisStore

    async def main():
        store = RedisStore(sys.argv[1], prefix=sys.argv[2], lock_ttl=float(sys.argv[3]))
        async with store.lock("k", timeout=5):
            print("locked", flush=True)
            await asyncio.sleep(120)

    asyncio.run(main())
"""


async def test_lease_of_a_killed_holder_expires(
    redis_url: str, redis_prefix: str, store: RedisStore
) -> None:
    ttl = 0.6
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), redis_url, redis_prefix, str(ttl)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout is not None
        line = await anyio.to_thread.run_sync(holder.stdout.readline)
        locked_at = time.monotonic()
        assert line == "locked\n", holder.communicate()[1]
        with pytest.raises(StoreLockTimeoutError) as caught:
            async with store.lock("k", timeout=0.05):
                pytest.fail("entered a lock held by another process")
        assert caught.value.key == "k"
        holder.send_signal(signal.SIGKILL)  # a crash: nobody releases the lock
        await anyio.to_thread.run_sync(holder.wait)
        async with store.lock("k", timeout=5):
            waited = time.monotonic() - locked_at
        assert ttl - 0.1 < waited < ttl + 1.0
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=10)


async def test_lease_lost_before_release_is_a_warning_not_an_error(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    slow = RedisStore(redis_url, prefix=redis_prefix, lock_ttl=5, poll_interval=0.01)
    other = RedisStore(redis_url, prefix=redis_prefix, poll_interval=0.01)
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        other_in = asyncio.Event()
        slow_out = asyncio.Event()

        async def take_over() -> None:
            async with other.lock("k", timeout=5):  # succeeds once slow's lease is gone
                other_in.set()
                await slow_out.wait()
                # slow's release must not have deleted our lock
                with pytest.raises(StoreLockTimeoutError):
                    async with slow.lock("k", timeout=0.05):
                        pass

        with caplog.at_level(logging.WARNING, logger="asynctoken"):
            async with slow.lock("k", timeout=1):
                await raw.delete(redis_prefix + "lock:k")  # the lease is lost (failover, ...)
                task = asyncio.create_task(take_over())
                await other_in.wait()
            slow_out.set()
            await task
        assert "expired before it was released" in caplog.text
    finally:
        await raw.aclose()
        await slow.aclose()
        await other.aclose()


async def test_a_held_lease_is_renewed(redis_url: str, redis_prefix: str) -> None:
    holder = RedisStore(redis_url, prefix=redis_prefix, lock_ttl=0.6, poll_interval=0.01)
    other = RedisStore(redis_url, prefix=redis_prefix, poll_interval=0.01)
    try:
        async with holder.lock("k", timeout=1):
            # Held for three lease lengths: without renewal it would have expired.
            with pytest.raises(StoreLockTimeoutError):
                async with other.lock("k", timeout=1.8):
                    pass
        async with other.lock("k", timeout=1.0):  # released: free at once
            pass
    finally:
        await holder.aclose()
        await other.aclose()


async def test_lock_keys_are_not_credentials(store: RedisStore) -> None:
    await store.put("a", token(1))
    async with store.lock("a", timeout=1), store.lock("b", timeout=1):
        assert await collect(store.keys()) == ["a"]
        assert await store.get("b") is None


# -- SCAN ---------------------------------------------------------------------------------------


async def test_keys_scans_many_keys_and_only_its_own_prefix(
    redis_url: str, redis_prefix: str, client: redis.asyncio.Redis
) -> None:
    # Glob characters in the prefix must be matched literally: unescaped, "t[1]*:" would also
    # match the neighbour "t1x:".
    mine = RedisStore(redis_url, prefix=redis_prefix + "t[1]*:")
    neighbour = RedisStore(redis_url, prefix=redis_prefix + "t1x:")
    try:
        expected = {f"tenant-{n}" for n in range(5000)}
        keys = sorted(expected)
        for start in range(0, len(keys), 250):
            await asyncio.gather(*(mine.put(key, token(1)) for key in keys[start : start + 250]))
        await asyncio.gather(*(neighbour.put(f"x-{n}", token(1)) for n in range(100)))
        await client.set(redis_prefix + "t[1]*:unrelated", b"1")
        async with mine.lock("held", timeout=1):
            before = await command_calls(client)
            found = await collect(mine.keys())
            after = await command_calls(client)
        assert set(found) == expected
        assert set(await collect(neighbour.keys())) == {f"x-{n}" for n in range(100)}
        assert after.get("keys", 0) == before.get("keys", 0)  # never KEYS
        assert after["scan"] - before.get("scan", 0) >= 5  # in batches
    finally:
        await mine.aclose()
        await neighbour.aclose()


async def test_keys_streams_batches(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix, scan_count=10)
    try:
        await asyncio.gather(*(store.put(f"k{n}", token(1)) for n in range(100)))
        seen = set()
        async for key in store.keys():
            seen.add(key)
            await store.delete(key)  # safe to modify while iterating
        assert seen == {f"k{n}" for n in range(100)}
    finally:
        await store.aclose()


# -- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    [
        "redis://:{pw}@127.0.0.1:{port}/0",
        "redis://alice:{pw}@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password={pw}",
    ],
)
async def test_unreachable_redis_fails_fast_without_the_password(
    closed_port: int, template: str
) -> None:
    store = RedisStore(template.format(pw=PASSWORD, port=closed_port))
    assert PASSWORD not in repr(store)
    assert "***" in repr(store)
    operations = [
        store.get("k"),
        store.put("k", token(1)),
        store.put_if_absent("k", token(1)),
        store.replace("k", token(1), expected_refresh_token=None),
        store.delete("k"),
    ]
    started = time.monotonic()
    for operation in operations:
        with pytest.raises(StoreError) as caught:
            await operation
        error = caught.value
        assert type(error) is StoreError
        assert error.location == store.location
        assert f"127.0.0.1:{closed_port}" in str(error)
        for text in (str(error), error.location, repr(error.__cause__)):
            assert PASSWORD not in text
    with pytest.raises(StoreError):
        _ = await collect(store.keys())
    with pytest.raises(StoreError) as caught:
        async with store.lock("k", timeout=5):
            pass
    assert not isinstance(caught.value, StoreLockTimeoutError)  # an outage, not contention
    assert time.monotonic() - started < 3
    await store.aclose()


async def test_wrong_password_is_reported_without_it() -> None:
    server = RedisServer(extra_args=["--requirepass", "the-right-one"])
    server.start()
    try:
        good = RedisStore(f"redis://:the-right-one@127.0.0.1:{server.port}/0", prefix="p:")
        await good.put("k", token(1))
        assert await good.get("k") == token(1)
        await good.aclose()
        bad = RedisStore(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", prefix="p:")
        with pytest.raises(StoreError) as caught:
            await bad.get("k")
        assert PASSWORD not in str(caught.value)
        assert "***" in str(caught.value)
        await bad.aclose()
    finally:
        server.stop()


async def test_unresponsive_redis_times_out(silent_port: int) -> None:
    store = RedisStore(f"redis://127.0.0.1:{silent_port}/0", socket_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(StoreError, match="Timeout"):
        await store.get("k")
    assert time.monotonic() - started < 2
    await store.aclose()


async def test_outage_and_recovery(tmp_path: Path) -> None:
    server = RedisServer(directory=tmp_path, persistent=True)
    server.start()
    store = RedisStore(server.url, prefix="p:", socket_timeout=1, connect_timeout=1)
    try:
        await store.put("k", token(1))
        server.stop()  # Redis goes away with pooled connections open
        for _ in range(3):
            with pytest.raises(StoreError, match=f"127.0.0.1:{server.port}"):
                await store.get("k")
        with pytest.raises(StoreError):
            await store.replace("k", token(2), expected_refresh_token="refresh-1")
        server.start()  # and comes back on the same port with its data
        assert await store.get("k") == token(1)  # nothing lost, the first call succeeds
        assert await store.replace("k", token(2), expected_refresh_token="refresh-1") is True
        async with store.lock("k", timeout=1):
            assert await store.get("k") == token(2)
    finally:
        await store.aclose()
        server.stop()


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"lock_ttl": 0.0}, {"poll_interval": 0.0}, {"scan_count": 0}])
def test_invalid_arguments(redis_url: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore(redis_url, **kwargs)


def test_invalid_url_is_reported_without_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisStore(f"http://:{PASSWORD}@example.com/0")
    assert PASSWORD not in str(caught.value)


async def test_repr(redis_url: str) -> None:
    store = RedisStore(redis_url, prefix="app:")
    assert repr(store) == f"RedisStore(url={redis_url!r}, prefix='app:')"
    await store.aclose()
