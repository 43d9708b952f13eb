"""Providers: request shapes, error mapping, configuration checks and secret hygiene.

aioresponses replaces ``ClientSession._request``: good for checking what a provider asks for and
how it maps answers. Anything that must go through a real session (cookies, middlewares,
redirects on the wire) is in ``test_providers_server.py``.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import traceback
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from multidict import CIMultiDict
from yarl import URL

from asynctoken import (
    ConfigurationError,
    InvalidClientError,
    InvalidGrantError,
    MalformedResponseError,
    Token,
    TokenEndpointError,
    TransientError,
)
from asynctoken.providers import ERPeasyProvider, KeliwebProvider, OAuth2Provider, Provider
from asynctoken.testing import FakeOAuthServer

KELIWEB_URL = "https://fatture.keliweb.it/oauth/token"
ERPEASY_URL = "https://api.erpeasy.compels.net/oauth/token"
GENERIC_URL = "https://auth.example.com/oauth2/token"

CLIENT_ID = "4a6af340-2672-11ec-8114-3ba47a898cf0"
CLIENT_SECRET = "UhoPgAS8rnAm57J8dLXWqKDTFnwjzS30pLzE572Z"
PASSWORD = "correct-horse-battery"
REFRESH = "def50200cb918cb70defe79d45f1f2193c4c0a959fd78a5c3123e5d3f33"
NEW_REFRESH = "def50200aaaabbbbccccddddeeeeffff0000111122223333444455556666"
ACCESS = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload.signature"
ISSUED_AT = 1_700_000_000.0

OK_BODY: dict[str, Any] = {
    "token_type": "Bearer",
    "expires_in": 3600,
    "access_token": ACCESS,
    "refresh_token": NEW_REFRESH,
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        yield s


class _CompatResponse(aiohttp.ClientResponse):
    """aiohttp 3.14 made ``stream_writer`` a required argument that aioresponses 0.7.9 does not
    pass (pnuckowski/aioresponses#289); supply a stand-in until aioresponses catches up."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        if "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
            kwargs.setdefault("stream_writer", types.SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class _Mock(aioresponses):
    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(*args, **kwargs)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with _Mock() as m:
        yield m


@pytest.fixture
async def oauth() -> AsyncIterator[FakeOAuthServer]:
    async with FakeOAuthServer("keliweb", expires_in=3600) as srv:
        yield srv


def keliweb_for(server: FakeOAuthServer) -> KeliwebProvider:
    return KeliwebProvider(server.client_id, server.client_secret, token_url=server.token_url)


def sent(m: aioresponses, url: str = KELIWEB_URL) -> dict[str, Any]:
    calls = m.requests[("POST", URL(url))]
    assert len(calls) == 1, "a provider makes exactly one request"
    kwargs: dict[str, Any] = calls[0].kwargs
    return kwargs


def keliweb(**kw: Any) -> KeliwebProvider:
    return KeliwebProvider(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **kw)


def erpeasy(**kw: Any) -> ERPeasyProvider:
    return ERPeasyProvider(client_id="erp-client", client_secret=CLIENT_SECRET, **kw)


def generic(**kw: Any) -> OAuth2Provider:
    kw.setdefault("token_url", GENERIC_URL)
    return OAuth2Provider(client_id="my client", client_secret="s3cr3t:with/odd chars", **kw)


def test_protocol_is_satisfied() -> None:
    providers: list[Provider] = [keliweb(), erpeasy(), generic()]
    assert all(isinstance(p, Provider) for p in providers)
    assert [p.name for p in providers] == ["keliweb", "erpeasy", "oauth2"]
    assert [p.token_url for p in providers] == [KELIWEB_URL, ERPEASY_URL, GENERIC_URL]
    with pytest.raises(AttributeError):
        keliweb().__dict__  # noqa: B018  (__slots__: no per-instance dict)


# --- request shapes -----------------------------------------------------------------------------


async def test_keliweb_refresh_request(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(KELIWEB_URL, payload=OK_BODY)
    token = await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    kwargs = sent(mocked)
    assert kwargs["data"] == {
        "grant_type": "refresh_token",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH,
    }
    assert kwargs["headers"]["X-Requested-With"] == "XMLHttpRequest"
    assert kwargs["headers"]["Accept"] == "application/json"
    assert "Authorization" not in kwargs["headers"]
    assert "Cookie" not in kwargs["headers"]
    assert kwargs["allow_redirects"] is False
    assert kwargs["middlewares"] == ()
    assert kwargs["raise_for_status"] is False
    assert kwargs["timeout"].total == 10.0
    assert token == Token(
        access_token=ACCESS,
        expires_at=ISSUED_AT + 3600,
        token_type="Bearer",
        refresh_token=NEW_REFRESH,
        scope=None,
        extra={},
        issued_at=ISSUED_AT,
        provider="keliweb",
    )


async def test_keliweb_password_grant(mocked: aioresponses, session: aiohttp.ClientSession) -> None:
    mocked.post(KELIWEB_URL, payload=OK_BODY)
    provider = keliweb(username="mario@example.it", password=PASSWORD)
    assert provider.can_reauthenticate
    token = await provider.fetch_token(session, refresh_token=None, issued_at=ISSUED_AT)
    assert sent(mocked)["data"] == {
        "grant_type": "password",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "username": "mario@example.it",
        "password": PASSWORD,
    }
    assert token.refresh_token == NEW_REFRESH


@pytest.mark.parametrize("factory", [keliweb, erpeasy, generic])
async def test_no_refresh_token_and_no_primary_grant(
    factory: Any, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    provider = factory()
    assert not provider.can_reauthenticate
    for refresh_token in (None, ""):
        with pytest.raises(InvalidGrantError, match="re-authorize: seed a refresh token") as info:
            await provider.fetch_token(session, refresh_token=refresh_token, issued_at=ISSUED_AT)
        assert info.value.status is None
    assert not mocked.requests, "no request without a grant to use"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("refresh_token_in", "cookie", "body_field"),
    [("both", True, True), ("cookie", True, False), ("body", False, True)],
)
async def test_erpeasy_refresh_request(
    refresh_token_in: Any,
    cookie: bool,
    body_field: bool,
    mocked: aioresponses,
    session: aiohttp.ClientSession,
) -> None:
    mocked.post(ERPEASY_URL, payload={"access_token": ACCESS, "expires_in": 300})
    provider = erpeasy(refresh_token_in=refresh_token_in)
    await provider.fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    kwargs = sent(mocked, ERPEASY_URL)
    assert kwargs["headers"]["Authorization"] == basic("erp-client", CLIENT_SECRET)
    assert kwargs["headers"].get("Cookie") == (f"refresh_token={REFRESH}" if cookie else None)
    expected = {"grant_type": "refresh_token"}
    if body_field:
        expected["refresh_token"] = REFRESH
    assert kwargs["data"] == expected
    assert kwargs["allow_redirects"] is False
    assert kwargs["middlewares"] == ()
    assert "cookies" not in kwargs


async def test_erpeasy_uncookieable_refresh_token(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(ERPEASY_URL, payload={"access_token": ACCESS, "expires_in": 300})
    await erpeasy().fetch_token(session, refresh_token="a b;c", issued_at=ISSUED_AT)
    kwargs = sent(mocked, ERPEASY_URL)
    assert "Cookie" not in kwargs["headers"]  # "both": the body field still carries it
    assert kwargs["data"]["refresh_token"] == "a b;c"
    with pytest.raises(InvalidGrantError, match="cookie"):
        await erpeasy(refresh_token_in="cookie").fetch_token(
            session, refresh_token="a b;c", issued_at=ISSUED_AT
        )


async def test_erpeasy_password_grant_keeps_extra_fields(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    answer = {
        "access_token": ACCESS,
        "token_type": "bearer",
        "expires_in": 43199,
        "scope": "read write",
        "user_id": 42,
        "user_name": "Maria",
        "user_email": "maria@example.com.br",
        "company_id": 7,
        "company_document": "12345678000190",
        "company_name": "ACME Ltda",
        "jti": "0b6f0c38-4e8f-4c4e-9f2f-5f8e0c3a1d2b",
    }
    mocked.post(
        ERPEASY_URL,
        payload=answer,
        headers={"Set-Cookie": f"refresh_token={NEW_REFRESH}; Path=/oauth/token; HttpOnly"},
    )
    provider = erpeasy(email="maria@example.com.br", password=PASSWORD, company="12345678000190")
    assert provider.can_reauthenticate
    token = await provider.fetch_token(session, refresh_token=None, issued_at=ISSUED_AT)
    kwargs = sent(mocked, ERPEASY_URL)
    assert kwargs["data"] == {
        "grant_type": "password",
        "email": "maria@example.com.br",
        "password": PASSWORD,
        "company": "12345678000190",
    }
    assert kwargs["headers"]["Authorization"] == basic("erp-client", CLIENT_SECRET)
    assert "Cookie" not in kwargs["headers"]
    assert token.refresh_token == NEW_REFRESH
    assert token.token_type == "bearer"
    assert token.authorization == f"Bearer {ACCESS}"
    assert token.scope == "read write"
    assert token.expires_at == ISSUED_AT + 43199
    assert token.provider == "erpeasy"
    assert dict(token.extra) == {k: v for k, v in answer.items() if k not in OK_BODY | {"scope": 0}}
    assert token.extra["company_id"] == 7


async def test_generic_basic_auth_is_form_urlencoded_first(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(GENERIC_URL, payload=OK_BODY)
    provider = generic(auth_method="client_secret_basic", scope="a b")
    await provider.fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    kwargs = sent(mocked, GENERIC_URL)
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before Base64.
    assert kwargs["headers"]["Authorization"] == basic("my+client", "s3cr3t%3Awith%2Fodd+chars")
    # A refresh keeps the originally granted scope (RFC 6749 §6): no scope, no client_id.
    assert kwargs["data"] == {"grant_type": "refresh_token", "refresh_token": REFRESH}


async def test_generic_client_credentials(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(GENERIC_URL, payload={"access_token": ACCESS, "expires_in": 60})
    provider = generic(grant_type="client_credentials", scope=["read", "write"])
    assert provider.can_reauthenticate
    token = await provider.fetch_token(session, refresh_token=None, issued_at=ISSUED_AT)
    assert sent(mocked, GENERIC_URL)["data"] == {
        "grant_type": "client_credentials",
        "scope": "read write",
        "client_id": "my client",
        "client_secret": "s3cr3t:with/odd chars",
    }
    assert token.refresh_token is None
    assert token.provider == "oauth2"


async def test_generic_password_grant_and_extra_headers(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(GENERIC_URL, payload=OK_BODY)
    provider = generic(
        username="alice", password=PASSWORD, scope="openid", extra_headers={"User-Agent": "me/1"}
    )
    assert provider.can_reauthenticate
    await provider.fetch_token(session, refresh_token=None, issued_at=ISSUED_AT)
    kwargs = sent(mocked, GENERIC_URL)
    assert kwargs["data"] == {
        "grant_type": "password",
        "username": "alice",
        "password": PASSWORD,
        "scope": "openid",
        "client_id": "my client",
        "client_secret": "s3cr3t:with/odd chars",
    }
    assert kwargs["headers"]["User-Agent"] == "me/1"


async def test_generic_public_client_sends_no_secret(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(GENERIC_URL, payload=OK_BODY)
    provider = OAuth2Provider(token_url=GENERIC_URL, client_id="public", client_secret="")
    await provider.fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert sent(mocked, GENERIC_URL)["data"] == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH,
        "client_id": "public",
    }


async def test_default_expires_in(mocked: aioresponses, session: aiohttp.ClientSession) -> None:
    mocked.post(GENERIC_URL, payload={"access_token": ACCESS})
    mocked.post(GENERIC_URL, payload={"access_token": ACCESS})
    token = await generic(default_expires_in=900).fetch_token(
        session, refresh_token=REFRESH, issued_at=ISSUED_AT
    )
    assert token.expires_at == ISSUED_AT + 900
    with pytest.raises(MalformedResponseError) as info:
        await generic().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.reason == "missing expires_in"


async def test_session_raise_for_status_does_not_interfere(mocked: aioresponses) -> None:
    mocked.post(KELIWEB_URL, status=400, payload={"error": "invalid_grant"})
    async with aiohttp.ClientSession(raise_for_status=True) as s:
        with pytest.raises(InvalidGrantError):
            await keliweb().fetch_token(s, refresh_token=REFRESH, issued_at=ISSUED_AT)


# --- error mapping ------------------------------------------------------------------------------

PASSPORT_401 = {
    "error": "invalid_request",
    "error_description": "The refresh token is invalid.",
    "hint": "Token has been revoked",
    "message": "The refresh token is invalid.",
}

ERROR_CASES = [
    # (status, body, headers, expected exception type, expected .error)
    (400, {"error": "invalid_grant", "error_description": "bad"}, {}, InvalidGrantError,
     "invalid_grant"),
    (401, {"error": "invalid_grant"}, {}, InvalidGrantError, "invalid_grant"),
    (500, {"error": "invalid_grant"}, {}, InvalidGrantError, "invalid_grant"),
    (401, PASSPORT_401, {}, InvalidGrantError, "invalid_request"),
    (400, PASSPORT_401, {}, InvalidGrantError, "invalid_request"),
    (401, {"error": "invalid_token", "error_description": "Invalid refresh token (expired)"}, {},
     InvalidGrantError, "invalid_token"),
    (400, {"error": "invalid_client"}, {}, InvalidClientError, "invalid_client"),
    (401, {"error": "invalid_client", "error_description": "Client authentication failed"}, {},
     InvalidClientError, "invalid_client"),
    (401, {"error": "unauthorized", "error_description": "Bad credentials"}, {},
     InvalidClientError, "unauthorized"),
    # Error codes compare case-insensitively; .error keeps the server's spelling.
    (401, {"error": "Unauthorized", "error_description": "Bad credentials"}, {},
     InvalidClientError, "Unauthorized"),
    (400, {"error": "Invalid_Client"}, {}, InvalidClientError, "Invalid_Client"),
    (400, {"error": "INVALID_GRANT"}, {}, InvalidGrantError, "INVALID_GRANT"),
    (401, {"error": "Invalid_Token"}, {}, InvalidGrantError, "Invalid_Token"),
    (401, {"error": "Invalid_Request", "error_description": "The refresh token is invalid."}, {},
     InvalidGrantError, "Invalid_Request"),
    (401, b"", {"WWW-Authenticate": 'Basic realm="oauth2/client"'}, InvalidClientError, None),
    (400, {"error": "invalid_request", "error_description": "Missing parameter"}, {},
     TokenEndpointError, "invalid_request"),
    (400, {"error": "unsupported_grant_type"}, {}, TokenEndpointError, "unsupported_grant_type"),
    (400, {"error": "invalid_scope"}, {}, TokenEndpointError, "invalid_scope"),
    (400, {"error": "unauthorized_client"}, {}, TokenEndpointError, "unauthorized_client"),
    (401, b"<html>nope</html>", {"Content-Type": "text/html"}, TokenEndpointError, None),
    (403, b"<html>forbidden</html>", {"Content-Type": "text/html"}, TokenEndpointError, None),
    (404, {"message": "Not Found"}, {}, TokenEndpointError, None),
    (405, b"", {}, TokenEndpointError, None),
    (418, {"error": 7}, {}, TokenEndpointError, None),
    (302, b"", {"Location": "https://elsewhere.example.com/login"}, TokenEndpointError, None),
    (307, b"", {"Location": "/oauth/token/"}, TokenEndpointError, None),
    # Errors served with 200 (GitHub does this): the error code decides.
    (200, {"error": "invalid_grant"}, {}, InvalidGrantError, "invalid_grant"),
    (200, {"error": "invalid_client"}, {}, InvalidClientError, "invalid_client"),
    (200, {"error": "bad_refresh_token"}, {}, TokenEndpointError, "bad_refresh_token"),
]  # fmt: skip


@pytest.mark.parametrize(("status", "body", "headers", "exc_type", "error"), ERROR_CASES)
async def test_final_error_mapping(
    status: int,
    body: Any,
    headers: dict[str, str],
    exc_type: type[TokenEndpointError],
    error: str | None,
    mocked: aioresponses,
    session: aiohttp.ClientSession,
) -> None:
    if isinstance(body, dict):
        mocked.post(KELIWEB_URL, status=status, payload=body, headers=headers)
    else:
        mocked.post(KELIWEB_URL, status=status, body=body, headers=headers)
    with pytest.raises(TokenEndpointError) as info:
        await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    exc = info.value
    assert type(exc) is exc_type
    assert exc.status == status
    assert exc.error == error
    assert f"HTTP {status}" in str(exc)
    if error:
        assert error in str(exc)
    assert len(sent(mocked)) > 0  # exactly one request (checked in sent)


async def test_passport_revoked_message(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(KELIWEB_URL, status=401, payload=PASSPORT_401)
    with pytest.raises(InvalidGrantError) as info:
        await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.description == (
        "The refresh token is invalid. (hint: Token has been revoked)"
    )
    assert "re-authorize" in str(info.value)


@pytest.mark.parametrize(
    ("provider", "url", "words"),
    [
        (keliweb(username="u@example.it", password=PASSWORD), KELIWEB_URL, "username/password"),
        (generic(username="alice", password=PASSWORD), GENERIC_URL, "username/password"),
        (
            erpeasy(email="m@example.com", password=PASSWORD, company="123"),
            ERPEASY_URL,
            "email/password/company",
        ),
    ],
)
@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, {"error": "invalid_grant", "error_description": "Bad credentials"}),
        (401, {"error": "invalid_credentials", "message": "The user credentials were incorrect."}),
    ],
)
async def test_password_grant_rejected(
    provider: Any,
    url: str,
    words: str,
    status: int,
    body: dict[str, str],
    mocked: aioresponses,
    session: aiohttp.ClientSession,
) -> None:
    mocked.post(url, status=status, payload=body)
    with pytest.raises(InvalidGrantError, match=f"{words} was rejected") as info:
        await provider.fetch_token(session, refresh_token=None, issued_at=ISSUED_AT)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    ("status", "body", "headers", "retry_after"),
    [
        (500, b"Internal Server Error", {"Content-Type": "text/plain"}, None),
        (502, b"<html>Bad gateway</html>", {"Content-Type": "text/html"}, None),
        (503, b"", {"Retry-After": "120"}, 120.0),
        (504, b"", {"Retry-After": "  7 "}, 7.0),
        (408, b"", {}, None),
        (429, b'{"message":"Too Many Attempts."}', {"Retry-After": "60"}, 60.0),
        (429, b"", {"Retry-After": "-5"}, None),
        (429, b"", {"Retry-After": "soon"}, None),
        (
            503,
            b"",
            {
                "Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT",
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
            },
            30.0,
        ),
        (
            503,
            b"",
            {
                "Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT",
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
            },
            None,
        ),
        (400, b'{"error":"temporarily_unavailable"}', {"Retry-After": "3"}, 3.0),
        (200, b'{"error":"temporarily_unavailable"}', {"Retry-After": "1"}, 1.0),
        (400, b'{"error":"Temporarily_Unavailable"}', {}, None),
    ],
)
async def test_transient_mapping(
    status: int,
    body: bytes,
    headers: dict[str, str],
    retry_after: float | None,
    mocked: aioresponses,
    session: aiohttp.ClientSession,
) -> None:
    mocked.post(KELIWEB_URL, status=status, body=body, headers=headers)
    with pytest.raises(TransientError) as info:
        await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.status == status
    assert info.value.retry_after == retry_after
    assert info.value.attempts == 1


async def test_retry_after_http_date_without_date_header(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    # Measured from issued_at when the server sends no Date header.
    mocked.post(KELIWEB_URL, status=503, headers={"Retry-After": "Tue, 14 Nov 2023 22:14:20 GMT"})
    with pytest.raises(TransientError) as info:
        await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=1_700_000_000.0)
    assert info.value.retry_after == 60.0


@pytest.mark.parametrize(
    "exception",
    [
        aiohttp.ClientConnectionError("Connection refused"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("truncated"),
        ConnectionResetError(104, "Connection reset by peer"),
        OSError("network unreachable"),
        asyncio.TimeoutError(),
        aiohttp.ServerTimeoutError("read timeout"),
    ],
)
async def test_network_errors_are_transient(
    exception: BaseException, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    url = "https://auth.example.com:8443/oauth2/token?tenant=acme-internal"
    mocked.post(url, exception=exception)
    provider = OAuth2Provider(token_url=url, client_id="c", client_secret=CLIENT_SECRET)
    with pytest.raises(TransientError) as info:
        await provider.fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    exc = info.value
    assert exc.status is None
    assert exc.retry_after is None
    assert "auth.example.com:8443" in str(exc)
    assert type(exception).__name__ in str(exc)
    assert "acme-internal" not in str(exc)
    assert "/oauth2/token" not in str(exc)
    # No chained exception: aiohttp's may quote raw header lines and hold the request's
    # credentials in request_info (the type name and errno are kept in the message).
    assert exc.__cause__ is None
    assert exc.__context__ is None
    if isinstance(exception, OSError) and exception.errno:
        assert f"[Errno {exception.errno}]" in str(exc)
    if isinstance(exception, asyncio.TimeoutError):
        assert "timed out after 10 s" in str(exc)


# --- malformed answers --------------------------------------------------------------------------

MALFORMED_CASES = [
    (b"<!DOCTYPE html><html><body>Login</body></html>", "text/html; charset=UTF-8",
     "not JSON (content type text/html)"),
    (b"", "application/json", "invalid JSON"),
    (b'{"access_token": "abc", ', "application/json", "invalid JSON"),
    (
        b'{"access_token": "abc", "expires_in": NaN}',
        "application/json",
        "expires_in is negative or not finite",
    ),
    (b"\xff\xfe\x00garbage", "application/octet-stream",
     "not JSON (content type application/octet-stream)"),
    (b'["access_token"]', "application/json", "JSON is not an object"),
    (b'"token"', "application/json", "JSON is not an object"),
    (b"null", "application/json", "JSON is not an object"),
    (b'{"expires_in": 3600}', "application/json", "missing access_token"),
    (b'{"access_token": null, "expires_in": 3600}', "application/json", "missing access_token"),
    (b'{"access_token": "", "expires_in": 3600}', "application/json", "empty access_token"),
    (b'{"access_token": 12345, "expires_in": 3600}', "application/json",
     "access_token is not a string"),
    (b'{"access_token": "a\\r\\nX-Evil: 1", "expires_in": 3600}', "application/json",
     "access_token contains characters not allowed in an HTTP header"),
    (b'{"access_token": "abc"}', "application/json", "missing expires_in"),
    (b'{"access_token": "abc", "expires_in": -1}', "application/json",
     "expires_in is negative or not finite"),
    (b'{"access_token": "abc", "expires_in": "soon"}', "application/json",
     "expires_in is not a number"),
    (b'{"access_token": "abc", "expires_in": "nan"}', "application/json",
     "expires_in is not a number"),
    (b'{"access_token": "abc", "expires_in": "3_600"}', "application/json",
     "expires_in is not a number"),
    (b'{"access_token": "abc", "expires_in": " 36 "}', "application/json",
     "expires_in is not a number"),
    (b'{"access_token": "abc", "expires_in": "inf"}', "application/json",
     "expires_in is not a number"),
    (b'{"access_token": "abc", "expires_in": "-60"}', "application/json",
     "expires_in is not a number"),
    (b'{"access_token": "abc", "expires_in": "\\u0663\\u0666"}', "application/json",
     "expires_in is not a number"),
    (b'{"access_token": "abc", "expires_in": 3600, "token_type": "Bearer x"}',
     "application/json", "token_type is not a valid auth scheme"),
    (b'{"access_token": "abc", "expires_in": 3600, "token_type": "Bearer\\r\\nX-Evil: 1"}',
     "application/json", "token_type is not a valid auth scheme"),
    (b'{"access_token": "abc", "expires_in": -1e999}', "application/json",
     "expires_in is negative or not finite"),
    (b'{"access_token": "abc", "expires_in": NaN}', "application/json",
     "expires_in is negative or not finite"),
    (b'{"access_token": "abc", "expires_in": 0}', "application/json", "expires_in is 0"),
    (b'{"access_token": "abc", "expires_in": "0"}', "application/json", "expires_in is 0"),
    (b'{"access_token": "abc", "expires_in": 3600, "refresh_token": "r\\ud800"}',
     "application/json", "refresh_token contains broken Unicode (a lone surrogate)"),
    (b'{"access_token": "abc", "expires_in": true}', "application/json",
     "expires_in is not a number"),
    (b'{"access_token": "abc", "expires_in": [3600]}', "application/json",
     "expires_in is not a number"),
    (b'{"access_token": "abc", "expires_in": 3600, "refresh_token": 5}', "application/json",
     "refresh_token is not a string"),
    (b'{"access_token": "abc", "expires_in": 3600, "token_type": {}}', "application/json",
     "token_type is not a string"),
    (b'{"access_token": "abc", "expires_in": 3600, "scope": ["a", 1]}', "application/json",
     "scope is not a string"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "content_type", "reason"), MALFORMED_CASES)
async def test_malformed_success_answers(
    body: bytes,
    content_type: str,
    reason: str,
    mocked: aioresponses,
    session: aiohttp.ClientSession,
) -> None:
    mocked.post(KELIWEB_URL, status=200, body=body, content_type=content_type)
    with pytest.raises(MalformedResponseError) as info:
        await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.reason == reason
    assert info.value.status == 200
    assert reason in str(info.value)
    assert "HTTP 200" in str(info.value)
    assert "<html" not in str(info.value).lower()


async def test_lenient_but_valid_answers(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    # Numeric strings, JSON served as text/html, a BOM, null optionals, an empty refresh token.
    body = b'\xef\xbb\xbf{"access_token":"abc","expires_in":"3600","refresh_token":"","scope":null}'
    mocked.post(KELIWEB_URL, status=200, body=body, content_type="text/html")
    token = await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert token.expires_at == ISSUED_AT + 3600
    assert token.refresh_token is None
    assert token.scope is None
    assert token.token_type == "Bearer"


@pytest.mark.parametrize(("scope", "kept"), [(["read", "write"], "read write"), ([], None)])
async def test_scope_as_a_json_list_is_the_space_separated_scope(
    scope: list[str], kept: str | None, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(KELIWEB_URL, payload={**OK_BODY, "scope": scope})
    token = await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert token.scope == kept


@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [
        (3600, 3600.0),
        (1.5, 1.5),
        ("60", 60.0),
        ("90.25", 90.25),
        ("1e3", 1000.0),
        # Practically forever: capped at ten years, so expiry stays representable.
        (9223372036854775807, 10 * 365 * 86400.0),
        ("1e999", 10 * 365 * 86400.0),
    ],
)
async def test_expires_in_numbers_and_numeric_strings(
    expires_in: Any, seconds: float, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(KELIWEB_URL, payload={"access_token": ACCESS, "expires_in": expires_in})
    token = await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert token.expires_at == ISSUED_AT + seconds


@pytest.mark.parametrize("token_type", ["Bearer", "bearer", "MAC", "DPoP", "N_A", "x!#$%&'*+.^`|~"])
async def test_token_type_that_is_an_auth_scheme_is_kept(
    token_type: str, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(KELIWEB_URL, payload={**OK_BODY, "token_type": token_type})
    token = await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert token.token_type == token_type


async def test_token_type_with_line_break_is_a_malformed_answer(oauth: FakeOAuthServer) -> None:
    """Regression: token_type goes into the Authorization header verbatim (Token.authorization),
    but only access_token used to be checked for header-safe characters."""
    oauth.fail_next(
        status=200,
        body={
            "token_type": "Bearer\r\nX-Injected: yes",
            "expires_in": 3600,
            "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.e30.sig",
            "refresh_token": "def50200" + "ab" * 40,
        },
    )
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        with pytest.raises(MalformedResponseError):  # noqa: PT012 - pytest.fail names the leak
            token = await keliweb_for(oauth).fetch_token(
                http, refresh_token=oauth.issue_refresh_token(), issued_at=0.0
            )
            pytest.fail(f"accepted, Authorization would be {token.authorization!r}")


# --- a malformed answer that rotated anyway -----------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"access_token": ACCESS}, "missing expires_in"),
        ({"access_token": ACCESS, "expires_in": "soon"}, "expires_in is not a number"),
        ({"access_token": ACCESS, "expires_in": 60, "scope": {"a": 1}}, "scope is not a string"),
        (
            {"access_token": ACCESS, "expires_in": 60, "token_type": "Bearer\r\nX: 1"},
            "token_type is not a valid auth scheme",
        ),
        ({"access_token": 7, "expires_in": 60}, "access_token is not a string"),
        ({"expires_in": 60}, "missing access_token"),
    ],
)
async def test_malformed_answer_carries_its_new_refresh_token(
    answer: dict[str, Any], reason: str, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(KELIWEB_URL, payload={**answer, "refresh_token": NEW_REFRESH})
    with pytest.raises(MalformedResponseError) as info:
        await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    exc = info.value
    assert exc.reason == reason
    assert exc.refresh_token == NEW_REFRESH
    # A secret: not in the message, the repr, the args or a formatted traceback.
    formatted = "".join(traceback.format_exception(exc))
    for text in (str(exc), repr(exc), repr(exc.args), formatted):
        assert NEW_REFRESH not in text
        assert NEW_REFRESH[:12] not in text
    assert repr(exc) == f"MalformedResponseError({exc.message!r})"


@pytest.mark.parametrize(
    "answer",
    [
        {"access_token": ACCESS},
        {"access_token": ACCESS, "refresh_token": ""},
        {"access_token": ACCESS, "refresh_token": None},
        {"access_token": ACCESS, "expires_in": 60, "refresh_token": 5},
    ],
)
async def test_malformed_answer_without_a_usable_refresh_token(
    answer: dict[str, Any], mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(KELIWEB_URL, payload=answer)
    with pytest.raises(MalformedResponseError) as info:
        await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.refresh_token is None


async def test_unparsable_answer_still_gives_its_intact_refresh_token(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    """Cut off after the refresh_token member: the server rotated, the member is whole."""
    mocked.post(KELIWEB_URL, status=200, body=f'{{"refresh_token": "{NEW_REFRESH}", "acc')
    with pytest.raises(MalformedResponseError) as info:
        await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.reason == "invalid JSON"
    assert info.value.refresh_token == NEW_REFRESH


async def test_cut_refresh_token_is_not_salvaged(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(KELIWEB_URL, status=200, body=f'{{"refresh_token": "{NEW_REFRESH[:10]}')
    with pytest.raises(MalformedResponseError) as info:
        await keliweb().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.refresh_token is None


@pytest.mark.parametrize(
    ("body", "json_refresh"),
    [
        ({"access_token": ACCESS}, None),  # missing expires_in
        ({"access_token": ACCESS, "refresh_token": REFRESH + "x"}, REFRESH + "x"),  # cookie wins
        (b"<html>maintenance</html>", None),  # not even JSON: the cookie still counts
    ],
)
async def test_erpeasy_malformed_answer_carries_the_refresh_cookie(
    body: Any, json_refresh: str | None, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    cookie = {"Set-Cookie": f"refresh_token={NEW_REFRESH}; Path=/oauth/token; HttpOnly"}
    if isinstance(body, dict):
        mocked.post(ERPEASY_URL, payload=body, headers=cookie)
    else:
        mocked.post(ERPEASY_URL, body=body, headers=cookie, content_type="text/html")
    with pytest.raises(MalformedResponseError) as info:
        await erpeasy().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.refresh_token == NEW_REFRESH
    assert NEW_REFRESH not in str(info.value) + repr(info.value)
    if json_refresh is not None:
        assert json_refresh not in str(info.value) + repr(info.value)


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        ("refresh_token=; Path=/oauth/token", None),  # a deletion cookie
        (f"refresh_token={NEW_REFRESH}; Max-Age=0", None),
        (f"other={NEW_REFRESH}", None),
        (f"refresh_token={NEW_REFRESH}; Max-Age=60", NEW_REFRESH),
    ],
)
async def test_erpeasy_malformed_answer_ignores_dead_refresh_cookies(
    cookie: str, expected: str | None, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    mocked.post(ERPEASY_URL, payload={"access_token": ACCESS}, headers={"Set-Cookie": cookie})
    with pytest.raises(MalformedResponseError) as info:
        await erpeasy().fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.refresh_token == expected


async def test_oversized_answer(mocked: aioresponses, session: aiohttp.ClientSession) -> None:
    big = b'{"access_token":"abc","expires_in":3600,"pad":"' + b"x" * 2000 + b'"}'
    mocked.post(KELIWEB_URL, status=200, body=big)
    mocked.post(KELIWEB_URL, status=503, body=big)
    provider = keliweb(max_response_bytes=1024)
    with pytest.raises(MalformedResponseError) as info:
        await provider.fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    assert info.value.reason == "response body larger than 1024 bytes"
    with pytest.raises(TransientError):  # the status still decides on error answers
        await provider.fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    exact = b'{"access_token":"abc","expires_in":3600,"pad":"' + b"x" * 100 + b'"}'
    mocked.post(KELIWEB_URL, status=200, body=exact)
    token = await keliweb(max_response_bytes=len(exact)).fetch_token(
        session, refresh_token=REFRESH, issued_at=ISSUED_AT
    )
    assert token.extra["pad"] == "x" * 100


# --- secrets never leak -------------------------------------------------------------------------


async def test_secrets_are_not_in_errors_or_reprs(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    # Spring echoes the refresh token: "Invalid refresh token (expired): <token>".
    echo = f"Invalid refresh token (expired): {REFRESH} client {CLIENT_SECRET} pw {PASSWORD} "
    mocked.post(
        ERPEASY_URL,
        status=401,
        payload={"error": "invalid_token", "error_description": echo * 5},
    )
    provider = erpeasy(email="m@example.com", password=PASSWORD, company="123")
    with pytest.raises(InvalidGrantError) as info:
        await provider.fetch_token(session, refresh_token=REFRESH, issued_at=ISSUED_AT)
    exc = info.value
    assert exc.description is not None
    assert len(exc.description) <= 200
    assert exc.description.startswith("Invalid refresh token (expired): …")
    basic_header = basic("erp-client", CLIENT_SECRET)
    for text in (str(exc), repr(exc), exc.description, repr(provider), str(provider)):
        for secret in (REFRESH, CLIENT_SECRET, PASSWORD, basic_header, basic_header[6:]):
            assert secret not in text
    request = provider.build_request(REFRESH)
    for secret in (REFRESH, CLIENT_SECRET, basic_header):
        assert secret not in repr(request)


@pytest.mark.parametrize("factory", [keliweb, erpeasy, generic])
def test_repr(factory: Any) -> None:
    provider = factory()
    text = repr(provider)
    assert text.startswith(f"{type(provider).__name__}(token_url='https://")
    assert f"client_id={provider.client_id!r}" in text
    assert CLIENT_SECRET not in text
    assert "s3cr3t" not in text


def test_repr_with_password_grant() -> None:
    provider = keliweb(username="mario", password=PASSWORD)
    assert "username='mario'" in repr(provider)
    assert "password_grant=True" in repr(provider)
    assert PASSWORD not in repr(provider)
    provider2 = generic(username="alice", password=PASSWORD, extra_headers={"X-Api-Key": "k3y!"})
    assert PASSWORD not in repr(provider2)
    assert "k3y!" not in repr(provider2)
    assert "X-Api-Key" in repr(provider2)


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/oauth/token",
        "http://127.1.2.3/oauth/token",
        "http://[::1]:9000/oauth/token",
        "http://localhost/oauth/token",
        "http://LOCALHOST:1234/oauth/token",
        "https://fatture.keliweb.it/oauth/token",
    ],
)
def test_token_url_accepted(url: str) -> None:
    assert keliweb(token_url=url).token_url == url
    assert erpeasy(token_url=url).token_url == url
    assert generic(token_url=url).token_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://fatture.keliweb.it/oauth/token",
        "http://10.0.0.1/oauth/token",
        "http://localhost.evil.com/oauth/token",
        "http://[::ffff:8.8.8.8]/oauth/token",
    ],
)
def test_plain_http_refused_unless_opted_in(url: str) -> None:
    with pytest.raises(ConfigurationError, match="plain http"):
        keliweb(token_url=url)
    with pytest.raises(ConfigurationError, match="plain http"):
        generic(token_url=url)
    with pytest.raises(ValueError, match="allow_insecure_http"):
        erpeasy(token_url=url)
    assert keliweb(token_url=url, allow_insecure_http=True).token_url == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "fatture.keliweb.it/oauth/token",
        "/oauth/token",
        "ftp://example.com/token",
        "https://user:pw@example.com/token",
        "https:///token",
        12,
    ],
)
def test_bad_token_url(url: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        generic(token_url=url)
    assert "pw@" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        # A trailing dot makes the name fully qualified: getaddrinfo skips /etc/hosts for it and
        # asks DNS, which may answer with any address.
        "http://localhost./oauth/token",
        "http://localhost\u3002/oauth/token",  # IDNA maps the ideographic full stop to "."
    ],
)
def test_fqdn_localhost_is_not_loopback(url: str) -> None:
    with pytest.raises(ConfigurationError):
        KeliwebProvider("id", "secret", token_url=url)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1./oauth/token", "http://127.1/oauth/token", "http://0x7f000001/oauth"],
)
def test_only_plain_loopback_literals_are_loopback(url: str) -> None:
    with pytest.raises(ConfigurationError, match="plain http"):
        keliweb(token_url=url)


def test_bad_idna_token_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        OAuth2Provider("https://xn--a-/oauth/token", "id", "secret")


@pytest.mark.parametrize("value", ["a\x01b", "a\x7fb", "a\x1bb"])
def test_extra_header_with_control_character_is_rejected_up_front(value: str) -> None:
    """Regression: check_extra_headers only refused CR, LF and NUL; aiohttp then refused every
    token request with a bare ValueError (not a TokenError) at refresh time."""
    with pytest.raises(ConfigurationError):
        KeliwebProvider("id", "secret", extra_headers={"X-Tenant": value})


def test_extra_header_names_are_tokens_and_values_may_hold_tabs() -> None:
    for name in ("X(A)", "X/A", "X\u00e9", 'X"A', "X@A"):
        with pytest.raises(ConfigurationError, match="invalid header name"):
            keliweb(extra_headers={name: "x"})
    provider = keliweb(extra_headers={"X-Tenant_1": "a\tb c", "X-Unicode": "caf\u00e9"})
    assert provider.build_request(REFRESH).headers["X-Tenant_1"] == "a\tb c"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_id": ""},
        {"client_id": None},
        {"client_secret": ""},
        {"username": "u"},
        {"password": "p"},
        {"username": "", "password": "p"},
        {"timeout": 0},
        {"timeout": -1.0},
        {"timeout": float("inf")},
        {"timeout": True},
        {"max_response_bytes": 0},
        {"max_response_bytes": 1.5},
        {"extra_headers": {"Cookie": "a=b"}},
        {"extra_headers": {"authorization": "Bearer x"}},
        {"extra_headers": {"X-A": "b\r\nX-Evil: 1"}},
        {"extra_headers": {"Bad Name": "x"}},
        {"extra_headers": [("X-A", "b")]},
        {"allow_insecure_http": "yes"},
    ],
)
def test_keliweb_config_errors(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **kwargs}
    with pytest.raises(ConfigurationError):
        KeliwebProvider(**args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_id": "has:colon"},
        {"refresh_token_in": "header"},
        {"email": "a@b.c"},
        {"email": "a@b.c", "password": "p"},
        {"password": "p", "company": "1"},
    ],
)
def test_erpeasy_config_errors(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"client_id": "erp", "client_secret": CLIENT_SECRET, **kwargs}
    with pytest.raises(ConfigurationError):
        ERPeasyProvider(**args)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"auth_method": "private_key_jwt"},
        {"grant_type": "password"},
        {"grant_type": "client_credentials", "username": "u", "password": "p"},
        {"grant_type": "client_credentials", "client_secret": ""},
        {"scope": 5},
        {"scope": ["a", 3]},
        {"default_expires_in": 0},
        {"default_expires_in": "3600"},
    ],
)
def test_generic_config_errors(kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {
        "token_url": GENERIC_URL,
        "client_id": "c",
        "client_secret": "s",
        **kwargs,
    }
    with pytest.raises(ConfigurationError):
        OAuth2Provider(**args)


def test_can_reauthenticate_matrix() -> None:
    assert not keliweb().can_reauthenticate
    assert keliweb(username="u", password="p").can_reauthenticate
    assert not erpeasy().can_reauthenticate
    assert erpeasy(email="e", password="p", company="c").can_reauthenticate
    assert not generic().can_reauthenticate
    assert generic(username="u", password="p").can_reauthenticate
    assert generic(grant_type="client_credentials").can_reauthenticate


def test_parser_reads_headers_case_insensitively() -> None:
    # CIMultiDict is what aiohttp hands over; a plain dict with odd casing works too.
    from asynctoken.providers._parse import parse_token_response

    headers = CIMultiDict({"content-type": "application/json", "RETRY-AFTER": "5"})
    with pytest.raises(TransientError) as info:
        parse_token_response(503, headers, b"", issued_at=0.0)
    assert info.value.retry_after == 5.0
    with pytest.raises(TransientError) as info:
        parse_token_response(503, {"retry-after": "5"}, b"", issued_at=0.0)
    assert info.value.retry_after == 5.0
