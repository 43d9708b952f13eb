"""ERPeasy: the rotated refresh token comes only from ``Set-Cookie: refresh_token=…``.

These tests drive the pure half of the provider (``parse_response`` on a ``RawResponse``) and the
cookie parser directly; ``test_providers_server.py`` covers the same path over a real socket.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from multidict import CIMultiDict

from asynctoken.providers import ERPeasyProvider
from asynctoken.providers._cookies import find_cookie, is_cookie_value_safe
from asynctoken.providers._http import RawResponse

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
OLD = "eyJhbGciOiJIUzI1NiJ9.old-refresh.sig"
NEW = "eyJhbGciOiJIUzI1NiJ9.new-refresh.sig"
ANSWER: dict[str, Any] = {
    "access_token": "eyJhbGciOiJIUzI1NiJ9.access.sig",
    "token_type": "bearer",
    "expires_in": 43199,
    "scope": "read write",
    "user_id": 1,
    "company_id": 2,
    "jti": "abc",
}


def refresh(*set_cookies: str, answer: dict[str, Any] | None = None) -> str | None:
    provider = ERPeasyProvider(client_id="erp", client_secret="erp-secret-value")
    request = provider.build_request(OLD)
    headers = CIMultiDict([("Content-Type", "application/json;charset=UTF-8")])
    for value in set_cookies:
        headers.add("Set-Cookie", value)
    response = RawResponse(
        status=200,
        headers=headers,
        body=json.dumps(answer or ANSWER).encode(),
        set_cookies=tuple(set_cookies),
    )
    token = provider.parse_response(response, request=request, issued_at=NOW)
    assert token.access_token == (answer or ANSWER)["access_token"]
    assert token.extra["company_id"] == 2
    return token.refresh_token


@pytest.mark.parametrize(
    "set_cookie",
    [
        f"refresh_token={NEW}",
        f"refresh_token={NEW}; Path=/oauth/token; HttpOnly",
        f"refresh_token={NEW}; Domain=api.erpeasy.compels.net; Path=/oauth/token; Secure; HttpOnly",
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
def test_refresh_cookie_variants(set_cookie: str) -> None:
    assert refresh(set_cookie) == NEW


def test_several_set_cookie_headers_and_other_cookies() -> None:
    assert (
        refresh(
            "JSESSIONID=ABCDEF0123456789; Path=/; Secure; HttpOnly",
            "XSRF-TOKEN=5d9f; Path=/",
            f"refresh_token={NEW}; Domain=api.erpeasy.compels.net; Path=/oauth/token; HttpOnly",
            "AWSALB=abc/def+ghi==; Expires=Tue, 21 Nov 2023 22:13:20 GMT; Path=/",
        )
        == NEW
    )


def test_deletion_and_new_cookie_in_one_answer() -> None:
    deletion = "refresh_token=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
    assert refresh(deletion, f"refresh_token={NEW}; Path=/oauth/token") == NEW
    assert refresh(f"refresh_token={NEW}; Path=/oauth/token", deletion) == NEW


def test_last_live_cookie_wins() -> None:
    assert refresh("refresh_token=first-one; Path=/", f"refresh_token={NEW}; Path=/") == NEW


def test_folded_set_cookie_header() -> None:
    # A proxy joined two Set-Cookie lines with a comma; Expires keeps its own comma.
    folded = (
        "JSESSIONID=1; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/, "
        f"refresh_token={NEW}; Expires=Wed, 21 Oct 2026 07:28:00 GMT; Path=/oauth/token"
    )
    assert refresh(folded) == NEW


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
    ],
)
def test_not_a_new_refresh_token(set_cookie: str) -> None:
    assert refresh(set_cookie) is None


def test_cookie_is_preferred_over_json_field() -> None:
    answer = {**ANSWER, "refresh_token": "from-json-body"}
    assert refresh(f"refresh_token={NEW}", answer=answer) == NEW
    assert refresh(answer=answer) == "from-json-body"
    assert refresh("refresh_token=; Max-Age=0", answer=answer) == "from-json-body"


def test_missing_cookie_keeps_old_token_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asynctoken.providers"):
        assert refresh("JSESSIONID=1; Path=/") is None
    assert "no refresh_token cookie" in caplog.text
    assert OLD not in caplog.text


def test_password_grant_reads_cookie_too() -> None:
    provider = ERPeasyProvider(
        client_id="erp",
        client_secret="erp-secret-value",
        email="e@x.br",
        password="pw",
        company="1",
    )
    request = provider.build_request(None)
    cookie = f"refresh_token={NEW}; Domain=api.erpeasy.compels.net; Path=/oauth/token; Secure"
    response = RawResponse(
        status=200,
        headers={"Content-Type": "application/json"},
        body=json.dumps(ANSWER).encode(),
        set_cookies=(cookie,),
    )
    token = provider.parse_response(response, request=request, issued_at=NOW)
    assert token.refresh_token == NEW
    assert token.provider == "erpeasy"


def test_find_cookie_ignores_non_strings_and_other_names() -> None:
    headers: list[Any] = [None, b"refresh_token=bytes", "a=1", "refresh_token=x"]
    assert find_cookie(headers, "refresh_token", now=NOW) == "x"
    assert find_cookie([], "refresh_token", now=NOW) is None


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
