"""The manager over a real Redis that goes away mid-run and comes back."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis_server import RedisServer

from asynctoken import KeliwebProvider, RedisStore, RetryPolicy, StoreError, TokenManager
from asynctoken.testing import FakeClock, FakeOAuthServer


async def test_redis_outage_spares_valid_tokens_and_recovers(tmp_path: Path) -> None:
    redis = RedisServer(directory=tmp_path, persistent=True)
    redis.start()
    clock = FakeClock()
    try:
        async with FakeOAuthServer("keliweb", expires_in=3600) as server:
            provider = KeliwebProvider(
                server.client_id, server.client_secret, token_url=server.token_url
            )
            store = RedisStore(redis.url, socket_timeout=1.0, connect_timeout=1.0)
            retry = RetryPolicy(attempts=2, deadline=2.0, initial_delay=0.01, max_delay=0.02)
            async with TokenManager(store=store, clock=clock, retry=retry) as tm:
                await tm.add("k", provider, refresh_token=server.issue_refresh_token())
                token = await tm.get_token("k")
                redis.stop()
                # A valid cached token needs no Redis at all, fresh or stale.
                assert await tm.get_token("k") is token
                clock.advance(3600 - 200)
                for _ in range(5):
                    assert await tm.get_token("k") is token
                clock.advance(200)
                with pytest.raises(StoreError) as info:
                    await tm.get_token("k")
                assert str(redis.port) in (info.value.location or "")
                redis.start()  # same port, data kept (append-only file)
                new = await tm.get_token("k")
            assert new.access_token != token.access_token
            assert server.reuse_detected == 0
            assert server.token_requests == 2
    finally:
        redis.stop()
