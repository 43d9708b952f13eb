"""ERPeasy: the rotated refresh token comes only from ``Set-Cookie: refresh_token=…``.

Every answer here crosses a real socket from an aiohttp server on 127.0.0.1, so the provider reads
its ``Set-Cookie`` headers exactly as in production: through aiohttp's own Set-Cookie parser
(``ClientResponse.cookies``), with no cookie jar. aioresponses would not test that: it loads mocked
``Set-Cookie`` headers into the response with the stdlib's ``SimpleCookie.load`` instead.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.cookies import CookieError
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from asynctoken.providers import ERPeasyProvider, _erpeasy
from asynctoken.providers._erpeasy import is_cookie_value_safe

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
OLD = "eyJhbGciOiJIUzI1NiJ9.old-refresh.sig"
NEW = "eyJhbGciOiJIUzI1NiJ9.new-refresh.sig"
ERP_ATTRIBUTES = "Domain=api.erpeasy.compels.net; Path=/oauth/token; Secure; HttpOnly"
ANSWER: dict[str, Any] = {
    "access_token": "eyJhbGciOiJIUzI1NiJ9.access.sig",
    "token_type": "bearer",
    "expires_in": 43199,
    "scope": "read write",
    "user_id": 1,
    "company_id": 2,
    "jti": "abc",
}
# Hypothesis examples reuse the test's server and session: only the answer changes between them.
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass
class Endpoint:
    """A loopback ERPeasy token endpoint that answers with whatever the test put here."""

    url: str = ""
    set_cookies: list[str] = field(default_factory=list)
    answer: dict[str, Any] = field(default_factory=lambda: dict(ANSWER))


class Refresh(Protocol):
    async def __call__(
        self, *set_cookies: str, answer: dict[str, Any] | None = None, password_grant: bool = False
    ) -> str | None: ...


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint()

    async def token(request: web.Request) -> web.Response:
        await request.read()
        headers = CIMultiDict(("Set-Cookie", value) for value in ep.set_cookies)
        return web.json_response(ep.answer, headers=headers)

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    server = TestServer(app)
    await server.start_server()
    ep.url = str(server.make_url("/oauth/token"))
    try:
        yield ep
    finally:
        await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        yield s


@pytest.fixture
def refresh(endpoint: Endpoint, session: aiohttp.ClientSession) -> Refresh:
    """Answer one token request with these ``Set-Cookie`` headers; return the new refresh token."""

    async def run(
        *set_cookies: str, answer: dict[str, Any] | None = None, password_grant: bool = False
    ) -> str | None:
        endpoint.set_cookies = list(set_cookies)
        endpoint.answer = dict(ANSWER if answer is None else answer)
        if password_grant:
            provider = ERPeasyProvider(
                client_id="erp",
                client_secret="erp-secret-value",
                email="e@x.br",
                password="pw",
                company="1",
                token_url=endpoint.url,
            )
            token = await provider.fetch_token(session, refresh_token=None, issued_at=NOW)
        else:
            provider = ERPeasyProvider(
                client_id="erp", client_secret="erp-secret-value", token_url=endpoint.url
            )
            token = await provider.fetch_token(session, refresh_token=OLD, issued_at=NOW)
        assert token.access_token == endpoint.answer["access_token"]
        assert token.extra["company_id"] == 2
        assert token.provider == "erpeasy"
        assert list(session.cookie_jar) == []
        return token.refresh_token

    return run


@pytest.mark.parametrize(
    "set_cookie",
    [
        f"refresh_token={NEW}",
        f"refresh_token={NEW}; Path=/oauth/token; HttpOnly",
        # ERPeasy's own: a foreign Domain and Secure, read over plain http from 127.0.0.1.
        f"refresh_token={NEW}; {ERP_ATTRIBUTES}",
        f"refresh_token={NEW}; domain=.compels.net; path=/; secure; httponly; samesite=Strict",
        f"refresh_token={NEW}; Max-Age=2592000; Expires=Thu, 14 Dec 2023 22:13:20 GMT; Path=/",
        f"refresh_token={NEW}; Expires=Wednesday, 09-Nov-2033 23:12:40 GMT; Path=/oauth/token",
        f"refresh_token={NEW}; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60",  # Max-Age wins
        f"refresh_token={NEW}; Max-Age=soon",  # an unparsable Max-Age is ignored
        f"refresh_token={NEW}; Expires=never",  # so is an unparsable Expires
        f'refresh_token="{NEW}"; Path=/',
        f"  refresh_token = {NEW} ;Path=/oauth/token",
        f"refresh_token={NEW};Path=/oauth/token;Secure;HttpOnly;Partitioned;Priority=High",
    ],
)
async def test_refresh_cookie_variants(refresh: Refresh, set_cookie: str) -> None:
    assert await refresh(set_cookie) == NEW


@pytest.mark.parametrize(
    "value",
    [
        NEW,
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.a+b/c-d_e==",  # JWT with base64 padding
        "def50200a1b2+c3d4/e5f6==",  # Laravel Passport style
        "a=b=c",
        f'"{NEW}+/=="',  # quoted
    ],
)
async def test_token_alphabets(refresh: Refresh, value: str) -> None:
    assert await refresh(f"refresh_token={value}; {ERP_ATTRIBUTES}") == value.strip('"')


async def test_several_set_cookie_headers_and_other_cookies(refresh: Refresh) -> None:
    assert (
        await refresh(
            "JSESSIONID=ABCDEF0123456789; Path=/; Secure; HttpOnly",
            "XSRF-TOKEN=5d9f; Path=/",
            f"refresh_token={NEW}; Domain=api.erpeasy.compels.net; Path=/oauth/token; HttpOnly",
            "AWSALB=abc/def+ghi==; Expires=Tue, 21 Nov 2023 22:13:20 GMT; Path=/",
        )
        == NEW
    )


@pytest.mark.parametrize(
    "malformed",
    [
        'g_state={"i_l":0,"i_ll":12345,"i_b":"x"}; Path=/',
        "bad name=x; Path=/",
        'a"b=1',
        "=nameless; Path=/",
        'weird=va"lue; Path=/',
        'unterminated="abc; Path=/',
        "x=1; Expires=Thu, 01 Jan",
        "é=1; Path=/",
        "huge=" + "a" * 5000,
        "no-equals-sign",
        ";;;",
    ],
)
async def test_malformed_other_cookie_next_to_refresh_token(
    refresh: Refresh, malformed: str
) -> None:
    good = f"refresh_token={NEW}; {ERP_ATTRIBUTES}"
    assert await refresh(malformed, good) == NEW
    assert await refresh(good, malformed) == NEW


async def test_deletion_then_new_cookie_in_one_answer(refresh: Refresh) -> None:
    deletion = "refresh_token=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
    assert await refresh(deletion, f"refresh_token={NEW}; Path=/oauth/token") == NEW


async def test_last_live_refresh_token_cookie_counts(refresh: Refresh) -> None:
    assert await refresh("refresh_token=first-one; Path=/", f"refresh_token={NEW}; Path=/") == NEW


@pytest.mark.parametrize(
    "deletion",
    [
        "refresh_token=; Path=/; Max-Age=0",
        "refresh_token=; Path=/oauth/token; Max-Age=0",
        "refresh_token=deleted; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
    ],
)
async def test_a_deletion_of_a_same_named_cookie_never_hides_the_new_one(
    refresh: Refresh, deletion: str
) -> None:
    """RFC 6265 keys cookies by name, domain and path: a server that rotates the token under
    Path=/oauth/token and clears an old one under Path=/ sends both. Reading only the last
    cookie of the name lost the rotated token."""
    new = f"refresh_token={NEW}; Path=/oauth/token; HttpOnly"
    assert await refresh(new, deletion) == NEW
    assert await refresh(deletion, new) == NEW


async def test_a_cookie_for_the_token_endpoint_path_is_preferred(refresh: Refresh) -> None:
    elsewhere = "refresh_token=for-another-path; Path=/api"
    assert await refresh(f"refresh_token={NEW}; Path=/oauth/token", elsewhere) == NEW
    assert await refresh(elsewhere, f"refresh_token={NEW}; Path=/oauth") == NEW
    # With no cookie for the token endpoint's path, a live one is still better than none.
    assert await refresh(elsewhere) == "for-another-path"


@pytest.mark.parametrize(
    "folded",
    [
        "JSESSIONID=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/, "
        f"refresh_token={NEW}; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/oauth/token",
        f"refresh_token={NEW}, JSESSIONID=1; Path=/",
        f"refresh_token=first-one, refresh_token={NEW}; Path=/",
    ],
)
async def test_folded_set_cookie_header_yields_the_new_token(
    refresh: Refresh, folded: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A proxy joined Set-Cookie lines with a comma, which RFC 6265 §3 forbids: the line is
    # split again where a comma is followed by the next cookie's name (never inside Expires).
    with caplog.at_level(logging.WARNING, logger="asynctoken.providers"):
        assert await refresh(folded) == NEW
    assert OLD not in caplog.text
    assert NEW not in caplog.text


async def test_folded_new_cookie_and_deletion(refresh: Refresh) -> None:
    folded = f"refresh_token={NEW}; Path=/oauth/token, refresh_token=; Path=/; Max-Age=0"
    assert await refresh(folded) == NEW


@pytest.mark.parametrize(
    "set_cookie",
    [
        "refresh_token=; Path=/oauth/token",
        'refresh_token=""; Path=/oauth/token',
        f"refresh_token={NEW}; Max-Age=0; Path=/oauth/token",
        f"refresh_token={NEW}; Max-Age=-1",
        "refresh_token=deleted; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/",
        "refresh_token=deleted; expires=Thu, 01-Jan-1970 00:00:01 GMT; Max-Age=0; path=/",
        f"refresh_token={NEW}; expires=Thu, 01-Jan-1970 00:00:01 GMT; path=/",  # PHP style
        f"refresh_token={NEW}; Expires=Tue, 14 Nov 2023 22:13:19 GMT",  # one second before NOW
        f"Refresh_Token={NEW}",  # cookie names are case-sensitive
        f"refresh_token_id={NEW}",
        f"x_refresh_token={NEW}",
        f"refresh_token{NEW}",
        f"={NEW}",
        "",
        ";;;",
        "refresh_token",
        '"refresh_token"=x',
    ],
)
async def test_not_a_new_refresh_token(refresh: Refresh, set_cookie: str) -> None:
    assert await refresh(set_cookie) is None


async def test_cookie_is_preferred_over_json_field(refresh: Refresh) -> None:
    answer = {**ANSWER, "refresh_token": "from-json-body"}
    assert await refresh(f"refresh_token={NEW}", answer=answer) == NEW
    assert await refresh(answer=answer) == "from-json-body"
    assert await refresh("refresh_token=; Max-Age=0", answer=answer) == "from-json-body"


async def test_missing_cookie_keeps_old_token_and_warns(
    refresh: Refresh, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="asynctoken.providers"):
        assert await refresh("JSESSIONID=1; Path=/") is None
    assert "no refresh_token cookie" in caplog.text
    assert OLD not in caplog.text


async def test_invalid_cookie_value_is_ignored_with_a_warning(
    refresh: Refresh, caplog: pytest.LogCaptureFixture
) -> None:
    answer = {**ANSWER, "refresh_token": "from-json-body"}
    with caplog.at_level(logging.WARNING, logger="asynctoken.providers"):
        assert await refresh('refresh_token="a, b"; Path=/') is None
        assert await refresh('refresh_token="a, b"; Path=/', answer=answer) == "from-json-body"
    assert "not a valid cookie value" in caplog.text
    assert "a, b" not in caplog.text


async def test_password_grant_reads_cookie_too(refresh: Refresh) -> None:
    assert await refresh(f"refresh_token={NEW}; {ERP_ATTRIBUTES}", password_grant=True) == NEW


async def test_unparsable_cookies_are_no_cookies(
    refresh: Refresh, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp without aio-libs/aiohttp#12395, on a CPython patched for CVE-2026-3644, raises
    # CookieError from its Set-Cookie parser on a control character.
    def refuse(headers: Any) -> Any:
        raise CookieError("Control characters are not allowed in cookies")

    monkeypatch.setattr(_erpeasy, "parse_set_cookie_headers", refuse)
    with caplog.at_level(logging.WARNING, logger="asynctoken.providers"):
        assert await refresh(f"refresh_token={NEW}") is None
    assert "no refresh_token cookie" in caplog.text


cookie_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='";,\\'),
    min_size=1,
    max_size=60,
)
attributes = st.lists(
    st.sampled_from(
        [
            "Path=/oauth/token",
            "Domain=api.erpeasy.compels.net",
            "Secure",
            "HttpOnly",
            "SameSite=Lax",
            "Max-Age=3600",
            "Expires=Wed, 21 Oct 2099 07:28:00 GMT",
        ]
    ),
    max_size=5,
)
# What can travel in a header line: printable ASCII.
header_texts = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)


@SETTINGS
@given(value=cookie_values, attrs=attributes, others=st.lists(header_texts, max_size=3))
async def test_refresh_cookie_is_found_among_noise(
    refresh: Refresh, value: str, attrs: list[str], others: list[str]
) -> None:
    header = "; ".join([f"refresh_token={value}", *attrs])
    # Noise headers that do not themselves set refresh_token, before ours.
    noise = [o for o in others if "refresh_token" not in o]
    assert await refresh(*noise, header) == value


@SETTINGS
@given(headers=st.lists(header_texts, max_size=4))
async def test_any_set_cookie_headers_give_a_valid_token_or_none(
    refresh: Refresh, headers: list[str]
) -> None:
    result = await refresh(*headers)
    assert result is None or (is_cookie_value_safe(result) and any(result in h for h in headers))


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("eyJhbGciOiJIUzI1NiJ9.abc-_.sig", True),
        ("def50200abc+/==", True),
        ("a b", False),
        ("a;b", False),
        ("a,b", False),
        ('a"b', False),
        ("a\\b", False),
        ("é", False),
        ("", False),
    ],
)
def test_cookie_value_safety(value: str, safe: bool) -> None:
    assert is_cookie_value_safe(value) is safe
