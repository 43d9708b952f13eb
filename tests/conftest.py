"""Shared fixtures: a fake token server per test, a real redis-server for the whole session, a
fresh Redis key prefix per test, a real OpenID provider (npm oidc-provider) for the session."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer
from backends import PERSISTING, Backend, open_backend
from redis_server import RedisClusterServers, RedisServer

from asynctoken.testing import FakeOAuthServer

if TYPE_CHECKING:
    from oidc_server import OIDCServer


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeOAuthServer]:
    """A fake Keliweb token server on loopback, one-hour tokens (modules may override it)."""
    async with FakeOAuthServer("keliweb", expires_in=3600) as srv:
        yield srv


@pytest_asyncio.fixture
async def app_server() -> AsyncIterator[Callable[[web.Application], Awaitable[TestServer]]]:
    """Start small aiohttp apps on 127.0.0.1; all are closed at teardown."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        test_server = TestServer(app, host="127.0.0.1")
        await test_server.start_server()
        servers.append(test_server)
        return test_server

    yield start
    for test_server in servers:
        await test_server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server on 127.0.0.1 and a random port, for the whole session.

    Synchronous on purpose: pytest-asyncio gives each test its own event loop, and a client bound
    to one loop cannot be used from another, so tests create their own clients from the URL.
    Never skipped: if no redis-server can be found the tests fail and say how to get one.
    """
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards.

    Synchronous (a blocking client for the cleanup) so that async fixtures can request it.
    """
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        names = list(client.scan_iter(match=prefix + "*", count=1000))
        for start in range(0, len(names), 1000):
            client.delete(*names[start : start + 1000])


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A real three-primary Redis Cluster on loopback, for the whole session (never skipped)."""
    cluster = RedisClusterServers()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_prefix(redis_cluster: RedisClusterServers) -> Iterator[str]:
    """A key prefix no other test uses on the cluster; its keys are deleted afterwards."""
    from redis.cluster import RedisCluster

    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    with RedisCluster.from_url(redis_cluster.url) as client:
        for name in list(client.scan_iter(match=prefix + "*", count=1000)):
            client.delete(name)


@pytest.fixture(params=PERSISTING)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each persisting store in turn (see tests/backends.py)."""
    return open_backend(request.param, request)


@pytest.fixture(scope="session")
def oidc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OIDCServer]:
    """A certified OpenID provider (npm ``oidc-provider``, pinned in tests/oidc/) on loopback.

    Installed with ``npm ci`` into a cache on first use; never skipped: without node/npm the
    tests fail and say what is missing. See tests/oidc_server.py for its clients and endpoints.
    """
    # Imported here: it needs the ``jwt`` extra, which sessions that never use it lack.
    from oidc_server import ClientKeys, OIDCServer

    directory = tmp_path_factory.mktemp("oidc")
    server = OIDCServer(directory, ClientKeys.generate(directory / "keys"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
