"""Tokens that expire while a request waits in the client's connection pool.

A deliberately slow client: ``httpx.AsyncClient`` with ONE connection in front of an upstream that
takes 40 ms per request, many requests queued, and short-lived tokens whose refresh is slow. The
auth step hands a request its token before the request waits for the connection, so a token
handed out near the end of its life would arrive expired. The manager hands out only tokens with
``Margins.in_flight`` seconds of life left (after the server's whole-second truncation): with a
queue shorter than that, the upstream never sees an expired token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import app_with, bearer, invalid_token, keliweb

from asynctoken import Margins, TokenManager
from asynctoken.httpx import TokenAuth
from asynctoken.testing import FakeOAuthServer

KEY = "keliweb"
LIFETIME = 4  # seconds; with the default margins handed out for its first 2 s
UPSTREAM_TIME = 0.04  # seconds the upstream takes per request (one connection: they queue)
REFRESH_TIME = 1.5  # seconds the token endpoint takes: the old token is used to its cutoff

AppServer = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def server() -> AsyncIterator[FakeOAuthServer]:
    # Expiry in whole seconds, as JWT issuers keep it: a token dies up to 1 s early.
    async with FakeOAuthServer("keliweb", expires_in=LIFETIME, whole_second_expiry=True) as srv:
        yield srv


async def run(
    server: FakeOAuthServer, app_server: AppServer, queued: int, margins: Margins | None = None
) -> tuple[list[int], int]:
    """``queued`` requests in flight at all times through one connection, from the first token
    until its successor is in use. Returns the statuses and how many requests reached the
    upstream with an expired token."""
    arrivals: list[tuple[str | None, bool]] = []
    first_token: list[str] = []
    second_used = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        token = bearer(request)
        valid = token is not None and server.is_valid_access_token(token)  # on arrival
        arrivals.append((token, valid))
        if token is not None and first_token and token != first_token[0] and valid:
            second_used.set()
        await asyncio.sleep(UPSTREAM_TIME)  # the slow upstream's work, not synchronisation
        return web.Response(text="ok") if valid else invalid_token()

    api = await app_server(app_with("/api", slow, "GET"))
    api_url = str(api.make_url("/api"))
    statuses: list[int] = []
    async with TokenManager(margins=margins) as tm:
        await tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
        first_token.append((await tm.get_token(KEY)).access_token)
        server.delay = REFRESH_TIME  # the background refresh takes its time
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        timeout = httpx.Timeout(30.0)
        async with httpx.AsyncClient(
            auth=TokenAuth(tm, KEY), limits=limits, timeout=timeout
        ) as client:

            async def caller() -> None:
                while not second_used.is_set():
                    statuses.append((await client.get(api_url)).status_code)

            await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(queued))), 60)
    assert server.token_requests == 2  # the first token and one refresh
    old = [valid for token, valid in arrivals if token == first_token[0]]
    assert len(old) > 2 * queued  # the old token was in use, queued, until its cutoff
    return statuses, old.count(False)


async def test_no_401_when_the_queue_is_shorter_than_in_flight(
    server: FakeOAuthServer, app_server: AppServer
) -> None:
    """About 0.3 s of queueing (8 requests x 40 ms) against the default 1 s allowance."""
    statuses, expired_on_arrival = await run(server, app_server, queued=8)
    assert expired_on_arrival == 0
    assert set(statuses) == {200}
    assert server.api_unauthorized == 0


async def test_a_longer_queue_with_a_larger_in_flight(
    server: FakeOAuthServer, app_server: AppServer
) -> None:
    """About 1.6 s of queueing (40 requests x 40 ms): ``Margins(in_flight=3)``, and a token
    long enough for it (at least twice ``1 + in_flight``, else half its life is the cap)."""
    server.expires_in = 8
    margins = Margins(in_flight=3.0)
    assert margins.offsets(8)[1] == 4.0
    statuses, expired_on_arrival = await run(server, app_server, queued=40, margins=margins)
    assert expired_on_arrival == 0
    assert set(statuses) == {200}
    assert server.api_unauthorized == 0


def test_default_margins_cover_the_queue_of_the_first_test() -> None:
    _, expired = Margins().offsets(LIFETIME)
    assert expired == 2.0  # 1 s whole-second truncation + 1 s in flight
    assert Margins().in_flight > 8 * UPSTREAM_TIME
