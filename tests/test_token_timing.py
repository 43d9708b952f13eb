"""When a token expires and when to refresh it, beyond ``expires_in``: a JWT access token's
``exp`` when the answer has no ``expires_in``, and a server's ``refresh_in``."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from support import keliweb

from asynctoken import MalformedResponseError, MemoryStore, OAuth2Provider, TokenManager
from asynctoken.providers._parse import parse_token_response
from asynctoken.testing import FakeClock, FakeOAuthServer, TokenAnswer

NOW = 1_700_000_000.0


def jwt(claims: Any, header: Any = None) -> str:
    def part(value: Any) -> str:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{part(header or {'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def parse(body: dict[str, Any], default_expires_in: float | None = None) -> Any:
    return parse_token_response(
        200,
        {"Content-Type": "application/json"},
        json.dumps(body).encode(),
        issued_at=NOW,
        default_expires_in=default_expires_in,
    )


def test_a_jwt_s_exp_gives_the_expiry_when_the_answer_has_none() -> None:
    token = parse({"access_token": jwt({"sub": "x", "exp": NOW + 900})})
    assert token.expires_at == NOW + 900
    # Also before a configured default, and when expires_in is 0 ("unknown").
    assert parse({"access_token": jwt({"exp": NOW + 900})}, 60).expires_at == NOW + 900
    zero = {"access_token": jwt({"exp": NOW + 900}), "expires_in": 0}
    assert parse(zero).expires_at == NOW + 900
    # expires_in, when given, wins.
    told = {"access_token": jwt({"exp": NOW + 900}), "expires_in": 300}
    assert parse(told).expires_at == NOW + 300


@pytest.mark.parametrize(
    "access_token",
    [
        "opaque-token",
        jwt({"sub": "no exp"}),
        jwt({"exp": "soon"}),
        jwt({"exp": True}),
        jwt({"exp": NOW - 5}),  # already past: not a lifetime
        jwt(["not", "an", "object"]),
        jwt(b"\xff\xfe not json"),
        "a.b!!!.c",
        "only.two",
    ],
)
def test_without_a_usable_exp_the_default_or_an_error(access_token: str) -> None:
    assert parse({"access_token": access_token}, 120).expires_at == NOW + 120
    with pytest.raises(MalformedResponseError, match="missing expires_in"):
        parse({"access_token": access_token})


def test_refresh_in() -> None:
    told = parse({"access_token": "t", "expires_in": 3600, "refresh_in": 1800})
    assert told.refresh_at == NOW + 1800
    assert parse({"access_token": "t", "expires_in": 3600, "refresh_in": "60"}).refresh_at == (
        NOW + 60
    )
    for odd in (None, 0, -5, "soon", True, float("nan"), [1]):
        body = {"access_token": "t", "expires_in": 3600, "refresh_in": odd}
        assert parse(body).refresh_at is None, odd


async def test_the_manager_refreshes_when_the_server_says() -> None:
    """refresh_in=1800 of a one-hour token: stale after 30 min (the margins alone would say
    55 min), also for another manager that picks the token up from the store."""
    clock = FakeClock()
    store = MemoryStore()

    def refresh_in_half_an_hour(answer: TokenAnswer) -> TokenAnswer:
        return answer.with_json({**answer.json(), "refresh_in": 1800})

    async with (
        FakeOAuthServer("keliweb", expires_in=3600, clock=clock) as server,
        TokenManager(store=store, clock=clock) as tm,
        TokenManager(store=store, clock=clock) as other,
    ):
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await other.add("k", keliweb(server))
        server.rewrite_next(refresh_in_half_an_hour)
        first = await tm.get_token("k")
        assert first.refresh_at == clock.time() + 1800
        assert (await other.get_token("k")) == first  # picked up, with its refresh_at
        clock.advance(1799)
        assert other._peek_fresh("k") is first
        assert tm._peek_fresh("k") is first
        clock.advance(2)
        assert tm._peek_fresh("k") is None  # stale: the server asked for a refresh by now
        assert other._peek_fresh("k") is None
        assert await tm.get_token("k") == first  # served while one refresh runs
        await server.wait_for_token_requests(2)
        assert server.token_requests == 2


async def test_a_jwt_without_expires_in_against_a_real_server() -> None:
    """An OAuth2 server that answers a JWT and no expires_in: the token expires at its exp."""
    clock = FakeClock()
    async with (
        FakeOAuthServer("oauth2", expires_in=3600, clock=clock) as server,
        TokenManager(clock=clock) as tm,
    ):
        provider = OAuth2Provider(server.token_url, server.client_id, server.client_secret)
        await tm.add("k", provider, refresh_token=server.issue_refresh_token())
        exp = clock.time() + 600

        def as_jwt(answer: TokenAnswer) -> TokenAnswer:
            body = {k: v for k, v in answer.json().items() if k != "expires_in"}
            return answer.with_json({**body, "access_token": jwt({"exp": exp})})

        server.rewrite_next(as_jwt)
        token = await tm.get_token("k")
        assert token.expires_at == exp
