"""asynctoken.requests.TokenAuth against real loopback servers: the fake OAuth server's protected
endpoint and small aiohttp apps of our own, served from a loop thread (sync_support)."""

from __future__ import annotations

import asyncio
import io
import logging
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest
import requests
from aiohttp import web
from sync_support import Apps, ThreadedServer, apps, sync_server

from asynctoken import ConfigurationError, InvalidGrantError, TokenManager
from asynctoken.requests import TokenAuth
from asynctoken.sync import SyncTokenManager

if TYPE_CHECKING:
    from oidc_server import OIDCServer

__all__ = ["apps", "sync_server"]  # fixtures, imported for pytest

KEY = "keliweb"
THREADS = 16


@pytest.fixture
def tm(sync_server: ThreadedServer) -> Iterator[SyncTokenManager]:
    # These tests reject tokens several times a second; the manager's guard against refresh
    # loops (invalidate_interval, tested separately below) would refuse the later rejections.
    with SyncTokenManager(invalidate_interval=0) as manager:
        manager.add(KEY, sync_server.provider(), refresh_token=sync_server.seed())
        yield manager


@pytest.fixture
def http(tm: SyncTokenManager) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.auth = TokenAuth(tm, KEY)
        yield session


def bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme == "Bearer" and token else None


def app_with(handler: web.RequestHandler) -> web.Application:  # type: ignore[name-defined]
    app = web.Application()
    app.router.add_route("*", "/api", handler)
    return app


def invalid_token() -> web.Response:
    return web.json_response(
        {"error": "invalid_token"},
        status=401,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def test_sets_the_authorization_header_from_the_cached_token(
    sync_server: ThreadedServer, tm: SyncTokenManager, http: requests.Session
) -> None:
    for _ in range(3):
        assert http.get(sync_server.server.api_url).status_code == 200
    token = tm.get_token(KEY)
    assert sync_server.on(sync_server.server.access_token_uses, token.access_token) == 3
    assert sync_server.token_requests == 1


def test_a_rejected_token_is_refreshed_once_and_the_request_sent_again(
    sync_server: ThreadedServer, tm: SyncTokenManager, http: requests.Session
) -> None:
    assert http.get(sync_server.server.api_url).status_code == 200
    old = tm.get_token(KEY)
    sync_server.on(sync_server.server.expire_all_access_tokens)

    response = http.get(sync_server.server.api_url)

    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    new = tm.get_token(KEY)
    assert new.access_token != old.access_token
    assert response.request.headers["Authorization"] == new.authorization
    assert sync_server.token_requests == 2


def test_401s_from_many_threads_share_one_refresh(
    sync_server: ThreadedServer, apps: Apps, tm: SyncTokenManager
) -> None:
    old = tm.get_token(KEY)
    arrived: list[str | None] = []
    all_in = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        arrived.append(bearer(request))
        if bearer(request) != old.access_token:
            return web.Response(text="ok")
        if arrived.count(old.access_token) == THREADS:
            all_in.set()
        await all_in.wait()  # every thread's request is in flight with the old token
        return invalid_token()

    api = apps.start(app_with(handler)) + "/api"
    auth = TokenAuth(tm, KEY)
    with ThreadPoolExecutor(THREADS) as pool:
        statuses = list(pool.map(lambda _: requests.get(api, auth=auth).status_code, range(16)))

    assert statuses == [200] * THREADS
    assert sync_server.token_requests == 2  # sixteen 401s, one refresh
    new = tm.get_token(KEY).access_token
    assert sorted(arrived, key=str) == sorted([old.access_token] * THREADS + [new] * THREADS)


def test_a_401_to_the_retry_is_returned_without_looping(
    sync_server: ThreadedServer, apps: Apps, http: requests.Session
) -> None:
    seen: list[str | None] = []

    async def always_401(request: web.Request) -> web.Response:
        seen.append(bearer(request))
        return invalid_token()

    api = apps.start(app_with(always_401)) + "/api"
    response = http.get(api)
    assert response.status_code == 401
    assert response.json() == {"error": "invalid_token"}  # returned intact
    assert len(seen) == 2  # the first attempt and one retry, never more
    assert seen[0] != seen[1]
    assert sync_server.token_requests == 2


@pytest.mark.parametrize(
    "challenge",
    ['Bearer error="insufficient_scope", scope="admin"', 'Bearer realm="x", error=invalid_request'],
)
def test_a_401_with_another_bearer_error_is_not_retried(
    sync_server: ThreadedServer, apps: Apps, http: requests.Session, challenge: str
) -> None:
    hits = 0

    async def forbidden(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    assert http.get(apps.start(app_with(forbidden)) + "/api").status_code == 401
    assert hits == 1
    assert sync_server.token_requests == 1


def test_a_401_without_challenge_is_retried_unless_invalid_token_is_required(
    sync_server: ThreadedServer, apps: Apps, tm: SyncTokenManager
) -> None:
    rejected = {tm.get_token(KEY).access_token}

    async def laravel(request: web.Request) -> web.Response:
        if bearer(request) in rejected:
            return web.json_response({"message": "Unauthenticated."}, status=401)
        return web.json_response({"ok": True})

    api = apps.start(app_with(laravel)) + "/api"
    assert requests.get(api, auth=TokenAuth(tm, KEY)).status_code == 200
    assert sync_server.token_requests == 2
    rejected.add(tm.get_token(KEY).access_token)
    strict = TokenAuth(tm, KEY, require_invalid_token=True)
    assert requests.get(api, auth=strict).status_code == 401
    assert sync_server.token_requests == 2


def test_a_401_that_is_not_retried_keeps_a_readable_body(
    sync_server: ThreadedServer, apps: Apps
) -> None:
    """With the default invalidate_interval the manager refuses a second rejection at once: the
    401 then comes back untouched."""
    body = {"message": "Unauthenticated."}

    async def always_401(request: web.Request) -> web.Response:
        return web.json_response(body, status=401)

    api = apps.start(app_with(always_401)) + "/api"
    with SyncTokenManager() as tm:
        tm.add(KEY, sync_server.provider(), refresh_token=sync_server.seed())
        auth = TokenAuth(tm, KEY)
        first = requests.get(api, auth=auth)  # retried once, refused again
        second = requests.get(api, auth=auth)  # within invalidate_interval: not retried
    assert (first.status_code, len(first.history)) == (401, 1)
    assert (second.status_code, second.history) == (401, [])
    assert first.json() == second.json() == body
    assert sync_server.token_requests == 2


@pytest.mark.parametrize(
    "body",
    [
        {"data": b"raw bytes"},
        {"data": "text"},
        {"data": {"a": "1", "b": "2"}},
        {"json": {"invoice": 42}},
        {"files": {"upload": ("a.txt", b"file content")}},
    ],
    ids=["bytes", "str", "form", "json", "multipart"],
)
def test_bodies_in_memory_are_sent_again(
    apps: Apps, tm: SyncTokenManager, body: dict[str, object]
) -> None:
    received: list[bytes] = []
    rejected = {tm.get_token(KEY).access_token}

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        return invalid_token() if bearer(request) in rejected else web.Response(text="ok")

    response = requests.post(
        apps.start(app_with(handler)) + "/api", auth=TokenAuth(tm, KEY), **body
    )  # type: ignore[arg-type]
    assert response.status_code == 200
    assert len(received) == 2
    assert received[0] == received[1] != b""


def test_a_seekable_file_body_is_sent_again_from_where_it_started(
    apps: Apps, tm: SyncTokenManager
) -> None:
    received: list[bytes] = []
    rejected = {tm.get_token(KEY).access_token}

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        return invalid_token() if bearer(request) in rejected else web.Response(text="ok")

    upload = io.BytesIO(b"skipped header|the body")
    upload.seek(len(b"skipped header|"))
    response = requests.put(
        apps.start(app_with(handler)) + "/api", data=upload, auth=TokenAuth(tm, KEY)
    )
    assert response.status_code == 200
    assert received == [b"the body", b"the body"]


def test_a_streamed_body_is_not_sent_again(
    apps: Apps, tm: SyncTokenManager, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[bytes] = []
    old = tm.get_token(KEY)

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        return invalid_token() if bearer(request) == old.access_token else web.Response(text="ok")

    def chunks() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    api = apps.start(app_with(handler)) + "/api"
    with caplog.at_level(logging.WARNING, logger="asynctoken"):
        response = requests.post(api, data=chunks(), auth=TokenAuth(tm, KEY))
    assert response.status_code == 401
    assert received == [b"part one, part two"]  # never sent twice
    assert "cannot be sent again" in caplog.text
    assert tm.get_token(KEY).access_token != old.access_token  # the next request gets a new one


def test_the_token_goes_to_its_origin_only_and_not_through_redirects(
    sync_server: ThreadedServer, apps: Apps, tm: SyncTokenManager, http: requests.Session
) -> None:
    other_seen: list[str | None] = []

    async def other(request: web.Request) -> web.Response:
        other_seen.append(request.headers.get("Authorization"))
        return web.json_response({"message": "Unauthenticated."}, status=401)

    other_api = apps.start(app_with(other)) + "/api"

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(other_api)

    home = apps.start(app_with(redirect)) + "/api"
    assert http.get(sync_server.server.api_url).status_code == 200  # pins the fake server

    assert http.get(other_api).status_code == 401  # another origin: no token, no retry
    redirected = TokenAuth(tm, KEY, origins=[home])
    response = requests.get(home, auth=redirected)
    assert response.status_code == 401
    assert [r.status_code for r in response.history] == [302]
    assert other_seen == [None, None]
    assert sync_server.token_requests == 1


def test_explicit_origins(sync_server: ThreadedServer, apps: Apps, tm: SyncTokenManager) -> None:
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(bearer(request))
        return web.Response(text="ok")

    second = apps.start(app_with(handler))
    auth = TokenAuth(tm, KEY, origins=[sync_server.server.base_url, second])
    assert requests.get(sync_server.server.api_url, auth=auth).status_code == 200
    assert requests.get(second + "/api", auth=auth).status_code == 200
    assert seen == [tm.get_token(KEY).access_token]


def test_plain_http_to_another_host_is_refused_before_anything_is_sent(
    tm: SyncTokenManager,
) -> None:
    with pytest.raises(ConfigurationError, match="plain http"):
        requests.get("http://api.example.com/invoices", auth=TokenAuth(tm, KEY))
    with pytest.raises(ConfigurationError, match="plain http"):
        TokenAuth(tm, KEY, origins=["http://api.example.com"])
    allowed = TokenAuth(tm, KEY, origins=["http://api.example.com"], allow_insecure_http=True)
    assert "allow_insecure_http=True" in repr(allowed)


def test_bad_configuration_is_refused(tm: SyncTokenManager) -> None:
    with pytest.raises(ConfigurationError, match="SyncTokenManager"):
        TokenAuth(TokenManager(), KEY)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TokenAuth(tm, "")
    with pytest.raises(ConfigurationError):
        TokenAuth(tm, KEY, origins="https://one.example")  # type: ignore[arg-type]


def test_token_errors_reach_the_caller(sync_server: ThreadedServer) -> None:
    with SyncTokenManager() as tm:
        tm.add(KEY, sync_server.provider(), refresh_token="def50200" + "0" * 40)
        with pytest.raises(InvalidGrantError):
            requests.get(sync_server.server.api_url, auth=TokenAuth(tm, KEY))


def test_repr_names_the_options_and_no_secret(
    sync_server: ThreadedServer, tm: SyncTokenManager, http: requests.Session
) -> None:
    http.get(sync_server.server.api_url)
    text = repr(http.auth)
    assert KEY in text
    assert sync_server.server.base_url.removeprefix("http://") in text
    assert tm.get_token(KEY).access_token not in text


def test_without_requests_the_module_says_what_to_install() -> None:
    code = "import sys; sys.modules['requests'] = None; import asynctoken.requests"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "pip install 'asynctoken[requests]'" in done.stderr


def test_dpop_bound_tokens_get_a_proof_per_request_and_a_resource_nonce_is_answered(
    oidc_server: OIDCServer,
) -> None:
    """Against the certified OpenID provider: its resource checks the DPoP binding and asks for
    a nonce of its own once."""
    from test_oidc_shared import credentials, provider_from

    spec = credentials(oidc_server)[0]  # private_key_jwt + DPoP, the resource wants a nonce
    assert spec["key"] == "key-jwt-dpop-nonce"
    client_id = spec["provider"]["client_id"]
    before = oidc_server.stats(client_id)
    with SyncTokenManager() as tm, requests.Session() as http:
        tm.add("k", provider_from(spec["provider"]), refresh_token=oidc_server.seed(client_id))
        http.auth = TokenAuth(tm, "k")
        for suffix in ("", "?page=2"):
            response = http.post(spec["resource"] + suffix, data=b"payload")
            assert response.status_code == 200, response.text
            assert response.json()["bound"] == {"jkt": True, "x5t": False}
    stats = oidc_server.stats(client_id)
    new = {name: stats.get(name, 0) - before.get(name, 0) for name in stats}
    assert new["resource_ok"] == 2
    assert new["resource_use_dpop_nonce"] == 1  # asked once, then remembered
    assert new["token_ok"] == 1
