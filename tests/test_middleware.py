"""TokenMiddleware against real loopback servers: the fake OAuth server's protected endpoint and
small aiohttp apps of our own. No mocks (aioresponses would bypass client middlewares)."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import app_with, bearer, invalid_token, keliweb
from yarl import URL

from asynctoken import (
    ConfigurationError,
    InvalidGrantError,
    RetryPolicy,
    TokenError,
    TokenManager,
    TokenMiddleware,
)
from asynctoken.testing import FakeOAuthServer

KEY = "keliweb"
FAST_RETRY = RetryPolicy(attempts=2, deadline=5.0, initial_delay=0.01, max_delay=0.02)


@pytest.fixture
async def manager(server: FakeOAuthServer) -> AsyncIterator[TokenManager]:
    # These tests expire tokens on the server several times a second; the manager's guard
    # against refresh loops (tested in test_manager.py) would refuse the later rejections.
    async with TokenManager(retry=FAST_RETRY, invalidate_interval=0) as tm:
        await tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
        yield tm


@pytest.fixture
async def session(manager: TokenManager) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(middlewares=[manager.middleware(KEY)]) as http:
        yield http


# ------------------------------------------------------------------------------- happy path


async def test_sets_authorization_header(
    server: FakeOAuthServer, manager: TokenManager, session: aiohttp.ClientSession
) -> None:
    async with session.get(server.api_url) as resp:
        assert resp.status == 200
    token = await manager.get_token(KEY)
    assert [call.access_token for call in server.api_calls] == [token.access_token]
    assert server.api_calls[0].headers["Authorization"] == f"Bearer {token.access_token}"
    assert server.token_requests == 1


async def test_cached_token_costs_no_token_request(
    server: FakeOAuthServer, session: aiohttp.ClientSession
) -> None:
    for _ in range(20):
        async with session.get(server.api_url) as resp:
            assert resp.status == 200
    assert server.token_requests == 1
    assert server.api_requests == 20


# ------------------------------------------------------------------------------- 401 handling


async def test_invalid_token_refreshes_once_and_retries(
    server: FakeOAuthServer, manager: TokenManager, session: aiohttp.ClientSession
) -> None:
    old = await manager.get_token(KEY)
    server.expire_all_access_tokens()

    async with session.get(server.api_url) as resp:
        assert resp.status == 200
        assert (await resp.json())["ok"] is True

    new = await manager.get_token(KEY)
    assert new.access_token != old.access_token
    assert server.token_requests == 2  # the first token, then exactly one refresh
    assert [c.access_token for c in server.api_calls] == [old.access_token, new.access_token]
    assert [c.status for c in server.api_calls] == [401, 200]


async def test_concurrent_401s_share_one_refresh(
    server: FakeOAuthServer, manager: TokenManager, session: aiohttp.ClientSession
) -> None:
    n = 50
    old = await manager.get_token(KEY)
    server.expire_all_access_tokens()

    async def call() -> int:
        async with session.get(server.api_url) as resp:
            await resp.read()
            return resp.status

    with server.hold():  # the refresh parks at the token endpoint...
        tasks = [asyncio.create_task(call()) for _ in range(n)]
        await server.wait_for_api_requests(n)  # ...until every request had its first 401
        await server.wait_for_token_requests(2)
    statuses = await asyncio.gather(*tasks)

    assert statuses == [200] * n
    assert server.token_requests == 2  # one initial + ONE refresh for all 50
    new = await manager.get_token(KEY)
    assert server.access_token_uses(old.access_token) == n  # each request: one 401...
    assert server.access_token_uses(new.access_token) == n  # ...and exactly one retry
    assert server.api_requests == 2 * n


async def test_401_on_the_retry_is_returned_without_looping(
    server: FakeOAuthServer,
    manager: TokenManager,
    session: aiohttp.ClientSession,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    seen: list[str | None] = []

    async def always_401(request: web.Request) -> web.Response:
        seen.append(bearer(request))
        return invalid_token()

    api = await app_server(app_with("/api", always_401))
    async with session.get(api.make_url("/api")) as resp:
        assert resp.status == 401
        assert (await resp.json()) == {"error": "invalid_token"}  # returned intact

    assert len(seen) == 2  # the first attempt and one retry, never more
    assert seen[0] != seen[1]  # the retry carried the new token
    assert server.token_requests == 2

    async with session.get(api.make_url("/api")) as resp:
        assert resp.status == 401
    assert len(seen) == 4  # two hits per request
    assert server.token_requests == 3


async def test_401_without_challenge_is_retried_by_default(
    server: FakeOAuthServer,
    manager: TokenManager,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    rejected = {(await manager.get_token(KEY)).access_token}

    async def laravel(request: web.Request) -> web.Response:
        # Laravel's auth:api answers an expired token like this: no WWW-Authenticate at all.
        if bearer(request) in rejected:
            return web.json_response({"message": "Unauthenticated."}, status=401)
        return web.json_response({"ok": True})

    api = await app_server(app_with("/api", laravel))
    mw = manager.middleware(KEY)
    async with aiohttp.ClientSession(middlewares=[mw]) as http, http.get(api.make_url("/api")) as r:
        assert r.status == 200
    assert server.token_requests == 2

    strict = manager.middleware(KEY, require_invalid_token=True)
    rejected.add((await manager.get_token(KEY)).access_token)
    async with (
        aiohttp.ClientSession(middlewares=[strict]) as http,
        http.get(api.make_url("/api")) as r,
    ):
        assert r.status == 401
    assert server.token_requests == 2  # the strict middleware did not refresh


@pytest.mark.parametrize(
    "challenge",
    ['Bearer error="insufficient_scope", scope="admin"', 'Bearer realm="x", error=invalid_request'],
)
async def test_401_with_another_bearer_error_is_not_retried(
    server: FakeOAuthServer,
    session: aiohttp.ClientSession,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
    challenge: str,
) -> None:
    hits = 0

    async def forbidden(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    api = await app_server(app_with("/api", forbidden))
    async with session.get(api.make_url("/api")) as resp:
        assert resp.status == 401
    assert hits == 1
    assert server.token_requests == 1


async def test_challenge_parsing_ignores_error_description(
    server: FakeOAuthServer,
    session: aiohttp.ClientSession,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    hits = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        if hits == 1:
            header = (
                'Basic realm="x", '
                'Bearer error_description="insufficient_scope", error="invalid_token"'
            )
            return web.Response(status=401, headers={"WWW-Authenticate": header})
        return web.Response(text="ok")

    api = await app_server(app_with("/api", handler))
    async with session.get(api.make_url("/api")) as resp:
        assert resp.status == 200
    assert hits == 2


async def test_middleware_401_returned_without_retry_keeps_a_readable_body(
    server: FakeOAuthServer,
) -> None:
    """Regression: when the manager refuses the invalidation (second 401 within
    invalidate_interval), the middleware used to hand back the 401 it had already released, its
    (chunked) body gone. A 401 that is not retried must come back unreleased."""
    body = b'{"message":"Unauthenticated."}'

    async def always_401(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=401)
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_route("*", "/api", always_401)
    async with TestServer(app, host="127.0.0.1") as api, TokenManager() as tm:
        await tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
        async with aiohttp.ClientSession(middlewares=[tm.middleware(KEY)]) as http:
            bodies: list[bytes | str] = []
            for _ in range(2):
                async with http.get(api.make_url("/api")) as resp:
                    assert resp.status == 401
                    try:
                        bodies.append(await resp.read())
                    except aiohttp.ClientError as exc:
                        bodies.append(repr(exc))
    assert bodies == [body, body]


async def test_retrying_once_is_logged_only_when_retrying(
    server: FakeOAuthServer,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    hits = 0

    async def always_401(_: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return invalid_token()

    api = await app_server(app_with("/x", always_401))
    async with TokenManager(retry=FAST_RETRY) as tm:  # default invalidate_interval
        await tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
        async with aiohttp.ClientSession(middlewares=[tm.middleware(KEY)]) as http:
            with caplog.at_level(logging.DEBUG, logger="asynctoken"):
                async with http.get(api.make_url("/x")) as resp:  # retried once
                    assert resp.status == 401
            assert caplog.text.count("retrying once") == 1
            assert hits == 2
            caplog.clear()
            with caplog.at_level(logging.DEBUG, logger="asynctoken"):
                async with http.get(api.make_url("/x")) as resp:  # the manager keeps the token
                    assert resp.status == 401
                    assert await resp.json() == {"error": "invalid_token"}
            assert "retrying once" not in caplog.text
            assert "not retrying" in caplog.text
            assert hits == 3
    assert server.token_requests == 2


async def test_middleware_with_bad_token_type_raises_token_error(server: FakeOAuthServer) -> None:
    """Regression, end to end: a token_type with a line break used to be cached, and every API
    call then failed with aiohttp's ValueError (header injection guard) instead of a
    TokenError."""
    server.fail_next(
        status=200,
        body={
            "token_type": "Bearer\r\nX-Injected: yes",
            "expires_in": 3600,
            "access_token": "abc.def.ghi",
        },
    )
    async with TokenManager() as tm:
        await tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
        async with aiohttp.ClientSession(middlewares=[tm.middleware(KEY)]) as http:
            with pytest.raises(TokenError):
                async with http.get(server.api_url):
                    pass


async def test_token_error_during_retry_is_raised(
    server: FakeOAuthServer, manager: TokenManager, session: aiohttp.ClientSession
) -> None:
    await manager.get_token(KEY)
    server.expire_all_access_tokens()
    server.expire_all_refresh_tokens()
    with pytest.raises(InvalidGrantError):
        await session.get(server.api_url)
    assert server.api_requests == 1


# ------------------------------------------------------------------------------- bodies


async def test_replayable_bodies_are_sent_again(
    server: FakeOAuthServer, manager: TokenManager, session: aiohttp.ClientSession
) -> None:
    bodies: list[Any] = [b"x" * 1000, "text", {"form": "field"}, io.BytesIO(b"y" * 5000)]
    for body in bodies:
        await manager.get_token(KEY)
        server.expire_all_access_tokens()
        async with session.post(server.api_url, data=body) as resp:
            assert resp.status == 200
        first, retry = server.api_calls[-2:]
        assert (first.status, retry.status) == (401, 200)
        assert first.body_len == retry.body_len > 0


async def test_consumed_stream_body_is_not_retried(
    server: FakeOAuthServer,
    manager: TokenManager,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = await manager.get_token(KEY)
    server.expire_all_access_tokens()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"z" * 1024

    with caplog.at_level(logging.WARNING, logger="asynctoken"):
        async with session.post(server.api_url, data=chunks()) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "invalid_token"
    assert server.api_requests == 1  # not sent again with a half-read generator
    assert server.api_calls[0].body_len == 4096
    assert "cannot be sent again" in caplog.text
    assert old.access_token not in caplog.text

    # The rejected token was still dropped: the caller's next request gets a new one.
    assert server.token_requests == 1
    async with session.post(server.api_url, data=b"again") as resp:
        assert resp.status == 200
    assert server.token_requests == 2
    assert server.api_requests == 2


# ------------------------------------------------------------------------------- sessions


async def test_manager_and_middleware_on_the_same_session(server: FakeOAuthServer) -> None:
    """Token requests never pass through the middleware: no recursion, no deadlock."""
    middleware: list[TokenMiddleware] = []

    async def auth(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await middleware[0](request, handler)
        return response

    async with aiohttp.ClientSession(middlewares=[auth]) as http:
        async with TokenManager(session=http, retry=FAST_RETRY, invalidate_interval=0) as tm:
            await tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
            middleware.append(tm.middleware(KEY))

            async def use() -> list[int]:
                statuses = []
                for _ in range(2):
                    async with http.get(server.api_url) as resp:
                        statuses.append(resp.status)
                    server.expire_all_access_tokens()
                return statuses

            assert await asyncio.wait_for(use(), timeout=10) == [200, 200]
            # Also with the middleware given per request on the manager's own session.
            async with http.get(server.api_url, middlewares=(tm.middleware(KEY),)) as resp:
                assert resp.status == 200
        assert not http.closed  # the manager never closes a session it was given

    assert server.token_requests == 3  # first token, one refresh, one refresh
    assert all("Authorization" not in r.headers for r in server.requests)
    assert [c.status for c in server.api_calls] == [200, 401, 200, 401, 200]


async def test_invalidate_keeps_a_newer_token(
    server: FakeOAuthServer,
    manager: TokenManager,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    """A slow 401 for an old token arrives after another request already refreshed: the newer
    token is not dropped and no second refresh happens."""
    slow_arrived = asyncio.Event()
    answer_slow = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        token = bearer(request)
        if token is not None and server.is_valid_access_token(token):
            return web.Response(text="ok")
        slow_arrived.set()
        await answer_slow.wait()
        return invalid_token()

    old = await manager.get_token(KEY)
    api = await app_server(app_with("/slow", slow))
    server.expire_all_access_tokens()
    mw = manager.middleware(KEY, origins=[server.base_url, str(api.make_url("/"))])

    async with aiohttp.ClientSession(middlewares=[mw]) as http:
        slow_request = asyncio.create_task(http.get(api.make_url("/slow")))
        try:
            await slow_arrived.wait()  # it sent the old token and waits for its 401
            async with http.get(server.api_url) as resp:  # gets a 401 and refreshes
                assert resp.status == 200
            new = await manager.get_token(KEY)
            assert new.access_token != old.access_token
            assert server.token_requests == 2
        finally:
            answer_slow.set()
        async with await slow_request as resp:
            assert resp.status == 200  # retried with the token the other request got
    assert server.token_requests == 2  # no refresh for the late 401
    assert (await manager.get_token(KEY)).access_token == new.access_token


# ------------------------------------------------------------------------------- origins


async def test_token_is_not_sent_to_other_origins(
    manager: TokenManager,
    session: aiohttp.ClientSession,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    seen: dict[str, str | None] = {}

    async def record(request: web.Request) -> web.Response:
        seen[request.path] = request.headers.get("Authorization")
        return web.Response(text="ok")

    other = await app_server(app_with("/landing", record))

    async def redirect(request: web.Request) -> web.Response:
        if request.path == "/away":
            raise web.HTTPFound(other.make_url("/landing"))
        return await record(request)

    api = await app_server(app_with("/{tail:.*}", redirect))
    async with session.get(api.make_url("/first")) as resp:  # pins the API's origin
        assert resp.status == 200
    async with session.get(api.make_url("/away")) as resp:  # redirected to another port
        assert resp.status == 200
    token = await manager.get_token(KEY)
    assert seen["/first"] == f"Bearer {token.access_token}"
    assert seen["/landing"] is None


async def test_explicit_origins(
    manager: TokenManager,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    seen: list[str | None] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text="ok")

    one = await app_server(app_with("/", record))
    two = await app_server(app_with("/", record))
    three = await app_server(app_with("/", record))
    mw = manager.middleware(KEY, origins=[str(one.make_url("/")), two.make_url("/x?y=1")])
    async with aiohttp.ClientSession(middlewares=[mw]) as http:
        for target in (three, one, two):
            async with http.get(target.make_url("/")) as resp:
                assert resp.status == 200
    assert seen[0] is None
    assert seen[1] is not None
    assert seen[1] == seen[2]
    assert "origins=['http://127.0.0.1:" in repr(mw)


# ------------------------------------------------------------------------------- plain http


class _Stop(Exception):
    """Raised by an inner middleware instead of sending: no DNS lookup, no connection."""


def recorder(seen: list[str | None]) -> Any:
    """An inner middleware that records the Authorization header and sends nothing."""

    async def record(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        seen.append(request.headers.get("Authorization"))
        raise _Stop

    return record


@pytest.mark.parametrize(
    "url",
    [
        "http://example.invalid/api",
        "http://10.0.0.1:8080/api",
        "http://localhost./api",
        "http://localhost.example.invalid/api",
        "http://[::ffff:127.0.0.1]/api",
    ],
)
async def test_plain_http_to_another_host_is_refused_before_sending(
    server: FakeOAuthServer,
    manager: TokenManager,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
    url: str,
) -> None:
    token = await manager.get_token(KEY)
    seen: list[str | None] = []
    mw = manager.middleware(KEY)
    async with aiohttp.ClientSession(middlewares=[mw, recorder(seen)]) as http:
        with pytest.raises(ConfigurationError) as info:
            await http.get(url)
    assert seen == []  # the request never got past the middleware: nothing was sent
    message = str(info.value)
    assert "plain http" in message
    assert "allow_insecure_http=True" in message
    assert str(URL(url).raw_host) in message  # names the origin...
    assert token.access_token not in message  # ...never the token
    assert info.value.key == KEY
    assert "first request" in repr(mw)  # a refused origin is not pinned

    # A refused first request pins nothing: the next one, to a loopback server, works.
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text=bearer(request) or "")

    api = await app_server(app_with("/", ok))
    async with aiohttp.ClientSession(middlewares=[mw]) as http, http.get(api.make_url("/")) as r:
        assert await r.text() == token.access_token
    assert server.token_requests == 1


async def test_plain_http_to_loopback_is_allowed(
    manager: TokenManager,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("Authorization", ""))

    api = await app_server(app_with("/", echo))
    assert api.make_url("/").scheme == "http"
    token = await manager.get_token(KEY)
    origins = [str(api.make_url("/"))]
    for options in ({}, {"origins": origins}):
        mw = manager.middleware(KEY, **options)
        async with (
            aiohttp.ClientSession(middlewares=[mw]) as http,
            http.get(api.make_url("/")) as resp,
        ):
            assert await resp.text() == token.authorization


async def test_plain_http_to_another_host_with_allow_insecure_http(
    manager: TokenManager,
) -> None:
    token = await manager.get_token(KEY)
    for options in (
        {"allow_insecure_http": True},
        {"allow_insecure_http": True, "origins": ["http://example.invalid"]},
    ):
        seen: list[str | None] = []
        mw = manager.middleware(KEY, **options)
        assert "allow_insecure_http=True" in repr(mw)
        async with aiohttp.ClientSession(middlewares=[mw, recorder(seen)]) as http:
            with pytest.raises(_Stop):
                await http.get("http://example.invalid/api")
        assert seen == [token.authorization]


async def test_plain_http_origins_are_checked_at_construction(manager: TokenManager) -> None:
    with pytest.raises(ConfigurationError, match=r"http://api\.example\.com"):
        manager.middleware(KEY, origins=["https://api.example.com", "http://api.example.com"])
    with pytest.raises(ConfigurationError, match="plain ws"):
        manager.middleware(KEY, origins=["ws://api.example.com"])
    mw = manager.middleware(KEY, origins=["http://127.0.0.1:8080", "http://[::1]:8080"])
    assert "http://[::1]:8080" in repr(mw)


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("", {}),
        (KEY, {"origins": "https://api.example.com"}),
        (KEY, {"origins": []}),
        (KEY, {"origins": ["/relative"]}),
        (KEY, {"origins": ["http://api.example.com"]}),
        (KEY, {"allow_insecure_http": "yes"}),
    ],
)
async def test_invalid_configuration(manager: TokenManager, key: str, options: Any) -> None:
    with pytest.raises(ConfigurationError):
        manager.middleware(key, **options)
    with pytest.raises(ValueError):  # noqa: PT011 - ConfigurationError is a ValueError
        TokenMiddleware(manager, key, **options)


async def test_an_api_rejecting_every_token_causes_no_refresh_loop(
    server: FakeOAuthServer,
    app_server: Callable[[web.Application], Awaitable[TestServer]],
) -> None:
    hits = 0

    async def always_401(_: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(
            status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )

    app = web.Application()
    app.router.add_get("/x", always_401)
    api = await app_server(app)
    async with TokenManager(retry=FAST_RETRY) as tm:  # default invalidate_interval
        await tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
        async with aiohttp.ClientSession(middlewares=[tm.middleware(KEY)]) as http:
            for _ in range(20):
                async with http.get(api.make_url("/x")) as resp:
                    assert resp.status == 401
    # One initial token, one refresh after the first rejection, then no more.
    assert server.token_requests == 2
    assert hits == 21
