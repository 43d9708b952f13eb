"""asynctoken.httpx.TokenAuth against real loopback servers (the fake OAuth server's protected
endpoint and small aiohttp apps), mirroring test_middleware.py: httpx.AsyncClient with an asyncio
TokenManager, httpx.Client with a synchronous manager in threads."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import app_with, bearer, invalid_token, keliweb

from asynctoken import ConfigurationError, InvalidGrantError, RetryPolicy, TokenManager
from asynctoken.httpx import TokenAuth
from asynctoken.sync import SyncTokenManager
from asynctoken.testing import FakeOAuthServer

KEY = "keliweb"
FAST_RETRY = RetryPolicy(attempts=2, deadline=5.0, initial_delay=0.01, max_delay=0.02)
AppServer = Callable[[web.Application], Awaitable[TestServer]]


@pytest.fixture
async def manager(server: FakeOAuthServer) -> AsyncIterator[TokenManager]:
    # These tests expire tokens on the server many times a second; the manager's guard against
    # refresh loops (invalidate_interval) would refuse the later rejections.
    async with TokenManager(retry=FAST_RETRY, invalidate_interval=0) as tm:
        await tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
        yield tm


@pytest.fixture
async def client(manager: TokenManager) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(auth=manager.httpx_auth(KEY)) as http:
        yield http


def url(test_server: TestServer, path: str = "/") -> str:
    return str(test_server.make_url(path))


# ------------------------------------------------------------------------------- happy path


async def test_sets_authorization_and_reuses_the_cached_token(
    server: FakeOAuthServer, manager: TokenManager, client: httpx.AsyncClient
) -> None:
    for _ in range(20):
        assert (await client.get(server.api_url)).status_code == 200
    token = await manager.get_token(KEY)
    assert {c.access_token for c in server.api_calls} == {token.access_token}
    assert server.api_calls[0].headers["Authorization"] == f"Bearer {token.access_token}"
    assert server.token_requests == 1
    assert server.api_requests == 20


async def test_shortcut_and_repr(manager: TokenManager) -> None:
    auth = manager.httpx_auth(KEY, origins=["https://api.example.com"])
    assert isinstance(auth, TokenAuth)
    assert repr(auth) == (
        "TokenAuth(key='keliweb', origins=['https://api.example.com'], require_invalid_token=False)"
    )


# ------------------------------------------------------------------------------- 401 handling


async def test_invalid_token_refreshes_once_and_retries(
    server: FakeOAuthServer, manager: TokenManager, client: httpx.AsyncClient
) -> None:
    old = await manager.get_token(KEY)
    server.expire_all_access_tokens()
    response = await client.get(server.api_url)
    assert response.status_code == 200
    assert response.json()["ok"] is True
    assert [r.status_code for r in response.history] == [401]
    new = await manager.get_token(KEY)
    assert new.access_token != old.access_token
    assert server.token_requests == 2
    assert [c.access_token for c in server.api_calls] == [old.access_token, new.access_token]


async def test_concurrent_401s_share_one_refresh(
    server: FakeOAuthServer, manager: TokenManager, client: httpx.AsyncClient
) -> None:
    n = 50
    old = await manager.get_token(KEY)
    server.expire_all_access_tokens()

    with server.hold():  # the refresh parks at the token endpoint...
        tasks = [asyncio.create_task(client.get(server.api_url)) for _ in range(n)]
        await server.wait_for_api_requests(n)  # ...until every request had its first 401
        await server.wait_for_token_requests(2)
    responses = await asyncio.gather(*tasks)

    assert [r.status_code for r in responses] == [200] * n
    assert server.token_requests == 2  # one initial + ONE refresh for all 50
    new = await manager.get_token(KEY)
    assert server.access_token_uses(old.access_token) == n  # each request: one 401...
    assert server.access_token_uses(new.access_token) == n  # ...and exactly one retry
    assert server.api_requests == 2 * n


async def test_401_on_the_retry_is_returned_without_looping(
    server: FakeOAuthServer, client: httpx.AsyncClient, app_server: AppServer
) -> None:
    seen: list[str | None] = []

    async def always_401(request: web.Request) -> web.Response:
        seen.append(bearer(request))
        return invalid_token()

    api = await app_server(app_with("/api", always_401))
    response = await client.get(url(api, "/api"))
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token"}
    assert len(seen) == 2  # the first attempt and one retry, never more
    assert seen[0] != seen[1]  # the retry carried the new token
    assert server.token_requests == 2


async def test_401_without_challenge_is_retried_unless_strict(
    server: FakeOAuthServer, manager: TokenManager, app_server: AppServer
) -> None:
    rejected = {(await manager.get_token(KEY)).access_token}

    async def laravel(request: web.Request) -> web.Response:
        if bearer(request) in rejected:
            return web.json_response({"message": "Unauthenticated."}, status=401)
        return web.json_response({"ok": True})

    api = await app_server(app_with("/api", laravel))
    async with httpx.AsyncClient(auth=TokenAuth(manager, KEY)) as http:
        assert (await http.get(url(api, "/api"))).status_code == 200
    assert server.token_requests == 2

    rejected.add((await manager.get_token(KEY)).access_token)
    strict = TokenAuth(manager, KEY, require_invalid_token=True)
    async with httpx.AsyncClient(auth=strict) as http:
        assert (await http.get(url(api, "/api"))).status_code == 401
    assert server.token_requests == 2  # the strict auth did not refresh


async def test_401_with_another_bearer_error_is_not_retried(
    server: FakeOAuthServer, client: httpx.AsyncClient, app_server: AppServer
) -> None:
    hits = 0

    async def forbidden(_: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        challenge = 'Bearer error="insufficient_scope", scope="admin"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    api = await app_server(app_with("/api", forbidden))
    assert (await client.get(url(api, "/api"))).status_code == 401
    assert hits == 1
    assert server.token_requests == 1


async def test_401_not_retried_stays_readable(
    server: FakeOAuthServer, app_server: AppServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The manager refuses a second invalidation within invalidate_interval: the 401 comes
    back as httpx received it, a streamed body still unread and readable."""
    body = b'{"message":"Unauthenticated."}'
    hits = 0

    async def always_401(request: web.Request) -> web.StreamResponse:
        nonlocal hits
        hits += 1
        resp = web.StreamResponse(status=401)
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(body)
        await resp.write_eof()
        return resp

    api = await app_server(app_with("/api", always_401))
    async with TokenManager(retry=FAST_RETRY) as tm:  # default invalidate_interval
        await tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
        async with httpx.AsyncClient(auth=TokenAuth(tm, KEY)) as http:
            assert (await http.get(url(api, "/api"))).status_code == 401  # retried once
            assert hits == 2
            with caplog.at_level(logging.DEBUG, logger="asynctoken"):
                async with http.stream("GET", url(api, "/api")) as resp:
                    assert resp.status_code == 401
                    assert not resp.is_stream_consumed
                    assert await resp.aread() == body
            assert "not retrying" in caplog.text
            assert hits == 3
    assert server.token_requests == 2


async def test_token_error_during_retry_is_raised(
    server: FakeOAuthServer, manager: TokenManager, client: httpx.AsyncClient
) -> None:
    await manager.get_token(KEY)
    server.expire_all_access_tokens()
    server.expire_all_refresh_tokens()
    with pytest.raises(InvalidGrantError) as info:
        await client.get(server.api_url)
    assert not isinstance(info.value, httpx.HTTPError)
    assert server.api_requests == 1


# ------------------------------------------------------------------------------- bodies


async def test_replayable_bodies_are_sent_again(
    server: FakeOAuthServer, manager: TokenManager, client: httpx.AsyncClient
) -> None:
    bodies: list[dict[str, Any]] = [
        {"content": b"x" * 1000},
        {"content": "text"},
        {"json": {"a": 1}},
        {"data": {"form": "field"}},
        {"files": {"upload": io.BytesIO(b"y" * 5000)}},
        {"files": {"upload": ("name.txt", b"z" * 300)}, "data": {"f": "v"}},
    ]
    for body in bodies:
        await manager.get_token(KEY)
        server.expire_all_access_tokens()
        response = await client.post(server.api_url, **body)
        assert response.status_code == 200, body
        first, retry = server.api_calls[-2:]
        assert (first.status, retry.status) == (401, 200)
        assert first.body_len == retry.body_len > 0


async def test_streamed_body_is_not_sent_again(
    server: FakeOAuthServer,
    manager: TokenManager,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = await manager.get_token(KEY)
    server.expire_all_access_tokens()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"z" * 1024

    with caplog.at_level(logging.WARNING, logger="asynctoken"):
        response = await client.post(server.api_url + "?api_key=s3cr3t", content=chunks())
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"  # readable
    assert server.api_requests == 1  # not sent again with a spent generator
    assert server.api_calls[0].body_len == 4096
    assert "cannot be sent again" in caplog.text
    assert old.access_token not in caplog.text
    assert "s3cr3t" not in caplog.text  # the query may hold secrets: never logged

    # The rejected token was still dropped: the next request gets a new one.
    assert server.token_requests == 1
    assert (await client.post(server.api_url, content=b"again")).status_code == 200
    assert server.token_requests == 2
    assert server.api_requests == 2


async def test_unseekable_upload_is_not_sent_again(
    server: FakeOAuthServer, manager: TokenManager, client: httpx.AsyncClient
) -> None:
    class Unseekable(io.BytesIO):
        def seekable(self) -> bool:
            return False

    await manager.get_token(KEY)
    server.expire_all_access_tokens()
    response = await client.post(server.api_url, files={"f": Unseekable(b"q" * 100)})
    assert response.status_code == 401
    assert server.api_requests == 1


# ------------------------------------------------------------------------------- origins


async def test_token_is_not_sent_to_other_origins(
    manager: TokenManager, client: httpx.AsyncClient, app_server: AppServer
) -> None:
    seen: dict[str, str | None] = {}

    async def record(request: web.Request) -> web.Response:
        seen[request.path] = request.headers.get("Authorization")
        return web.Response(text="ok")

    other = await app_server(app_with("/{tail:.*}", record))

    async def redirect(request: web.Request) -> web.Response:
        if request.path == "/away":
            raise web.HTTPFound(other.make_url("/landing"))
        return await record(request)

    api = await app_server(app_with("/{tail:.*}", redirect))
    assert (await client.get(url(api, "/first"))).status_code == 200  # pins the API's origin
    response = await client.get(url(api, "/away"), follow_redirects=True)
    assert response.status_code == 200
    assert (await client.get(url(other, "/direct"))).status_code == 200
    token = await manager.get_token(KEY)
    assert seen["/first"] == f"Bearer {token.access_token}"
    assert seen["/landing"] is None  # redirected to another port
    assert seen["/direct"] is None  # another origin


async def test_401_from_a_redirect_target_never_drops_the_token(
    server: FakeOAuthServer, manager: TokenManager, client: httpx.AsyncClient, app_server: AppServer
) -> None:
    async def denied(_: web.Request) -> web.Response:
        return invalid_token()

    other = await app_server(app_with("/denied", denied))

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound(other.make_url("/denied"))

    api = await app_server(app_with("/away", redirect))
    response = await client.get(url(api, "/away"), follow_redirects=True)
    assert response.status_code == 401  # the other origin never saw the token
    assert server.token_requests == 1  # so it was neither dropped nor refreshed


async def test_explicit_origins(manager: TokenManager, app_server: AppServer) -> None:
    seen: list[str | None] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text="ok")

    one, two, three = [await app_server(app_with("/", record)) for _ in range(3)]
    auth = TokenAuth(manager, KEY, origins=[url(one), httpx.URL(url(two, "/x?y=1"))])
    async with httpx.AsyncClient(auth=auth) as http:
        for target in (three, one, two):
            assert (await http.get(url(target))).status_code == 200
    assert seen[0] is None
    assert seen[1] is not None
    assert seen[1] == seen[2]


# ------------------------------------------------------------------------------- plain http


def recorder(seen: list[str | None]) -> httpx.MockTransport:
    """A transport that records the Authorization header and sends nothing."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    "target", ["http://example.invalid/api", "http://10.0.0.1:8080/api", "http://localhost./"]
)
async def test_plain_http_to_another_host_is_refused_before_sending(
    server: FakeOAuthServer, manager: TokenManager, target: str
) -> None:
    token = await manager.get_token(KEY)
    seen: list[str | None] = []
    auth = TokenAuth(manager, KEY)
    async with httpx.AsyncClient(auth=auth, transport=recorder(seen)) as http:
        with pytest.raises(ConfigurationError) as info:
            await http.get(target)
        assert seen == []  # nothing was sent
        assert "allow_insecure_http=True" in str(info.value)
        assert token.access_token not in str(info.value)
        assert "first request" in repr(auth)  # a refused origin is not pinned
        assert (await http.get("http://127.0.0.1:1/x")).status_code == 200
    assert seen == [token.authorization]


async def test_plain_http_with_allow_insecure_http(manager: TokenManager) -> None:
    token = await manager.get_token(KEY)
    seen: list[str | None] = []
    auth = TokenAuth(manager, KEY, allow_insecure_http=True)
    async with httpx.AsyncClient(auth=auth, transport=recorder(seen)) as http:
        await http.get("http://example.invalid/api")
    assert seen == [token.authorization]


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("", {}),
        (KEY, {"origins": "https://api.example.com"}),
        (KEY, {"origins": httpx.URL("https://api.example.com")}),
        (KEY, {"origins": []}),
        (KEY, {"origins": ["/relative"]}),
        (KEY, {"origins": ["http://api.example.com"]}),
        (KEY, {"allow_insecure_http": "yes"}),
    ],
)
async def test_invalid_configuration(manager: TokenManager, key: str, options: Any) -> None:
    with pytest.raises(ConfigurationError):
        TokenAuth(manager, key, **options)


async def test_not_a_manager() -> None:
    with pytest.raises(ConfigurationError, match="TokenManager"):
        TokenAuth(object(), KEY)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------- sessions


async def test_token_requests_never_pass_through_it(
    server: FakeOAuthServer, manager: TokenManager
) -> None:
    """The token endpoint shares the API's origin; the manager's requests still bypass the
    client (they go through the manager's own aiohttp session)."""
    auth = TokenAuth(manager, KEY, origins=[server.base_url])
    async with httpx.AsyncClient(auth=auth) as http:
        for _ in range(3):
            assert (await http.get(server.api_url)).status_code == 200
            server.expire_all_access_tokens()
    assert server.token_requests == 3
    assert all("Authorization" not in r.headers for r in server.requests)


# ------------------------------------------------------------------------------- sync flow


@pytest.fixture
def sync_manager(server: FakeOAuthServer) -> Iterator[SyncTokenManager]:
    with SyncTokenManager(retry=FAST_RETRY, invalidate_interval=0) as tm:
        tm.add(KEY, keliweb(server), refresh_token=server.issue_refresh_token())
        yield tm


async def test_sync_client_with_a_sync_manager(
    server: FakeOAuthServer, sync_manager: SyncTokenManager, app_server: AppServer
) -> None:
    """16 threads share one httpx.Client; every first attempt is rejected, and the 401s are
    answered only once all 16 arrived (so that no thread gets its first token after another
    thread's rejection): one refresh for all, one retry each."""
    n = 16
    first = (await asyncio.to_thread(sync_manager.get_token, KEY)).access_token
    seen: list[str | None] = []
    all_rejected = asyncio.Event()

    async def api(request: web.Request) -> web.Response:
        token = bearer(request)
        seen.append(token)
        if token == first:
            if seen.count(first) == n:
                all_rejected.set()
            await all_rejected.wait()
            return invalid_token()
        ok = token is not None and server.is_valid_access_token(token)
        return web.Response(text="ok") if ok else invalid_token()

    upstream = url(await app_server(app_with("/api", api)), "/api")
    statuses: list[int] = []
    start = threading.Barrier(n)

    def call(http: httpx.Client) -> None:
        start.wait()
        statuses.append(http.get(upstream).status_code)

    def run() -> None:
        with httpx.Client(auth=TokenAuth(sync_manager, KEY)) as http:
            threads = [threading.Thread(target=call, args=(http,)) for _ in range(n)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    await asyncio.wait_for(asyncio.to_thread(run), 60)
    assert statuses == [200] * n
    assert server.token_requests == 2  # the first token + ONE refresh for every thread's 401
    assert seen.count(first) == n  # each thread: one rejected attempt...
    assert len(seen) == 2 * n  # ...and exactly one retry
    assert len(set(seen)) == 2


async def test_sync_streamed_body_is_not_sent_again(
    server: FakeOAuthServer, sync_manager: SyncTokenManager
) -> None:
    await asyncio.to_thread(sync_manager.get_token, KEY)
    server.expire_all_access_tokens()

    def run() -> int:
        with httpx.Client(auth=TokenAuth(sync_manager, KEY)) as http:
            return http.post(server.api_url, content=iter([b"a" * 10, b"b" * 10])).status_code

    assert await asyncio.to_thread(run) == 401
    assert server.api_requests == 1


async def test_manager_kind_must_match_the_client(
    manager: TokenManager, sync_manager: SyncTokenManager
) -> None:
    seen: list[str | None] = []
    with (
        httpx.Client(auth=TokenAuth(manager, KEY), transport=recorder(seen)) as http,
        pytest.raises(ConfigurationError, match=r"httpx\.AsyncClient"),
    ):
        http.get("https://api.example.com/")
    async with httpx.AsyncClient(
        auth=TokenAuth(sync_manager, KEY), transport=recorder(seen)
    ) as http:
        with pytest.raises(ConfigurationError, match="asyncio TokenManager"):
            await http.get("https://api.example.com/")
    assert seen == []


def test_asynctoken_imports_without_httpx() -> None:
    code = (
        "import sys\n"
        "sys.modules['httpx'] = None\n"  # as if not installed
        "import asynctoken\n"
        "from asynctoken import TokenManager\n"
        "try:\n"
        "    import asynctoken.httpx\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'asynctoken[httpx]'" in done.stdout
