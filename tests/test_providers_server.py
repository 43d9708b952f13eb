"""Providers against a real aiohttp server on 127.0.0.1: what actually crosses the wire.

aioresponses never runs session internals (cookie jars, middlewares, redirects, body streaming);
these tests do.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from asynctoken import (
    MalformedResponseError,
    RetryPolicy,
    TokenEndpointError,
    TokenError,
    TokenManager,
    TransientError,
)
from asynctoken.providers import ERPeasyProvider, KeliwebProvider, OAuth2Provider
from asynctoken.testing import FakeOAuthServer

OLD = "eyJhbGciOiJIUzI1NiJ9.old-refresh.sig"
NEW = "eyJhbGciOiJIUzI1NiJ9.new-refresh.sig"
SECRET = "server-test-client-secret"
ERP_COOKIE = (
    f"refresh_token={NEW}; Domain=api.erpeasy.compels.net; Path=/oauth/token; "
    "Expires=Sat, 13 Dec 2036 08:00:00 GMT; Max-Age=2592000; Secure; HttpOnly"
)


@dataclass
class Seen:
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


async def _record(request: web.Request, seen: Seen) -> dict[str, Any]:
    entry = {
        "path": request.path,
        "headers": dict(request.headers),
        "form": dict(await request.post()),
        "cookies": dict(request.cookies),
    }
    seen.requests.append(entry)
    return entry


def make_app(seen: Seen) -> web.Application:
    async def keliweb(request: web.Request) -> web.Response:
        await _record(request, seen)
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": 3600,
                "access_token": "kw.at",
                "refresh_token": NEW,
            }
        )

    async def erpeasy(request: web.Request) -> web.Response:
        await _record(request, seen)
        headers = CIMultiDict(
            [
                ("Set-Cookie", "JSESSIONID=0123456789ABCDEF; Path=/; HttpOnly"),
                ("Set-Cookie", ERP_COOKIE),
            ]
        )
        body = {
            "access_token": "erp.at",
            "token_type": "bearer",
            "expires_in": 43199,
            "scope": "read write",
            "user_id": 10,
            "company_id": 20,
            "company_document": "12345678000190",
            "company_name": "ACME",
            "jti": "j-1",
        }
        return web.json_response(body, headers=headers)

    async def generic(request: web.Request) -> web.Response:
        await _record(request, seen)
        return web.json_response({"access_token": "gen.at", "expires_in": 60, "scope": "s"})

    async def redirect(request: web.Request) -> web.Response:
        await _record(request, seen)
        raise web.HTTPFound("/keliweb/oauth/token")

    async def slow(request: web.Request) -> web.Response:
        await _record(request, seen)
        await seen.release.wait()
        return web.json_response({})

    async def big(request: web.Request) -> web.StreamResponse:
        await _record(request, seen)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"access_token":"x","expires_in":1,"pad":"')
        for _ in range(64):
            await response.write(b"x" * 32_768)
        await response.write(b'"}')
        return response

    app = web.Application()
    app.router.add_post("/keliweb/oauth/token", keliweb)
    app.router.add_post("/oauth/token", erpeasy)
    app.router.add_post("/generic/token", generic)
    app.router.add_post("/redirect", redirect)
    app.router.add_post("/slow", slow)
    app.router.add_post("/big", big)
    return app


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, Seen]]:
    seen = Seen()
    test_server = TestServer(make_app(seen))
    await test_server.start_server()
    try:
        yield test_server, seen
    finally:
        seen.release.set()
        await test_server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        yield s


async def test_keliweb_real_server(
    server: tuple[TestServer, Seen], session: aiohttp.ClientSession
) -> None:
    test_server, seen = server
    url = str(test_server.make_url("/keliweb/oauth/token"))
    provider = KeliwebProvider(client_id="kid", client_secret=SECRET, token_url=url)
    token = await provider.fetch_token(session, refresh_token=OLD, issued_at=100.0)
    assert (token.access_token, token.refresh_token, token.expires_at) == ("kw.at", NEW, 3700.0)
    (req,) = seen.requests
    assert req["headers"]["X-Requested-With"] == "XMLHttpRequest"
    assert req["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert req["form"] == {
        "grant_type": "refresh_token",
        "client_id": "kid",
        "client_secret": SECRET,
        "refresh_token": OLD,
    }


async def test_erpeasy_real_server_reads_scoped_secure_cookie(
    server: tuple[TestServer, Seen], session: aiohttp.ClientSession
) -> None:
    test_server, seen = server
    url = str(test_server.make_url("/oauth/token"))
    assert url.startswith("http://127.0.0.1:")
    provider = ERPeasyProvider(client_id="erp", client_secret=SECRET, token_url=url)

    token = await provider.fetch_token(session, refresh_token=OLD, issued_at=100.0)
    # Domain=api.erpeasy.compels.net, Secure over plain http to 127.0.0.1: still picked up.
    assert token.refresh_token == NEW
    assert token.extra["company_id"] == 20
    assert token.extra["company_document"] == "12345678000190"
    # ...and it never landed in the session's jar.
    assert list(session.cookie_jar) == []

    # Next refresh: exactly the cookie we built, nothing from a jar.
    await provider.fetch_token(session, refresh_token=token.refresh_token, issued_at=200.0)
    first, second = seen.requests
    expected_auth = "Basic " + base64.b64encode(f"erp:{SECRET}".encode()).decode()
    assert first["headers"]["Authorization"] == expected_auth
    assert first["headers"]["Cookie"] == f"refresh_token={OLD}"
    assert first["cookies"] == {"refresh_token": OLD}
    assert first["form"] == {"grant_type": "refresh_token", "refresh_token": OLD}
    assert second["headers"]["Cookie"] == f"refresh_token={NEW}"
    assert second["cookies"] == {"refresh_token": NEW}


async def test_erpeasy_password_grant_real_server(
    server: tuple[TestServer, Seen], session: aiohttp.ClientSession
) -> None:
    test_server, seen = server
    provider = ERPeasyProvider(
        client_id="erp",
        client_secret=SECRET,
        email="e@example.com.br",
        password="pw-123456",
        company="12345678000190",
        token_url=str(test_server.make_url("/oauth/token")),
    )
    token = await provider.fetch_token(session, refresh_token=None, issued_at=0.0)
    assert token.refresh_token == NEW
    (req,) = seen.requests
    assert "Cookie" not in req["headers"]
    assert req["form"] == {
        "grant_type": "password",
        "email": "e@example.com.br",
        "password": "pw-123456",
        "company": "12345678000190",
    }


async def test_generic_real_server_bypasses_session_middlewares(
    server: tuple[TestServer, Seen],
) -> None:
    test_server, seen = server
    calls: list[str] = []

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        calls.append(str(request.url))
        request.headers["Authorization"] = "Bearer from-middleware"
        return await handler(request)

    provider = OAuth2Provider(
        token_url=str(test_server.make_url("/generic/token")),
        client_id="gid",
        client_secret=SECRET,
        auth_method="client_secret_basic",
        grant_type="client_credentials",
        scope="s",
    )
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), middlewares=(middleware,)
    ) as s:
        token = await provider.fetch_token(s, refresh_token=None, issued_at=0.0)
    assert token.access_token == "gen.at"
    assert token.scope == "s"
    assert calls == []
    (req,) = seen.requests
    assert req["headers"]["Authorization"].startswith("Basic ")
    assert req["form"] == {"grant_type": "client_credentials", "scope": "s"}


async def test_redirect_is_not_followed(
    server: tuple[TestServer, Seen], session: aiohttp.ClientSession
) -> None:
    test_server, seen = server
    provider = KeliwebProvider(
        client_id="kid", client_secret=SECRET, token_url=str(test_server.make_url("/redirect"))
    )
    with pytest.raises(TokenEndpointError, match="redirect") as info:
        await provider.fetch_token(session, refresh_token=OLD, issued_at=0.0)
    assert info.value.status == 302
    assert [r["path"] for r in seen.requests] == ["/redirect"]


async def test_timeout_is_transient(
    server: tuple[TestServer, Seen], session: aiohttp.ClientSession
) -> None:
    test_server, _ = server
    provider = KeliwebProvider(
        client_id="kid",
        client_secret=SECRET,
        token_url=str(test_server.make_url("/slow")),
        timeout=0.2,
    )
    with pytest.raises(TransientError, match=r"timed out after 0\.2 s") as info:
        await provider.fetch_token(session, refresh_token=OLD, issued_at=0.0)
    assert info.value.status is None
    assert "127.0.0.1" in str(info.value)


async def test_oversized_streamed_body(
    server: tuple[TestServer, Seen], session: aiohttp.ClientSession
) -> None:
    test_server, _ = server
    provider = KeliwebProvider(
        client_id="kid",
        client_secret=SECRET,
        token_url=str(test_server.make_url("/big")),
        max_response_bytes=65_536,
    )
    with pytest.raises(MalformedResponseError) as info:
        await provider.fetch_token(session, refresh_token=OLD, issued_at=0.0)
    assert info.value.reason == "response body larger than 65536 bytes"


async def test_connection_refused_is_transient(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = KeliwebProvider(
        client_id="kid", client_secret=SECRET, token_url=f"http://127.0.0.1:{port}/oauth/token"
    )
    with pytest.raises(TransientError) as info:
        await provider.fetch_token(session, refresh_token=OLD, issued_at=0.0)
    assert info.value.status is None
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "ClientConnectorError" in str(info.value)


async def test_transient_error_chain_carries_no_token() -> None:
    """Regression: a token answer whose Set-Cookie line is malformed ("Set-Cookie :") makes
    aiohttp raise ClientResponseError quoting the raw line, i.e. the new refresh token; it was
    kept as the __cause__ of the TransientError, and its request_info holds the Basic
    credentials and the Cookie with the old refresh token."""
    secret = "erpeasy-client-secret-0123456789"
    old = "eyJhbGciOiJIUzI1NiJ9.OLDrefresh0123456789abcdefghij"
    new = "eyJhbGciOiJIUzI1NiJ9.NEWrefresh0123456789abcdefghij"
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Set-Cookie : refresh_token=" + new.encode() + b"; Path=/oauth/token\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )

    async def broken(request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        request.transport.write(raw)
        await asyncio.sleep(0.2)
        request.transport.close()
        return web.Response()

    app = web.Application()
    app.router.add_post("/oauth/token", broken)
    async with TestServer(app, host="127.0.0.1") as srv:
        provider = ERPeasyProvider("client", secret, token_url=str(srv.make_url("/oauth/token")))
        async with TokenManager(retry=RetryPolicy(attempts=1)) as tm:
            await tm.add("erp", provider, refresh_token=old)
            with pytest.raises(TransientError) as info:
                await tm.get_token("erp")
    exc = info.value
    text = "".join(traceback.format_exception(exc))
    chain = []
    cur: BaseException | None = exc
    while cur is not None:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    dumped = text + "".join(
        repr(e) + str(e) + repr(vars(e)) for e in chain if hasattr(e, "__dict__")
    )
    basic = ERPeasyProvider("client", secret).build_request(old).headers["Authorization"]
    for value in (new, old, basic.split()[1]):
        assert value not in dumped


async def test_extra_header_with_control_character_fails_as_token_error() -> None:
    """Regression: such a header used to pass the option check, and every refresh then failed
    with aiohttp's bare ValueError. Now the provider refuses it (ConfigurationError, a
    TokenError) when it is built, so construction sits inside pytest.raises."""
    async with FakeOAuthServer("keliweb", expires_in=3600) as oauth:
        with pytest.raises(TokenError):  # noqa: PT012 - from construction to refresh
            provider = KeliwebProvider(
                oauth.client_id,
                oauth.client_secret,
                token_url=oauth.token_url,
                extra_headers={"X-Tenant": "a\x01b"},
            )
            async with TokenManager() as tm:
                await tm.add("keliweb", provider, refresh_token=oauth.issue_refresh_token())
                await tm.get_token("keliweb")
