"""The fake OAuth server, driven with plain aiohttp requests (never the asynctoken client).

Each flavor's request and answer shapes, rotation and reuse detection, error shapes, failure
injection, the gate, the protected endpoint, the fake clock, loopback-only binding, the pytest
fixtures and the standalone process.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

import asynctoken.testing
from asynctoken import Token
from asynctoken.testing import FakeClock, FakeOAuthServer, FakeOAuthServerFactory

CNPJ = "11222333000181"


class Answer:
    """A fully read HTTP answer."""

    def __init__(self, status: int, headers: CIMultiDictProxy[str], raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # no cookie jar: ERPeasy's Set-Cookie must be read from the header, never stored
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Answer:
    async with http.request(method, url, **kwargs) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


def basic(client_id: str = "test-client", secret: str = "test-secret") -> dict[str, str]:
    token = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def keliweb_form(refresh_token: str, **overrides: str) -> dict[str, str]:
    form = {
        "grant_type": "refresh_token",
        "client_id": "test-client",
        "client_secret": "test-secret",
        "refresh_token": refresh_token,
    }
    form.update(overrides)
    return form


async def keliweb_refresh(
    http: aiohttp.ClientSession, server: FakeOAuthServer, refresh_token: str
) -> Answer:
    return await call(http, "POST", server.token_url, data=keliweb_form(refresh_token))


async def erpeasy_refresh(
    http: aiohttp.ClientSession,
    server: FakeOAuthServer,
    refresh_token: str,
    *,
    how: str = "cookie",
    headers: Mapping[str, str] | None = None,
) -> Answer:
    form = {"grant_type": "refresh_token"}
    hdrs = dict(basic() if headers is None else headers)
    if how == "cookie":
        hdrs["Cookie"] = f"refresh_token={refresh_token}"
    else:
        form["refresh_token"] = refresh_token
    return await call(http, "POST", server.token_url, data=form, headers=hdrs)


def cookie_token(answer: Answer) -> str:
    (cookie,) = answer.headers.getall("Set-Cookie")
    name_value = cookie.split(";", 1)[0]
    name, _, value = name_value.partition("=")
    assert name == "refresh_token"
    return value


def jwt_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return data


# -- package surface -------------------------------------------------------------------------


def test_exported_members() -> None:
    # pytest's assertion rewriting of plugin packages adds "@py_builtins"-style names: skip them.
    exported = {n for n in dir(asynctoken.testing) if not n.startswith("_") and n.isidentifier()}
    exported -= {"annotations"}
    assert asynctoken.testing.__all__ == sorted(asynctoken.testing.__all__)
    assert set(asynctoken.testing.__all__) == exported - {"pytest_plugin"}


# -- Keliweb (Laravel Passport) ----------------------------------------------------------------


async def test_keliweb_refresh_rotates(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    old = server.issue_refresh_token()
    assert old.startswith("def50200")
    answer = await keliweb_refresh(http, server, old)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json
    assert list(body) == ["token_type", "expires_in", "access_token", "refresh_token"]
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert isinstance(body["expires_in"], int)
    assert body["refresh_token"].startswith("def50200")
    assert body["refresh_token"] != old
    assert jwt_part(body["access_token"], 0)["typ"] == "JWT"
    claims = jwt_part(body["access_token"], 1)
    assert claims["exp"] - claims["iat"] == 3600
    assert server.valid_refresh_tokens == [body["refresh_token"]]
    assert not server.is_valid_refresh_token(old)
    assert server.is_valid_access_token(body["access_token"])

    (record,) = server.requests
    assert record.grant_type == "refresh_token"
    assert record.refresh_token == old
    assert record.refresh_token_source == "body"
    assert record.client_auth == "post"
    assert record.client_id == "test-client"
    assert record.outcome == "ok"
    assert record.status == 200
    assert record.done
    assert record.issued_refresh_token == body["refresh_token"]
    assert record.issued_access_token == body["access_token"]
    assert record.content_type == "application/x-www-form-urlencoded"
    assert server.token_requests == 1


async def test_keliweb_accepts_multipart(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in keliweb_form(keliweb_server.issue_refresh_token()).items():
        form.add_field(name, value)
    headers = {"X-Requested-With": "XMLHttpRequest"}
    answer = await call(http, "POST", keliweb_server.token_url, data=form, headers=headers)
    assert answer.status == 200
    (record,) = keliweb_server.requests
    assert record.content_type == "multipart/form-data"
    assert record.headers["x-requested-with"] == "XMLHttpRequest"


async def test_reuse_revokes_the_whole_family(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    rt0 = server.issue_refresh_token()
    other = server.issue_refresh_token()  # another family, untouched
    first = (await keliweb_refresh(http, server, rt0)).json
    rt1, at1 = first["refresh_token"], first["access_token"]

    reused = await keliweb_refresh(http, server, rt0)
    assert reused.status == 400
    assert reused.json == {
        "error": "invalid_grant",
        "error_description": "The refresh token is invalid.",
        "hint": "Token has been revoked",
    }
    assert server.reuse_detected == 1
    assert server.requests[-1].outcome == "reused"
    # RFC 9700 §4.14: the newest refresh token and its access token die too
    assert not server.is_valid_refresh_token(rt1)
    assert not server.is_valid_access_token(at1)
    assert server.valid_refresh_tokens == [other]
    answer = await keliweb_refresh(http, server, rt1)
    assert answer.status == 400
    assert server.requests[-1].outcome == "revoked"
    api = await call(http, "GET", server.api_url, headers={"Authorization": f"Bearer {at1}"})
    assert api.status == 401
    assert api.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_reuse_without_family_revocation(
    fake_oauth_server: FakeOAuthServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await fake_oauth_server("keliweb", revoke_family_on_reuse=False)
    rt0 = server.issue_refresh_token()
    rt1 = (await keliweb_refresh(http, server, rt0)).json["refresh_token"]
    assert (await keliweb_refresh(http, server, rt0)).status == 400
    assert server.reuse_detected == 1
    assert server.valid_refresh_tokens == [rt1]


async def test_keliweb_legacy_passport_errors(
    fake_oauth_server: FakeOAuthServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await fake_oauth_server("keliweb", passport_legacy_errors=True)
    answer = await keliweb_refresh(http, server, "def50200" + "0" * 64)
    assert answer.status == 401
    assert answer.json == {
        "error": "invalid_request",
        "error_description": "The refresh token is invalid.",
        "hint": "Token has been revoked",
    }
    assert server.requests[0].outcome == "invalid"


async def test_keliweb_client_and_password_errors(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    rt = server.issue_refresh_token()
    wrong = keliweb_form(rt, client_secret="nope")
    answer = await call(http, "POST", server.token_url, data=wrong)
    assert answer.status == 401
    assert answer.json == {
        "error": "invalid_client",
        "error_description": "Client authentication failed",
    }
    assert server.is_valid_refresh_token(rt)  # a rejected client consumes nothing

    password = {
        "grant_type": "password",
        "client_id": "test-client",
        "client_secret": "test-secret",
        "username": "user@example.com",
        "password": "bad",
    }
    answer = await call(http, "POST", server.token_url, data=password)
    assert answer.status == 400
    assert answer.json["error"] == "invalid_grant"
    assert answer.json["error_description"] == "The user credentials were incorrect."

    answer = await call(http, "POST", server.token_url, data={**password, "password": "pw"})
    assert answer.status == 200
    assert answer.json["refresh_token"] in server.valid_refresh_tokens
    assert server.requests[-1].username == "user@example.com"

    answer = await call(http, "POST", server.token_url, data=keliweb_form(rt, grant_type="x"))
    assert answer.status == 400
    assert answer.json["error"] == "unsupported_grant_type"
    assert [r.outcome for r in server.requests] == [
        "invalid_client",
        "invalid",
        "ok",
        "unsupported_grant_type",
    ]


# -- ERPeasy (Spring) ------------------------------------------------------------------------


async def test_erpeasy_refresh_answers_with_a_cookie(
    erpeasy_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = erpeasy_server
    old = server.issue_refresh_token()
    answer = await erpeasy_refresh(http, server, old)
    assert answer.status == 200
    body = answer.json
    assert "refresh_token" not in body
    assert body["token_type"] == "bearer"
    assert body["scope"] == "read write"
    assert body["expires_in"] == 3600
    assert {k: body[k] for k in ("user_id", "user_email", "company_id", "company_document")} == {
        "user_id": 1,
        "user_email": "user@example.com",
        "company_id": 1234,
        "company_document": CNPJ,
    }
    assert body["company_name"]
    assert body["user_name"]
    assert body["jti"] == jwt_part(body["access_token"], 1)["jti"]
    new = cookie_token(answer)
    assert answer.headers["Set-Cookie"] == (
        f"refresh_token={new}; Domain=api.erpeasy.compels.net; Path=/oauth/token; Secure; HttpOnly"
    )
    assert server.valid_refresh_tokens == [new]
    record = server.requests[0]
    assert record.refresh_token == old
    assert record.refresh_token_source == "cookie"
    assert record.client_auth == "basic"
    assert record.issued_refresh_token == new

    # the body field works too, and the newest cookie keeps rotating
    answer = await erpeasy_refresh(http, server, new, how="body")
    assert answer.status == 200
    assert server.requests[1].refresh_token_source == "body"
    assert server.valid_refresh_tokens == [cookie_token(answer)]


async def test_erpeasy_requires_basic_auth(
    erpeasy_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = erpeasy_server
    rt = server.issue_refresh_token()
    form = {"grant_type": "refresh_token", "refresh_token": rt}
    post_creds = {**form, "client_id": "test-client", "client_secret": "test-secret"}
    answer = await call(http, "POST", server.token_url, data=post_creds)
    assert answer.status == 401
    assert answer.json["error"] == "invalid_client"
    assert answer.headers["WWW-Authenticate"].startswith("Basic")
    answer = await erpeasy_refresh(http, server, rt, headers=basic(secret="wrong"))
    assert answer.status == 401
    assert answer.json["error"] == "invalid_client"
    assert server.valid_refresh_tokens == [rt]


async def test_erpeasy_unknown_and_expired_refresh_tokens(
    fake_oauth_server: FakeOAuthServerFactory, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    server = await fake_oauth_server("erpeasy", clock=clock, refresh_token_ttl=100)
    unknown = await erpeasy_refresh(http, server, "not-a-token-we-issued")
    assert unknown.status == 400
    assert unknown.json["error"] == "invalid_grant"
    rt = server.issue_refresh_token()
    clock.advance(100)
    expired = await erpeasy_refresh(http, server, rt)
    assert expired.status == 401
    assert expired.json["error"] == "invalid_token"
    assert rt not in expired.json["error_description"]  # never echo a token
    assert [r.outcome for r in server.requests] == ["invalid", "expired"]


async def test_erpeasy_cookie_only_mode_ignores_the_body(
    fake_oauth_server: FakeOAuthServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await fake_oauth_server("erpeasy", erpeasy_refresh_token_in=("cookie",))
    rt = server.issue_refresh_token()
    answer = await erpeasy_refresh(http, server, rt, how="body")
    assert answer.status == 400
    assert answer.json["error"] == "invalid_request"
    assert (await erpeasy_refresh(http, server, rt)).status == 200


async def test_erpeasy_password_grant(
    erpeasy_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = erpeasy_server
    form = {
        "grant_type": "password",
        "email": "user@example.com",
        "password": "pw",
        "company": "11.222.333/0001-81",
    }
    answer = await call(http, "POST", server.token_url, data=form, headers=basic())
    assert answer.status == 200
    assert server.valid_refresh_tokens == [cookie_token(answer)]
    assert server.requests[0].username == "user@example.com"
    wrong_company = {**form, "company": "99999999000199"}
    answer = await call(http, "POST", server.token_url, data=wrong_company, headers=basic())
    assert answer.status == 400
    assert answer.json["error"] == "invalid_grant"


# -- generic OAuth2 (RFC 6749) -----------------------------------------------------------------


async def test_oauth2_client_authentication(
    oauth2_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = oauth2_server
    rt = server.issue_refresh_token()
    form = {"grant_type": "refresh_token", "refresh_token": rt}
    answer = await call(http, "POST", server.token_url, data=form, headers=basic())
    assert answer.status == 200
    rt = answer.json["refresh_token"]
    post = {**form, "refresh_token": rt, "client_id": "test-client", "client_secret": "test-secret"}
    answer = await call(http, "POST", server.token_url, data=post)
    assert answer.status == 200
    rt = answer.json["refresh_token"]
    both = {**post, "refresh_token": rt}
    answer = await call(http, "POST", server.token_url, data=both, headers=basic())
    assert answer.status == 400
    assert answer.json["error"] == "invalid_request"
    answer = await call(http, "POST", server.token_url, data=form, headers=basic(secret="x"))
    assert answer.status == 401
    assert answer.json["error"] == "invalid_client"
    assert "WWW-Authenticate" in answer.headers
    answer = await call(
        http, "POST", server.token_url, data={"grant_type": "device_code"}, headers=basic()
    )
    assert answer.status == 400
    assert answer.json["error"] == "unsupported_grant_type"
    assert [r.client_auth for r in server.requests] == ["basic", "post", "both", "basic", "basic"]
    assert server.valid_refresh_tokens == [rt]


async def test_oauth2_client_credentials_and_no_rotation(
    fake_oauth_server: FakeOAuthServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await fake_oauth_server("oauth2", rotate=False, expires_in=60)
    cc = {"grant_type": "client_credentials", "scope": "read"}
    answer = await call(http, "POST", server.token_url, data=cc, headers=basic())
    assert answer.status == 200
    assert answer.json == {
        "access_token": answer.json["access_token"],
        "token_type": "Bearer",
        "expires_in": 60,
        "scope": "read",
    }
    rt = server.issue_refresh_token()
    for _ in range(3):
        form = {"grant_type": "refresh_token", "refresh_token": rt}
        answer = await call(http, "POST", server.token_url, data=form, headers=basic())
        assert answer.status == 200
        assert "refresh_token" not in answer.json  # keep the old one (RFC 6749 §6)
    assert server.valid_refresh_tokens == [rt]
    assert server.reuse_detected == 0


# -- protected endpoint and clock --------------------------------------------------------------


async def test_protected_endpoint(
    fake_oauth_server: FakeOAuthServerFactory, http: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    server = await fake_oauth_server("keliweb", clock=clock, expires_in=60)
    access = (await keliweb_refresh(http, server, server.issue_refresh_token())).json[
        "access_token"
    ]
    auth = {"Authorization": f"Bearer {access}"}
    answer = await call(http, "GET", server.api_url, headers=auth)
    assert answer.status == 200
    assert answer.json == {"ok": True, "client": "test-client", "method": "GET", "body_len": 0}
    answer = await call(http, "POST", server.api_url, headers=auth, data=b"12345")
    assert answer.json["body_len"] == 5
    assert answer.json["method"] == "POST"

    missing = await call(http, "GET", server.api_url)
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    unknown = await call(http, "GET", server.api_url, headers={"Authorization": "Bearer nope"})
    assert unknown.status == 401
    assert unknown.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

    clock.advance(59.9)
    assert (await call(http, "GET", server.api_url, headers=auth)).status == 200
    clock.advance(0.1)  # exactly expires_in later: expired
    expired = await call(http, "GET", server.api_url, headers=auth)
    assert expired.status == 401
    assert expired.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

    assert server.api_requests == 6
    assert server.api_unauthorized == 3
    assert server.access_token_uses(access) == 4
    assert [c.outcome for c in server.api_calls] == [
        "ok",
        "ok",
        "missing",
        "unknown",
        "ok",
        "expired",
    ]
    assert await server.wait_for_api_requests(6) == 6


async def test_expire_and_revoke_by_hand(keliweb_server: FakeOAuthServer) -> None:
    server = keliweb_server
    token = server.issue_token()
    assert isinstance(token, Token)
    assert token.provider == "keliweb"
    assert server.is_valid_access_token(token.access_token)
    assert token.refresh_token is not None
    server.expire_all_access_tokens()
    assert not server.is_valid_access_token(token.access_token)
    assert server.is_valid_refresh_token(token.refresh_token)
    assert server.revoke(token.refresh_token)
    assert not server.is_valid_refresh_token(token.refresh_token)
    assert not server.revoke("unknown")
    other = server.issue_token()
    assert other.refresh_token is not None
    assert server.revoke(other.access_token, family=True)
    assert not server.is_valid_refresh_token(other.refresh_token)
    assert server.token_requests == 0


def test_fake_clock() -> None:
    clock = FakeClock(time=1000.0, monotonic=5.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1002.5, 7.5)
    clock.set_wall_time(10.0)  # wall clock steps back, monotonic does not
    assert (clock.time(), clock.monotonic()) == (10.0, 7.5)
    with pytest.raises(ValueError, match="negative"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="finite"):
        clock.advance(float("nan"))
    assert repr(clock) == "FakeClock(time=10.0, monotonic=7.5)"
    assert isinstance(clock, asynctoken.Clock)


# -- failure injection -------------------------------------------------------------------------


async def test_injected_failures_do_not_consume_the_refresh_token(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    rt = server.issue_refresh_token()
    server.fail_next(2)
    server.fail_next(status=429, retry_after=7)
    server.fail_next(status=400, body={"error": "invalid_scope", "error_description": "no"})
    server.fail_next(status=408, retry_after=1.5)
    assert server.pending_failures == 5

    first = await keliweb_refresh(http, server, rt)
    assert first.status == 503
    assert first.json["error"] == "temporarily_unavailable"
    assert (await keliweb_refresh(http, server, rt)).status == 503
    limited = await keliweb_refresh(http, server, rt)
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "7"
    custom = await keliweb_refresh(http, server, rt)
    assert custom.status == 400
    assert custom.json == {"error": "invalid_scope", "error_description": "no"}
    timeout = await keliweb_refresh(http, server, rt)
    assert timeout.status == 408
    assert timeout.headers["Retry-After"] == "1.5"

    assert server.valid_refresh_tokens == [rt]
    assert (await keliweb_refresh(http, server, rt)).status == 200
    assert [r.outcome for r in server.requests] == [
        "injected:503",
        "injected:503",
        "injected:429",
        "injected:400",
        "injected:408",
        "ok",
    ]
    assert all(r.refresh_token == rt for r in server.requests)
    assert server.reuse_detected == 0


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [
        ("html", "text/html"),
        ("invalid_json", "application/json"),
        ("missing_access_token", "application/json"),
        ("bad_expires_in", "application/json"),
        ("not_object", "application/json"),
        ("empty", "application/json"),
        ("oversized", "application/json"),
    ],
)
async def test_malformed_answers(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession, kind: Any, content_type: str
) -> None:
    server = keliweb_server
    rt = server.issue_refresh_token()
    server.malform_next(kind)
    answer = await keliweb_refresh(http, server, rt)
    assert answer.status == 200
    assert answer.headers["Content-Type"] == content_type
    try:
        body = answer.json
    except ValueError:
        body = None
    usable = (
        isinstance(body, dict)
        and isinstance(body.get("access_token"), str)
        and isinstance(body.get("expires_in"), (int, float))
    )
    assert not usable
    if kind == "oversized":
        assert len(answer.raw) > 1024 * 1024
    assert server.requests[0].outcome == f"injected:{kind}"
    assert server.valid_refresh_tokens == [rt]


async def test_html_error_page_and_disconnect(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    rt = server.issue_refresh_token()
    server.fail_next(status=502, body="<html>Bad Gateway</html>", content_type="text/html")
    server.disconnect_next()
    answer = await keliweb_refresh(http, server, rt)
    assert answer.status == 502
    assert answer.headers["Content-Type"] == "text/html"
    with pytest.raises(aiohttp.ClientError):
        await keliweb_refresh(http, server, rt)
    assert server.requests[1].outcome == "injected:disconnect"
    assert server.requests[1].status is None
    assert (await keliweb_refresh(http, server, rt)).status == 200


def test_injection_arguments_are_checked() -> None:
    server = FakeOAuthServer()
    with pytest.raises(ValueError, match="n must"):
        server.fail_next(0)
    with pytest.raises(ValueError, match="status"):
        server.fail_next(status=99)
    with pytest.raises(ValueError, match="delay"):
        server.delay_next(-1)
    with pytest.raises(ValueError, match="malformed kind"):
        server.malform_next("weird")  # type: ignore[arg-type]
    assert server.pending_failures == 0
    server.fail_next(3)
    server.clear_failures()
    assert server.pending_failures == 0


async def test_delays_are_queued_per_request(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    server.delay_next(0.2)
    rts = [server.issue_refresh_token() for _ in range(2)]
    slow = asyncio.create_task(keliweb_refresh(http, server, rts[0]))
    await server.wait_for_token_requests(1)
    fast = await keliweb_refresh(http, server, rts[1])  # not delayed: answered first
    assert fast.status == 200
    assert not slow.done()
    assert (await slow).status == 200
    assert server.requests[0].outcome == "ok"
    server.fail_next(status=None, delay=0.01)  # a delay only: answered normally
    assert (await keliweb_refresh(http, server, server.issue_refresh_token())).status == 200
    assert server.pending_failures == 0


# -- gate and waiting --------------------------------------------------------------------------


async def test_hold_parks_requests_until_released(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    rt = server.issue_refresh_token()
    server.hold()
    tasks = [asyncio.create_task(keliweb_refresh(http, server, rt)) for _ in range(20)]
    assert await server.wait_for_token_requests(20) == 20
    assert server.parked == 20
    assert server.held
    assert all(not r.done for r in server.requests)
    assert server.valid_refresh_tokens == [rt]  # nothing decided while held

    assert server.release(1) == 1
    await server.wait_for_token_responses(1)
    assert server.requests[0].outcome == "ok"
    assert server.parked == 19
    assert server.held

    assert server.release() == 19
    answers = await asyncio.gather(*tasks)
    assert sorted(a.status for a in answers) == [200] + [400] * 19
    assert server.reuse_detected == 19
    assert server.valid_refresh_tokens == []  # family revoked at the first reuse
    assert not server.held


async def test_hold_as_context_manager(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    with server.hold():
        task = asyncio.create_task(keliweb_refresh(http, server, server.issue_refresh_token()))
        await server.wait_for_token_requests(1)
        assert server.parked == 1
    assert (await task).status == 200


async def test_wait_for_token_requests_times_out(keliweb_server: FakeOAuthServer) -> None:
    assert await keliweb_server.wait_for_token_requests(0) == 0
    with pytest.raises(TimeoutError, match="0 of 1 token requests"):
        await keliweb_server.wait_for_token_requests(1, timeout=0.05)


async def test_close_answers_parked_requests_and_fails_waiters(
    http: aiohttp.ClientSession,
) -> None:
    server = await FakeOAuthServer("keliweb").start()
    rt = server.issue_refresh_token()
    server.hold()
    parked = asyncio.create_task(keliweb_refresh(http, server, rt))
    server.delay = 30.0
    await server.wait_for_token_requests(1)
    waiter = asyncio.create_task(server.wait_for_token_requests(5))
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.close()
    assert loop.time() - started < 2.0
    assert (await parked).status == 503
    with pytest.raises(RuntimeError, match="closed"):
        await waiter
    assert server.requests[0].outcome == "cancelled"
    assert server.valid_refresh_tokens == [rt]
    await server.close()  # idempotent
    with pytest.raises(RuntimeError):
        await server.start()


async def test_many_concurrent_connections(
    keliweb_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = keliweb_server
    rts = [server.issue_refresh_token() for _ in range(300)]
    answers = await asyncio.gather(*(keliweb_refresh(http, server, rt) for rt in rts))
    assert {a.status for a in answers} == {200}
    assert server.token_requests == 300
    assert len(server.valid_refresh_tokens) == 300


# -- construction, secrets, determinism ----------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_only_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FakeOAuthServer(host=host)


def test_loopback_hosts_and_other_checks() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        FakeOAuthServer(host=host)
    with pytest.raises(ValueError, match="flavor"):
        FakeOAuthServer("github")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expires_in"):
        FakeOAuthServer(expires_in=-1)
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeOAuthServer().token_url


async def test_secrets_are_masked(http: aiohttp.ClientSession) -> None:
    server = await FakeOAuthServer(client_secret="s3cr3t-very-long-value").start()
    try:
        rt = server.issue_refresh_token()
        form = keliweb_form(rt, client_secret="s3cr3t-very-long-value")
        answer = await call(http, "POST", server.token_url, data=form)
        assert answer.status == 200
        text = repr(server) + repr(server.requests)
        for secret in ("s3cr3t-very-long-value", rt, answer.json["refresh_token"]):
            assert secret not in text
        assert server.base_url in repr(server)
    finally:
        await server.close()


async def test_settings_and_client_credentials_reprs_are_masked() -> None:
    from asynctoken.testing._endpoint import ClientCredentials

    secret, password = "s3cr3t-very-long-value", "mario-password-0123456789"
    server = FakeOAuthServer(client_secret=secret, users={"mario": password})
    settings = server._settings
    creds = ClientCredentials("client", secret, "post")
    for text in (repr(settings), str(settings), repr(creds), str(creds), repr([creds])):
        assert secret not in text
        assert password not in text
    assert "client_secret='s3cr…'" in repr(settings)
    assert "'mario': 'mari…'" in repr(settings)
    assert "client_id=" in repr(settings)
    assert (
        repr(creds) == "ClientCredentials(client_id='client', client_secret='s3cr…', method='post')"
    )
    assert repr(ClientCredentials(None, None, None)) == (
        "ClientCredentials(client_id=None, client_secret=None, method=None)"
    )
    assert creds == ("client", secret, "post")  # still the tuple it was


async def test_seed_makes_tokens_reproducible() -> None:
    a, b = FakeOAuthServer(seed=7), FakeOAuthServer(seed=7)
    assert a.issue_refresh_token() == b.issue_refresh_token()
    assert a.issue_refresh_token() != a.issue_refresh_token()


async def test_every_request_is_counted(
    oauth2_server: FakeOAuthServer, http: aiohttp.ClientSession
) -> None:
    server = oauth2_server
    assert (await call(http, "GET", server.token_url)).status == 405
    assert (await call(http, "POST", server.token_url, data={})).status == 400
    server.fail_next()
    assert (await call(http, "POST", server.token_url, data={})).status == 503
    assert server.token_requests == 3
    assert [r.outcome for r in server.requests] == [
        "method_not_allowed",
        "invalid_request",
        "injected:503",
    ]


async def test_fixture_factory_serves_every_flavor(
    fake_oauth_server: FakeOAuthServerFactory,
    keliweb_server: FakeOAuthServer,
    erpeasy_server: FakeOAuthServer,
    oauth2_server: FakeOAuthServer,
) -> None:
    assert [s.flavor for s in (keliweb_server, erpeasy_server, oauth2_server)] == [
        "keliweb",
        "erpeasy",
        "oauth2",
    ]
    extra = await fake_oauth_server("oauth2", client_id="other")
    assert extra.client_id == "other"
    assert len({s.token_url for s in (keliweb_server, erpeasy_server, oauth2_server, extra)}) == 4
    assert extra.token_url.startswith("http://127.0.0.1:")
    assert extra.api_url == extra.token_url.replace("/oauth/token", "/api/me")


# -- standalone process ------------------------------------------------------------------------


async def test_standalone_process(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asynctoken.testing",
        "--flavor",
        "keliweb",
        "--port",
        "0",
        "--expires-in",
        "60",
        "--lifetime",
        "30",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        token_url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        api_url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert token_url.startswith("http://127.0.0.1:")
        assert token_url.endswith("/oauth/token")
        base = token_url.removesuffix("/oauth/token")
        assert api_url == base + "/api/me"

        seed = await call(http, "POST", base + "/_fake/refresh-token")
        rt = seed.json["refresh_token"]
        answer = await call(http, "POST", token_url, data=keliweb_form(rt))
        assert answer.status == 200
        assert answer.json["expires_in"] == 60
        assert (await call(http, "POST", token_url, data=keliweb_form(rt))).status == 400
        injected = await call(http, "POST", base + "/_fake/fail-next", json={"status": 500})
        assert injected.json == {"pending_failures": 1}
        assert (await call(http, "POST", token_url, data=keliweb_form(rt))).status == 500
        stats = (await call(http, "GET", base + "/_fake/stats")).json
        assert stats["token_requests"] == 3
        assert stats["reuse_detected"] == 1
        assert stats["outcomes"] == {"ok": 1, "reused": 1, "injected:500": 1}
        summaries = (await call(http, "GET", base + "/_fake/requests")).json
        assert [s["outcome"] for s in summaries] == ["ok", "reused", "injected:500"]
        times = [s["loop_time"] for s in summaries]
        assert times == sorted(times)
    finally:
        if proc.returncode is None:
            proc.terminate()
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err.decode()
    assert rt not in (out + err).decode()


async def test_standalone_rejects_a_public_host() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asynctoken.testing",
        "--host",
        "0.0.0.0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2
    assert out == b""
    assert b"loopback" in err
