"""Timing guarantees of the manager against odd lifetimes: no token handed out past its expiry,
no request storm, margins that cover whole-second expiry (issue: never lose, never storm)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest
from support import FAST_RETRY, keliweb

from asynctoken import (
    ConfigurationError,
    FileStore,
    InvalidGrantError,
    MalformedResponseError,
    MemoryStore,
    RetryPolicy,
    TokenManager,
)
from asynctoken.testing import FakeClock, FakeOAuthServer

# --------------------------------------------------------------------------- token_rejected


async def test_token_rejected_many_requests_one_refresh(server: FakeOAuthServer) -> None:
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        old = await tm.get_token("k")
        server.hold()
        retries = [asyncio.ensure_future(tm.token_rejected("k", old)) for _ in range(50)]
        await server.wait_for_token_requests(2)
        server.release()
        results = await asyncio.gather(*retries)
    assert server.token_requests == 2
    assert {r.access_token for r in results if r is not None} == {results[0].access_token}
    assert all(r is not None and r.access_token != old.access_token for r in results)


async def test_token_rejected_returns_a_newer_token_without_a_refresh(
    server: FakeOAuthServer,
) -> None:
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        old = await tm.get_token("k")
        new = await tm.token_rejected("k", old)
        assert new is not None
        # A late 401 for the old token: the newer one comes back, nothing is refreshed.
        assert await tm.token_rejected("k", old) is new
    assert server.token_requests == 2


async def test_token_rejected_returns_none_when_a_retry_would_not_help(
    server: FakeOAuthServer,
) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY, invalidate_interval=5) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        first = await tm.get_token("k")
        second = await tm.token_rejected("k", first)
        assert second is not None
        # The replacement is rejected at once: the API refuses the credential for another
        # reason; invalidate() would say False here too, but so it does for a newer token.
        assert await tm.token_rejected("k", second) is None
        clock.advance(5)
        third = await tm.token_rejected("k", second)
    assert third is not None
    assert third.access_token != second.access_token
    assert server.token_requests == 3


# --------------------------------------------------------------------------- storms


async def test_tiny_lifetimes_cause_at_most_one_request_per_min_interval(
    fake_oauth_server: Any,
) -> None:
    """0.3 s tokens, callers in a tight loop for 2 s: without a floor, a refresh per expiry
    (every 0.15 s, each rotating). With the 1 s minimum interval: at most 3 requests, and
    every token handed out is still valid at the server."""
    server = await fake_oauth_server("keliweb", expires_in=0.3)
    loop = asyncio.get_running_loop()
    handed_out_dead = 0
    calls = 0
    async with TokenManager(retry=FAST_RETRY, min_refresh_interval=1.0) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        end = loop.time() + 2.0
        while loop.time() < end:
            token = await tm.get_token("k")
            calls += 1
            handed_out_dead += not server.is_valid_access_token(token.access_token)
    assert calls > 3
    assert server.token_requests <= 3, server.token_requests
    assert handed_out_dead == 0
    assert server.reuse_detected == 0


async def test_a_token_that_expires_before_its_answer_arrives_is_refused_but_its_rotation_kept(
    fake_oauth_server: Any,
) -> None:
    server = await fake_oauth_server("keliweb", expires_in=0.2, delay=0.3)
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        with pytest.raises(MalformedResponseError, match="expired before its answer arrived"):
            await tm.get_token("k")
        stored = await tm.store.get("k")
    assert stored is not None
    assert server.valid_refresh_tokens == [stored.refresh_token]
    assert server.token_requests == 1


async def test_whole_second_expiry_is_covered_by_the_expiry_floor(
    fake_oauth_server: Any,
) -> None:
    """The server keeps expiry in whole seconds: a 4 s token issued at x.9 dies after 3.1 s.
    The expiry margin (1 s + in_flight) keeps it from being handed out that late."""
    clock = FakeClock(time=1_700_000_000.9)
    server = await fake_oauth_server("keliweb", expires_in=4, whole_second_expiry=True, clock=clock)
    async with TokenManager(clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        first = await tm.get_token("k")
        clock.advance(3.3)  # dead at the server, 0.7 s before the answer's expires_in
        assert not server.is_valid_access_token(first.access_token)
        token = await tm.get_token("k")
        assert server.is_valid_access_token(token.access_token)
        assert token.access_token != first.access_token


# --------------------------------------------------------------------------- cooldowns


async def test_a_cooldown_ends_when_another_process_reseeds_the_credential(
    server: FakeOAuthServer, tmp_path: Path
) -> None:
    clock = FakeClock()
    path = tmp_path / "tokens.json"
    async with TokenManager(store=FileStore(path), clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token="def50200" + "0" * 40)  # dead
        with pytest.raises(InvalidGrantError):
            await tm.get_token("k")
        with pytest.raises(InvalidGrantError):
            await tm.get_token("k")  # within the cooldown: fails fast
        assert server.token_requests == 1
        # Another process (or `asynctoken add --overwrite`) re-seeds the credential.
        async with TokenManager(store=FileStore(path), retry=FAST_RETRY) as other:
            await other.add(
                "k", keliweb(server), refresh_token=server.issue_refresh_token(), overwrite=True
            )
        clock.advance(1)  # the store is looked at again at most once a second
        token = await tm.get_token("k")
    assert server.is_valid_access_token(token.access_token)
    assert server.token_requests == 2


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "name",
    [
        "lock_timeout",
        "error_cooldown",
        "background_retry_interval",
        "invalidate_interval",
        "close_timeout",
        "save_patience",
        "min_refresh_interval",
    ],
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_manager_refuses_nan_infinite_and_negative_durations(name: str, value: float) -> None:
    with pytest.raises(ConfigurationError, match=name):
        TokenManager(**{name: value})


@pytest.mark.parametrize("name", ["deadline", "initial_delay", "max_delay", "max_retry_after"])
def test_retry_policy_refuses_nan(name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        RetryPolicy(**{name: math.nan})


async def test_a_picked_up_replacement_can_still_be_rejected_and_refreshed(
    server: FakeOAuthServer,
) -> None:
    """A rejected token is replaced by one another process had stored (no token request).
    When that one is rejected too, the guard against refresh loops must not refuse it: it
    caused no refresh yet. A rejection of the token that refresh brings is refused."""
    store = MemoryStore()
    clock = FakeClock()
    async with (
        TokenManager(store=store, clock=clock, retry=FAST_RETRY, invalidate_interval=5) as a,
        TokenManager(store=store, clock=clock, retry=FAST_RETRY) as b,
    ):
        await a.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await b.add("k", keliweb(server))
        first = await a.get_token("k")
        second = await b.refresh("k")  # another process's newer token, in the store
        picked = await a.token_rejected("k", first)
        assert picked is not None
        assert picked.access_token == second.access_token
        assert server.token_requests == 2  # picked up: no request
        third = await a.token_rejected("k", picked)
        assert third is not None
        assert third.access_token != second.access_token
        assert server.token_requests == 3
        assert await a.token_rejected("k", third) is None  # that refresh was a rejection's
    assert server.token_requests == 3
