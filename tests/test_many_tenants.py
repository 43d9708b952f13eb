"""Many tenants: credentials in Redis, a bounded cache per process, lazy providers, isolation."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
import redis.asyncio
from support import keliweb

from asynctoken import (
    InvalidGrantError,
    KeliwebProvider,
    RedisStore,
    RetryPolicy,
    Token,
    TokenManager,
)
from asynctoken.testing import FakeOAuthServer

FAST_RETRY = RetryPolicy(attempts=3, deadline=5.0, initial_delay=0.01, max_delay=0.02)
TENANTS = 100_000


class CountingRedisStore(RedisStore):
    """A RedisStore that counts reads (round trips for ``get``)."""

    reads = 0

    async def get(self, key: str) -> Token | None:
        self.reads += 1
        return await super().get(key)


async def bulk_load(store: RedisStore, tokens: dict[str, Token], redis_url: str) -> None:
    """Write many records in pipelined batches, in the store's own record format."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        items = list(tokens.items())
        for start in range(0, len(items), 10_000):
            pipe = client.pipeline(transaction=False)
            for key, token in items[start : start + 10_000]:
                pipe.set(store._cred(key), store._encode(key, token))
            await pipe.execute()
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_eviction_from_a_small_cache_costs_no_credential_and_no_request(
    server: FakeOAuthServer, redis_url: str, redis_prefix: str
) -> None:
    now = time.time()
    expired = {f"tenant-{i}" for i in range(0, TENANTS, 10_000)}  # 10 tenants need a refresh
    tokens = {}
    for i in range(TENANTS):
        key = f"tenant-{i}"
        refresh = server.issue_refresh_token() if key in expired else f"rt-{i}-" + "x" * 32
        tokens[key] = Token(
            access_token=f"at-{i}-" + "y" * 32,
            expires_at=now - 10 if key in expired else now + 3600,
            issued_at=now - 3610 if key in expired else now,
            refresh_token=refresh,
            provider="keliweb",
        )
    store = CountingRedisStore(redis_url, prefix=redis_prefix)
    await bulk_load(store, tokens, redis_url)
    provider = keliweb(server)
    factory_calls = 0

    def factory(key: str) -> KeliwebProvider:
        nonlocal factory_calls
        factory_calls += 1
        return provider

    rng = random.Random(7)
    hot = [f"tenant-{i}" for i in rng.sample(range(TENANTS), 3_000)] + sorted(expired)
    async with TokenManager(
        store=store, provider_factory=factory, cache_size=500, retry=FAST_RETRY
    ) as tm:
        for _ in range(2):  # the second round finds most tenants evicted again
            rng.shuffle(hot)
            for start in range(0, len(hot), 500):
                batch = hot[start : start + 500]
                got = await asyncio.gather(*(tm.get_token(k) for k in batch))
                for key, token in zip(batch, got, strict=True):
                    if key in expired:
                        assert server.is_valid_access_token(token.access_token)
                    else:
                        assert token.access_token == tokens[key].access_token
        assert len(tm._hot) <= 500
    # Only the tenants whose token really expired cost a token request, once each.
    assert server.token_requests == len(expired)
    assert server.reuse_detected == 0
    # Every re-read after an eviction was one store read, never a refresh.
    assert store.reads <= 2 * len(hot) + 2 * len(expired)
    # No credential was lost: every key is still there, rotated ones updated.
    check = RedisStore(redis_url, prefix=redis_prefix)
    try:
        count = 0
        async for _ in check.keys():
            count += 1
        assert count == TENANTS
        for key in expired:
            stored = await check.get(key)
            assert stored is not None
            assert stored.refresh_token is not None
            assert server.is_valid_refresh_token(stored.refresh_token)
        sample = await check.get("tenant-1")
        assert sample == tokens["tenant-1"]
    finally:
        await check.aclose()


async def test_cold_tenant_costs_one_store_read_shared_by_concurrent_callers(
    server: FakeOAuthServer, redis_url: str, redis_prefix: str
) -> None:
    store = CountingRedisStore(redis_url, prefix=redis_prefix)
    token = Token(
        access_token="at-cold-" + "z" * 32,
        expires_at=time.time() + 3600,
        issued_at=time.time(),
        refresh_token="rt-cold-" + "z" * 32,
    )
    await store.put("cold", token)
    async with TokenManager(store=store, provider_factory=lambda _: keliweb(server)) as tm:
        got = await asyncio.gather(*(tm.get_token("cold") for _ in range(200)))
    assert {t.access_token for t in got} == {token.access_token}
    assert store.reads == 1
    assert server.token_requests == 0


async def test_one_tenant_slow_or_dead_never_blocks_another(fake_oauth_server: Any) -> None:
    slow = await fake_oauth_server("keliweb")
    healthy = await fake_oauth_server("keliweb")
    providers = {"slow": keliweb(slow), "dead": keliweb(healthy)}
    providers["ok"] = keliweb(healthy)
    async with TokenManager(provider_factory=providers.get, retry=FAST_RETRY) as tm:
        await tm.add("slow", providers["slow"], refresh_token=slow.issue_refresh_token())
        await tm.add("dead", providers["dead"], refresh_token="def50200" + "0" * 40)
        await tm.add("ok", providers["ok"], refresh_token=healthy.issue_refresh_token())
        slow.hold()
        slow_call = asyncio.create_task(tm.get_token("slow"))
        await slow.wait_for_token_requests(1)
        with pytest.raises(InvalidGrantError):
            await tm.get_token("dead")
        token = await tm.get_token("ok")  # neither the hanging nor the dead tenant is in the way
        assert healthy.is_valid_access_token(token.access_token)
        assert not slow_call.done()
        slow.release()
        await slow_call


async def test_offboarding_removes_one_tenant(
    server: FakeOAuthServer, redis_url: str, redis_prefix: str
) -> None:
    store = RedisStore(redis_url, prefix=redis_prefix)
    async with TokenManager(store=store, provider_factory=lambda _: keliweb(server)) as tm:
        for i in range(3):
            await tm.add(f"t{i}", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("t1")
        assert await tm.remove("t1")
        keys = sorted([k async for k in store.keys()])  # noqa: SIM118 - an async iterator
    assert keys == ["t0", "t2"]
