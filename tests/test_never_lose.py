"""A rotated refresh token always reaches the store, whatever the token endpoint answers.

Each test has a real loopback server rotate the refresh token and then send an odd-but-real
answer; after it, the store must hold the refresh token the server considers live, for every
store (memory, file, Redis).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from support import FAST_RETRY, keliweb

from asynctoken import (
    ERPeasyProvider,
    FileStore,
    MalformedResponseError,
    MemoryStore,
    RedisStore,
    Token,
    TokenManager,
    TokenStore,
)
from asynctoken.testing import FakeClock, FakeOAuthServer, TokenAnswer


@pytest.fixture(params=["memory", "file", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, redis_prefix: str
) -> AsyncIterator[TokenStore]:
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "file":
        yield FileStore(tmp_path / "tokens.json")
    else:
        yield RedisStore(redis_url, prefix=redis_prefix)


def with_raw_members(*members: str) -> Callable[[TokenAnswer], TokenAnswer]:
    """The decided answer with raw JSON text members appended (what json.dumps cannot write)."""

    def rewrite(answer: TokenAnswer) -> TokenAnswer:
        body = answer.body.rstrip()
        assert body.endswith(b"}")
        extra = "".join(f", {member}" for member in members).encode()
        return answer.with_body(body[:-1] + extra + b"}", "application/json")

    return rewrite


async def refresh_with(
    server: FakeOAuthServer, store: TokenStore, rewrite: Callable[[TokenAnswer], TokenAnswer]
) -> tuple[TokenManager, Token | BaseException]:
    """Seed, then have the first refresh answered through ``rewrite``."""
    tm = TokenManager(store=store, retry=FAST_RETRY, clock=FakeClock())
    await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
    server.rewrite_next(rewrite)
    try:
        return tm, await tm.get_token("k")
    except MalformedResponseError as exc:
        return tm, exc


async def assert_store_holds_the_live_refresh_token(
    server: FakeOAuthServer, store: TokenStore
) -> Token:
    stored = await store.get("k")
    assert stored is not None
    assert server.valid_refresh_tokens == [stored.refresh_token]
    return stored


ODD_BUT_USABLE = {
    "NaN and Infinity": ['"ratio": NaN', '"limit": Infinity', '"floor": -Infinity'],
    "1e999": ['"quota": 1e999', '"nested": {"a": [1, 1e999, "x"]}'],
    "lone surrogate": ['"company_name": "Empresa \\ud83d"', '"\\udc00key": "v"'],
    "thousands of digits": ['"serial": ' + "9" * 5000],
    "very deep nesting": ['"deep": ' + "[" * 100_000 + "]" * 100_000],
    # Parsed by json, then too deep to clean recursively without a bound (two frames a level).
    "600 levels": ['"company_name": ' + "[" * 600 + "]" * 600],
}


@pytest.mark.parametrize("members", ODD_BUT_USABLE.values(), ids=ODD_BUT_USABLE.keys())
async def test_odd_fields_do_not_stop_the_rotation(
    fake_oauth_server: Any, store: TokenStore, members: list[str]
) -> None:
    server = await fake_oauth_server("keliweb", expires_in=3600)
    tm, result = await refresh_with(server, store, with_raw_members(*members))
    async with tm:
        assert isinstance(result, Token), result
        assert server.is_valid_access_token(result.access_token)
        stored = await assert_store_holds_the_live_refresh_token(server, store)
        # Every field that is kept can be stored by any store: strict JSON, UTF-8.
        json.dumps(stored.to_dict(), allow_nan=False, ensure_ascii=False).encode("utf-8")
        json.dumps(result.to_dict(), allow_nan=False, ensure_ascii=False).encode("utf-8")
    assert server.reuse_detected == 0


async def test_odd_fields_keep_what_is_usable(fake_oauth_server: Any) -> None:
    server = await fake_oauth_server("keliweb", expires_in=3600)
    rewrite = with_raw_members(
        '"company_name": "Empresa \\ud83d Ltda"',
        '"ratio": NaN',
        '"serial": ' + "9" * 5000,
        '"ok": [1, NaN, 2]',
        '"company_id": 42',
    )
    tm, result = await refresh_with(server, MemoryStore(), rewrite)
    await tm.aclose()
    assert isinstance(result, Token)
    assert result.extra["company_name"] == "Empresa \ufffd Ltda"
    assert result.extra["ok"] == [1, 2]
    assert result.extra["company_id"] == 42
    assert "ratio" not in result.extra
    assert "serial" not in result.extra


async def test_nesting_deeper_than_redis_can_read_never_reaches_the_store(
    fake_oauth_server: Any, redis_url: str, redis_prefix: str
) -> None:
    """An application that raised the recursion limit parses an 1,100-deep value; stored as is,
    Redis's compare-and-swap (cjson, 1,000 levels at most) could never read the record again,
    and every later rotation would be lost."""
    server = await fake_oauth_server("keliweb", expires_in=3600)
    store = RedisStore(redis_url, prefix=redis_prefix)
    deep = '"company": ' + '{"a": ' * 1100 + "1" + "}" * 1100
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        tm, result = await refresh_with(server, store, with_raw_members(deep))
    finally:
        sys.setrecursionlimit(limit)
    async with tm:
        assert isinstance(result, Token)
        second = await tm.refresh("k")  # a compare-and-swap on the stored record
        assert server.is_valid_access_token(second.access_token)
        await assert_store_holds_the_live_refresh_token(server, store)
    assert server.reuse_detected == 0


class EncodingRefusingStore(MemoryStore):
    """A store as strict as Redis or SQLite about what it encodes."""

    async def put_if_absent(self, key: str, token: Token) -> bool:
        json.dumps(token.to_dict(), allow_nan=False, ensure_ascii=False).encode("utf-8")
        return await super().put_if_absent(key, token)

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        json.dumps(token.to_dict(), allow_nan=False, ensure_ascii=False).encode("utf-8")
        return await super().replace(key, token, expected_refresh_token=expected_refresh_token)


class OddProvider:
    """A custom provider whose tokens carry values no store can encode."""

    name = "odd"

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.token_url = inner.token_url

    @property
    def can_reauthenticate(self) -> bool:
        return False

    async def fetch_token(
        self, session: Any, *, refresh_token: str | None, issued_at: float
    ) -> Token:
        token = await self._inner.fetch_token(
            session, refresh_token=refresh_token, issued_at=issued_at
        )
        return Token(
            access_token=token.access_token,
            expires_at=token.expires_at,
            refresh_token=token.refresh_token,
            issued_at=token.issued_at,
            extra={"nan": float("nan"), "text": "a\ud800b", "obj": object()},
        )


async def test_a_custom_providers_unencodable_extra_never_blocks_the_save(
    server: FakeOAuthServer,
) -> None:
    store = EncodingRefusingStore()
    async with TokenManager(store=store, retry=FAST_RETRY, save_patience=0.2) as tm:
        await tm.add("k", OddProvider(keliweb(server)), refresh_token=server.issue_refresh_token())
        token = await tm.get_token("k")
    stored = await store.get("k")
    assert stored is not None
    assert stored.refresh_token == token.refresh_token
    assert server.valid_refresh_tokens == [stored.refresh_token]
    assert dict(stored.extra) == {"text": "a\ufffdb"}


BROKEN_BUT_ROTATED = {
    "cut after refresh_token": lambda a: a.with_body(
        json.dumps({"refresh_token": a.refresh_token})[:-1] + ', "access_token": "abc',
        "application/json",
    ),
    # (An opaque access token: a JWT's exp would stand in for the missing expires_in.)
    "no expires_in": lambda a: a.with_json(
        {**{k: v for k, v in a.json().items() if k != "expires_in"}, "access_token": "opaque"}
    ),
    "expires_in NaN": lambda a: a.with_json({**a.json(), "expires_in": float("nan")}),
}


@pytest.mark.parametrize("rewrite", BROKEN_BUT_ROTATED.values(), ids=BROKEN_BUT_ROTATED.keys())
async def test_an_unusable_answer_still_saves_an_intact_rotated_refresh_token(
    fake_oauth_server: Any, store: TokenStore, rewrite: Callable[[TokenAnswer], TokenAnswer]
) -> None:
    server = await fake_oauth_server("keliweb", expires_in=3600)
    tm, result = await refresh_with(server, store, rewrite)
    async with tm:
        assert isinstance(result, MalformedResponseError)
        await assert_store_holds_the_live_refresh_token(server, store)
        # The next refresh (forced: the unusable answer cooled the credential down) uses it.
        token = await tm.refresh("k")
    assert server.is_valid_access_token(token.access_token)
    assert server.reuse_detected == 0


def erpeasy(server: FakeOAuthServer) -> ERPeasyProvider:
    return ERPeasyProvider(server.client_id, server.client_secret, token_url=server.token_url)


ERPEASY_COOKIES = {
    "deletion after": lambda a: a.with_headers(
        [("Set-Cookie", "refresh_token=; Path=/; Max-Age=0")]
    ),
    "deletion before": lambda a: a.with_headers(
        [("Set-Cookie", "refresh_token=; Path=/; Max-Age=0")]
        + [("Set-Cookie", value) for value in a.header_values("Set-Cookie")],
        drop=["Set-Cookie"],
    ),
    "folded by a proxy": lambda a: a.with_headers(
        [("Set-Cookie", ", ".join([*a.header_values("Set-Cookie"), "x=1; Path=/"]))],
        drop=["Set-Cookie"],
    ),
}


@pytest.mark.parametrize("rewrite", ERPEASY_COOKIES.values(), ids=ERPEASY_COOKIES.keys())
async def test_erpeasy_rotated_cookie_reaches_the_store(
    fake_oauth_server: Any, store: TokenStore, rewrite: Callable[[TokenAnswer], TokenAnswer]
) -> None:
    server = await fake_oauth_server("erpeasy", expires_in=3600)
    async with TokenManager(store=store, retry=FAST_RETRY, clock=FakeClock()) as tm:
        await tm.add("k", erpeasy(server), refresh_token=server.issue_refresh_token())
        server.rewrite_next(rewrite)
        token = await tm.get_token("k")
        assert server.is_valid_access_token(token.access_token)
        await assert_store_holds_the_live_refresh_token(server, store)
        await tm.refresh("k")  # the next refresh uses it: no reuse
    assert server.reuse_detected == 0
