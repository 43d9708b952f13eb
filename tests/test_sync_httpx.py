"""httpx.Client with asynctoken.httpx.TokenAuth on a SyncTokenManager: the sync flow of the
httpx adapter, against the fake server and a small app of our own, from many threads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from aiohttp import web
from sync_support import Apps, ThreadedServer, apps, sync_server

from asynctoken.httpx import TokenAuth
from asynctoken.sync import SyncTokenManager

__all__ = ["apps", "sync_server"]  # fixtures, imported for pytest

KEY = "keliweb"
THREADS = 16


@pytest.fixture
def tm(sync_server: ThreadedServer) -> Iterator[SyncTokenManager]:
    with SyncTokenManager(invalidate_interval=0) as manager:
        manager.add(KEY, sync_server.provider(), refresh_token=sync_server.seed())
        yield manager


def test_httpx_client_gets_the_token_and_a_new_one_after_a_401(
    sync_server: ThreadedServer, tm: SyncTokenManager
) -> None:
    with httpx.Client(auth=TokenAuth(tm, KEY)) as client:
        assert client.get(sync_server.server.api_url).status_code == 200
        old = tm.get_token(KEY)
        sync_server.on(sync_server.server.expire_all_access_tokens)
        response = client.get(sync_server.server.api_url)
    assert response.status_code == 200
    assert response.request.headers["Authorization"] != old.authorization
    assert sync_server.token_requests == 2


def test_concurrent_401s_from_threads_cause_one_refresh(
    sync_server: ThreadedServer, apps: Apps, tm: SyncTokenManager
) -> None:
    old = tm.get_token(KEY)
    arrived: list[str] = []
    all_in = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization", "")
        arrived.append(sent)
        if sent != old.authorization:
            return web.Response(text="ok")
        if arrived.count(old.authorization) == THREADS:
            all_in.set()
        await all_in.wait()  # every thread's request is in flight with the old token
        return web.json_response(
            {"error": "invalid_token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    app = web.Application()
    app.router.add_get("/api", handler)
    api = apps.start(app) + "/api"
    with httpx.Client(auth=TokenAuth(tm, KEY)) as client, ThreadPoolExecutor(THREADS) as pool:
        statuses = list(pool.map(lambda _: client.get(api).status_code, range(THREADS)))
    assert statuses == [200] * THREADS
    assert sync_server.token_requests == 2  # sixteen 401s, one refresh
    new = tm.get_token(KEY).authorization
    assert sorted(arrived) == sorted([old.authorization] * THREADS + [new] * THREADS)
