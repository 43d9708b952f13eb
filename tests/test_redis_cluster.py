"""RedisStore on a real three-primary Redis Cluster (started by the fixture): one hash slot per
credential, listing across every primary, and a primary restarting mid-run. The shared store
contract, the multi-process and kill -9 tests run on the cluster too (backend "cluster")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from redis.asyncio import RedisCluster
from redis_server import RedisClusterServers
from support import FAST_RETRY, collect, keliweb, token

from asynctoken import ConfigurationError, RedisStore, StoreError, Token, TokenManager
from asynctoken.testing import FakeOAuthServer


@pytest.fixture
async def client(redis_cluster: RedisClusterServers) -> AsyncIterator[RedisCluster]:
    raw = RedisCluster.from_url(redis_cluster.url)
    yield raw
    await raw.aclose()


def owner(cluster: RedisClusterServers, slot: int) -> int:
    """The index of the primary that serves ``slot`` (slots were assigned in equal ranges)."""
    share = cluster.SLOTS // len(cluster.nodes)
    return min(slot // share, len(cluster.nodes) - 1)


async def test_a_credentials_keys_share_a_slot_and_keys_scans_every_primary(
    redis_cluster: RedisClusterServers, client: RedisCluster, cluster_prefix: str
) -> None:
    store = RedisStore(client, prefix=cluster_prefix)
    names = [f"tenant-{n}" for n in range(30)]
    for name in names:
        await store.put(name, token(1))
    slots = set()
    async with store.lock("tenant-7", timeout=1):
        cred, lock = f"{cluster_prefix}cred:{{tenant-7}}", f"{cluster_prefix}lock:{{tenant-7}}"
        assert await client.exists(cred, lock) == 2
        assert await client.cluster_keyslot(cred) == await client.cluster_keyslot(lock)
    for name in names:
        slots.add(await client.cluster_keyslot(f"{cluster_prefix}cred:{{{name}}}"))
    assert len({owner(redis_cluster, slot) for slot in slots}) == 3  # spread over every primary
    assert sorted(await collect(store.keys())) == sorted(names)
    await store.aclose()
    assert await client.ping()  # a client passed in is not closed


def test_a_prefix_with_braces_is_refused(redis_cluster: RedisClusterServers) -> None:
    with pytest.raises(ConfigurationError, match="braces"):
        RedisStore(redis_cluster.url, prefix="app:{x}:", cluster=True)


async def test_a_primary_restarting_mid_run_fails_only_its_credentials_and_loses_nothing(
    server: FakeOAuthServer,
) -> None:
    cluster = RedisClusterServers()  # a cluster of its own: one of its nodes goes down
    cluster.start()
    try:
        provider = keliweb(server)
        names = [f"tenant-{n}" for n in range(12)]
        async with redis.asyncio.RedisCluster.from_url(cluster.url) as raw:
            homes = {
                n: owner(cluster, await raw.cluster_keyslot(f"asynctoken:cred:{{{n}}}"))
                for n in names
            }
        victim = cluster.nodes[homes["tenant-0"]]
        store = RedisStore(cluster.url, cluster=True, socket_timeout=1.0, connect_timeout=1.0)
        async with TokenManager(store=store, retry=FAST_RETRY) as tm:
            for name in names:
                seed = Token(
                    access_token="", expires_at=0, refresh_token=server.issue_refresh_token()
                )
                await store.put(name, seed)
                await tm.add(name, provider)
            await asyncio.gather(*(tm.refresh(name) for name in names))
            victim.stop()
            elsewhere = [n for n in names if homes[n] != homes["tenant-0"]]
            at_home = [n for n in names if homes[n] == homes["tenant-0"]]
            assert elsewhere
            for name in elsewhere:  # the other primaries keep serving
                await tm.refresh(name)
            with pytest.raises(StoreError):
                await tm.refresh("tenant-0")
            victim.start()  # same port, its append-only file and cluster configuration
            cluster.wait_healthy()
            for name in at_home + elsewhere:
                await tm.refresh(name)
        assert server.reuse_detected == 0
        check = RedisStore(cluster.url, cluster=True)
        try:
            for name in names:
                stored = await check.get(name)
                assert stored is not None
                assert server.is_valid_refresh_token(stored.refresh_token or "")
        finally:
            await check.aclose()
    finally:
        cluster.stop()
