"""TokenManager against a real fake token server on loopback: single flight, refresh ahead,
cancellation, rotation, errors and retries, seeding, clock and sessions."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from support import FAST_RETRY, keliweb

from asynctoken import (
    ERPeasyProvider,
    InvalidClientError,
    InvalidGrantError,
    KeliwebProvider,
    MalformedResponseError,
    Margins,
    MemoryStore,
    OAuth2Provider,
    RetryPolicy,
    StoreError,
    Token,
    TokenEndpointError,
    TokenError,
    TokenManager,
    TransientError,
)
from asynctoken.testing import FakeClock, FakeOAuthServer


@pytest.fixture
async def manager(server: FakeOAuthServer) -> AsyncIterator[TokenManager]:
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        yield tm


def refresh_tasks(key: str) -> list[asyncio.Task[Any]]:
    """The manager's background refresh tasks for ``key`` (named ``asynctoken-refresh:<key>``)."""
    return [t for t in asyncio.all_tasks() if t.get_name() == f"asynctoken-refresh:{key}"]


def run_sync(coro: Any) -> Any:
    """Drive a coroutine one step: returns its result if it finished without suspending."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended")


# --------------------------------------------------------------------------- 1. single flight


async def test_concurrent_callers_share_one_request(
    server: FakeOAuthServer, manager: TokenManager
) -> None:
    tokens = await asyncio.gather(*(manager.get_token("k") for _ in range(500)))
    assert server.token_requests == 1
    assert len({t.access_token for t in tokens}) == 1
    assert server.is_valid_access_token(tokens[0].access_token)


async def test_expired_token_refreshes_once_for_all_callers(server: FakeOAuthServer) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        first = await tm.get_token("k")
        clock.advance(3600)
        tokens = await asyncio.gather(*(tm.get_token("k") for _ in range(300)))
    assert server.token_requests == 2
    assert {t.access_token for t in tokens} == {tokens[0].access_token}
    assert tokens[0].access_token != first.access_token


class CountingStore(MemoryStore):
    """Counts reads and cross-process lock acquisitions."""

    def __init__(self) -> None:
        super().__init__()
        self.locks = 0
        self.reads = 0

    async def get(self, key: str) -> Token | None:
        self.reads += 1
        return await super().get(key)

    def lock(self, key: str, *, timeout: float) -> Any:
        self.locks += 1
        return super().lock(key, timeout=timeout)


async def test_one_process_takes_the_store_lock_once(server: FakeOAuthServer) -> None:
    store = CountingStore()
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await asyncio.gather(*(tm.get_token("k") for _ in range(1000)))
    assert store.locks == 1
    assert store.reads == 2  # one before the lock, one under it
    assert server.token_requests == 1


async def test_different_credentials_refresh_in_parallel(server: FakeOAuthServer) -> None:
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("a", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.add("b", keliweb(server), refresh_token=server.issue_refresh_token())
        server.hold()
        both = asyncio.gather(tm.get_token("a"), tm.get_token("b"))
        # Both requests reach the server while neither has been answered: no shared lock.
        await server.wait_for_token_requests(2)
        server.release()
        a, b = await both
    assert a.access_token != b.access_token
    assert server.token_requests == 2


# --------------------------------------------------------------------------- 2. fast path


async def test_fresh_token_is_served_without_suspending_or_tasks(manager: TokenManager) -> None:
    token = await manager.get_token("k")
    tasks_before = asyncio.all_tasks()
    # No await point on the hot path: the coroutine finishes on its first step.
    assert run_sync(manager.get_token("k")) is token
    assert asyncio.all_tasks() == tasks_before


# --------------------------------------------------------------------------- 3. refresh ahead


async def test_stale_token_served_at_once_with_one_background_refresh(
    server: FakeOAuthServer,
) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        old = await tm.get_token("k")
        clock.advance(3600 - 200)  # inside the 300 s refresh margin, before the 30 s one
        server.hold()
        served = [run_sync(tm.get_token("k")) for _ in range(100)]
        assert all(t is old for t in served)
        await server.wait_for_token_requests(2)
        (refresh,) = refresh_tasks("k")
        server.release()
        await refresh
        new = run_sync(tm.get_token("k"))
        assert new is not old
        assert run_sync(tm.get_token("k")) is new
    assert server.token_requests == 2


@pytest.mark.parametrize(
    ("lifetime", "stale_before", "expired_before"),
    [
        (3600.0, 300.0, 30.0),  # the configured margins
        (60.0, 15.0, 3.0),  # capped at 25 % and 5 % of the lifetime
        (8.0, 3.6, 2.0),  # expiry floored at 1 s whole-second expiry + 1 s in flight
        (3.0, 2.1, 1.5),  # too short for the floor: half its life; the stale window keeps 0.6 s
    ],
)
def test_margins_scale_with_lifetime(
    lifetime: float, stale_before: float, expired_before: float
) -> None:
    assert Margins().offsets(lifetime) == pytest.approx((stale_before, expired_before))


def test_in_flight_allowance_raises_the_expiry_floor() -> None:
    stale, expired = Margins(in_flight=4.0).offsets(60.0)
    assert expired == 5.0  # 1 s whole-second expiry + 4 s in flight
    assert stale == pytest.approx(17.0)  # the 12 s stale window is kept


@pytest.mark.parametrize("name", ["refresh", "expiry", "in_flight"])
def test_margins_refuse_nan(name: str) -> None:
    from asynctoken import ConfigurationError

    with pytest.raises(ConfigurationError, match=name):
        Margins(**{name: float("nan")})


async def test_three_second_token_is_not_refreshed_on_every_call(
    fake_oauth_server: Any,
) -> None:
    server = await fake_oauth_server("keliweb", expires_in=3)
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("k")
        for _ in range(30):  # three lifetimes
            clock.advance(0.1)
            await tm.get_token("k")
    assert server.token_requests <= 4


async def test_failed_background_refresh_is_not_raised_while_token_valid(
    server: FakeOAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        old = await tm.get_token("k")
        clock.advance(3600 - 200)
        server.fail_next(10, status=503)
        with caplog.at_level(logging.WARNING, "asynctoken"):
            assert await tm.get_token("k") is old
            await server.wait_for_token_responses(1 + FAST_RETRY.attempts)
            # Callers keep getting the valid token; no new background attempt during backoff.
            for _ in range(50):
                assert await tm.get_token("k") is old
                await asyncio.sleep(0)
    assert server.token_requests == 1 + FAST_RETRY.attempts
    assert any("background refresh failed" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- 4. cancellation


async def test_cancelling_the_leader_keeps_the_result(server: FakeOAuthServer) -> None:
    store = MemoryStore()
    seed = server.issue_refresh_token()
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=seed)
        server.hold()
        leader = asyncio.create_task(tm.get_token("k"))
        follower = asyncio.create_task(tm.get_token("k"))
        await server.wait_for_token_requests(1)
        leader.cancel()
        server.release()
        token = await follower
        with pytest.raises(asyncio.CancelledError):
            await leader
        stored = await store.get("k")
        assert stored is not None
        assert stored.refresh_token == server.requests[0].issued_refresh_token
        assert stored.refresh_token != seed
        assert await tm.get_token("k") is token
    assert server.token_requests == 1


async def test_cancelling_every_caller_still_saves_rotation(server: FakeOAuthServer) -> None:
    store = MemoryStore()
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        server.hold()
        callers = [asyncio.create_task(tm.get_token("k")) for _ in range(10)]
        await server.wait_for_token_requests(1)
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        server.release()
        await server.wait_for_token_responses(1)
        token = await tm.get_token("k")  # joins the still-running refresh or reads its result
        stored = await store.get("k")
        assert stored is not None
        assert stored.refresh_token == server.requests[0].issued_refresh_token
        assert token.access_token == server.requests[0].issued_access_token
    assert server.token_requests == 1
    assert server.valid_refresh_tokens == [stored.refresh_token]


async def test_close_waits_for_inflight_refresh_and_leaves_no_task(
    server: FakeOAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    tm = TokenManager(store=store, retry=FAST_RETRY)
    await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
    server.hold()
    caller = asyncio.create_task(tm.get_token("k"))
    await server.wait_for_token_requests(1)
    caller.cancel()
    closing = asyncio.create_task(tm.aclose())
    server.release()
    with caplog.at_level(logging.ERROR, "asyncio"):
        await closing
    stored = await store.get("k")
    assert stored is not None
    assert stored.refresh_token == server.requests[0].issued_refresh_token
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("asynctoken")] == []
    assert not [r for r in caplog.records if "destroyed" in r.getMessage()]
    with pytest.raises(TokenError, match="closed"):
        await tm.get_token("k")


async def test_close_cancels_refresh_that_outlives_close_timeout(server: FakeOAuthServer) -> None:
    tm = TokenManager(retry=FAST_RETRY, close_timeout=0.0)
    await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
    server.hold()
    caller = asyncio.create_task(tm.get_token("k"))
    await server.wait_for_token_requests(1)
    await tm.aclose()
    server.release()
    # The caller was not cancelled itself: it learns that the manager closed.
    with pytest.raises(TokenError, match="closed during the refresh"):
        await caller
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("asynctoken")] == []


# --------------------------------------------------------------------------- 5. rotation


class GatedStore(MemoryStore):
    """A store whose compare-and-swap waits for a gate, to observe what happens meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        self.entered.set()
        await self.gate.wait()
        return await super().replace(key, token, expected_refresh_token=expected_refresh_token)


async def test_rotated_refresh_token_saved_before_anyone_gets_the_access_token(
    server: FakeOAuthServer,
) -> None:
    store = GatedStore()
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        callers = [asyncio.create_task(tm.get_token("k")) for _ in range(5)]
        await store.entered.wait()
        await server.wait_for_token_responses(1)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not any(c.done() for c in callers)
        store.gate.set()
        tokens = await asyncio.gather(*callers)
        stored = await store.get("k")
    assert stored is not None
    assert stored.refresh_token == server.requests[0].issued_refresh_token
    assert tokens[0].refresh_token == stored.refresh_token


async def test_consecutive_refreshes_use_each_rotated_token(server: FakeOAuthServer) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        for _ in range(5):
            await tm.get_token("k")
            clock.advance(3600)
    assert server.token_requests == 5
    assert server.reuse_detected == 0
    assert [r.outcome for r in server.requests] == ["ok"] * 5


async def test_erpeasy_rotation_through_set_cookie(fake_oauth_server: Any) -> None:
    server = await fake_oauth_server("erpeasy", expires_in=3600)
    clock = FakeClock()
    provider = ERPeasyProvider(
        client_id=server.client_id,
        client_secret=server.client_secret,
        token_url=server.token_url,
    )
    async with TokenManager(clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("erp", provider, refresh_token=server.issue_refresh_token())
        first = await tm.get_token("erp")
        clock.advance(3600)
        second = await tm.get_token("erp")
    assert first.extra["company_id"] == 1234
    assert first.refresh_token == server.requests[0].issued_refresh_token
    assert second.refresh_token == server.requests[1].issued_refresh_token
    assert [r.outcome for r in server.requests] == ["ok", "ok"]


async def test_answer_without_refresh_token_keeps_the_old_one(fake_oauth_server: Any) -> None:
    server = await fake_oauth_server("oauth2", rotate=False, expires_in=3600)
    clock = FakeClock()
    seed = server.issue_refresh_token()
    store = MemoryStore()
    provider = OAuth2Provider(
        token_url=server.token_url,
        client_id=server.client_id,
        client_secret=server.client_secret,
    )
    async with TokenManager(store=store, clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("g", provider, refresh_token=seed)
        await tm.get_token("g")
        clock.advance(3600)
        token = await tm.get_token("g")
        stored = await store.get("g")
    assert token.refresh_token == seed
    assert stored is not None
    assert stored.refresh_token == seed
    assert server.token_requests == 2


# --------------------------------------------------------------------------- 6. errors, retries


async def test_invalid_grant_is_final_and_cooled_down(server: FakeOAuthServer) -> None:
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token="def50200" + "0" * 40)
        with pytest.raises(InvalidGrantError) as first:
            await tm.get_token("k")
        for _ in range(5):
            with pytest.raises(InvalidGrantError):
                await tm.get_token("k")
    assert server.token_requests == 1
    assert first.value.key == "k"
    assert "re-authorize" in str(first.value) or first.value.status == 400


async def test_error_cooldown_expires(server: FakeOAuthServer) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY, error_cooldown=30) as tm:
        await tm.add("k", keliweb(server), refresh_token="def50200" + "0" * 40)
        with pytest.raises(InvalidGrantError):
            await tm.get_token("k")
        clock.advance(31)
        with pytest.raises(InvalidGrantError):
            await tm.get_token("k")
    assert server.token_requests == 2


async def test_passport_legacy_401_invalid_request_is_invalid_grant(
    fake_oauth_server: Any,
) -> None:
    server = await fake_oauth_server("keliweb", passport_legacy_errors=True)
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token="def50200" + "1" * 40)
        with pytest.raises(InvalidGrantError) as info:
            await tm.get_token("k")
    assert info.value.status == 401
    assert server.token_requests == 1


async def test_invalid_client_is_final(server: FakeOAuthServer) -> None:
    provider = KeliwebProvider(
        client_id=server.client_id, client_secret="wrong-secret", token_url=server.token_url
    )
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", provider, refresh_token=server.issue_refresh_token())
        with pytest.raises(InvalidClientError):
            await tm.get_token("k")
        with pytest.raises(InvalidClientError):
            await tm.get_token("k")
    assert server.token_requests == 1


async def test_other_4xx_is_final_typed_and_cooled_down(server: FakeOAuthServer) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY, error_cooldown=30) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        server.fail_next(status=400, error="invalid_scope")
        with pytest.raises(TokenEndpointError) as info:
            await tm.get_token("k")
        assert info.value.error == "invalid_scope"
        assert server.token_requests == 1
        # Final: repeating the call within the cooldown fails fast, without a request.
        with pytest.raises(TokenEndpointError):
            await tm.get_token("k")
        assert server.token_requests == 1
        clock.advance(30)
        await tm.get_token("k")
    assert server.token_requests == 2


async def test_background_refresh_waits_as_long_as_retry_after_says(
    server: FakeOAuthServer,
) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY, background_retry_interval=10) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        old = await tm.get_token("k")
        clock.advance(3600 - 250)
        server.fail_next(1, status=429, retry_after=60)  # longer than the retry deadline
        assert await tm.get_token("k") is old
        (refresh,) = refresh_tasks("k")
        await refresh  # the failure is recorded, not raised
        assert server.token_requests == 2
        clock.advance(30)  # past background_retry_interval, not past Retry-After
        assert await tm.get_token("k") is old
        assert server.token_requests == 2
        clock.advance(31)
        assert await tm.get_token("k") is old
        await server.wait_for_token_requests(3)


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
async def test_transient_errors_are_retried(
    server: FakeOAuthServer, manager: TokenManager, status: int
) -> None:
    server.fail_next(2, status=status)
    token = await manager.get_token("k")
    assert server.token_requests == 3
    assert server.is_valid_access_token(token.access_token)


async def test_temporarily_unavailable_error_code_is_retried(
    server: FakeOAuthServer, manager: TokenManager
) -> None:
    server.fail_next(1, status=400, error="temporarily_unavailable")
    await manager.get_token("k")
    assert server.token_requests == 2


async def test_connection_drop_is_retried(server: FakeOAuthServer, manager: TokenManager) -> None:
    server.disconnect_next(1)
    await manager.get_token("k")
    assert server.token_requests == 2


async def test_retry_after_is_honoured(
    server: FakeOAuthServer, manager: TokenManager, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail_next(1, status=429, retry_after=1)
    with caplog.at_level(logging.WARNING, "asynctoken"):
        await manager.get_token("k")
    delays = [getattr(r, "asynctoken_retry_delay", None) for r in caplog.records]
    assert [d for d in delays if d is not None] == [pytest.approx(1.0)]
    gap = server.requests[1].loop_time - server.requests[0].loop_time
    assert gap >= 1.0


async def test_retries_stop_with_a_typed_transient_error(
    server: FakeOAuthServer, manager: TokenManager
) -> None:
    server.fail_next(10, status=503)
    with pytest.raises(TransientError) as info:
        await manager.get_token("k")
    assert info.value.attempts == FAST_RETRY.attempts
    assert info.value.status == 503
    assert server.token_requests == FAST_RETRY.attempts
    server.clear_failures()
    assert server.is_valid_access_token((await manager.get_token("k")).access_token)


async def test_retry_deadline_bounds_the_wait(server: FakeOAuthServer) -> None:
    policy = RetryPolicy(attempts=100, deadline=0.5, initial_delay=0.2, max_delay=0.2)
    async with TokenManager(retry=policy) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        server.fail_next(100, status=503)
        with pytest.raises(TransientError) as info:
            await tm.get_token("k")
    # Delays are 0.1-0.2 s (jittered): the 0.5 s deadline, not the 100 attempts, ends it. A
    # retry is only scheduled if it starts within the deadline.
    assert 2 <= server.token_requests <= 6
    assert info.value.attempts == server.token_requests
    first, last = server.requests[0].loop_time, server.requests[-1].loop_time
    assert last - first <= 0.5 + 0.1  # the last retry started within the deadline (+ latency)


@pytest.mark.parametrize(
    "kind", ["html", "invalid_json", "missing_access_token", "bad_expires_in", "oversized"]
)
async def test_malformed_answers_are_typed_cool_down_and_nothing_stays_stuck(
    server: FakeOAuthServer, kind: Any
) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY, error_cooldown=30) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        server.malform_next(kind)
        with pytest.raises(MalformedResponseError) as info:
            await tm.get_token("k")
        assert info.value.reason
        # A server that keeps answering like this is not asked by every caller.
        for _ in range(5):
            with pytest.raises(MalformedResponseError):
                await tm.get_token("k")
        assert server.token_requests == 1
        # The refresh token was not consumed; after the cooldown the next call refreshes.
        clock.advance(30)
        token = await tm.get_token("k")
    assert server.is_valid_access_token(token.access_token)
    assert server.token_requests == 2


async def test_dead_refresh_token_falls_back_to_password_grant(server: FakeOAuthServer) -> None:
    provider = keliweb(server, username="user@example.com", password="pw")
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", provider, refresh_token="def50200" + "2" * 40)
        token = await tm.get_token("k")
    assert [r.grant_type for r in server.requests] == ["refresh_token", "password"]
    assert server.is_valid_access_token(token.access_token)
    assert token.refresh_token == server.requests[1].issued_refresh_token


async def test_password_grant_without_any_seed(server: FakeOAuthServer) -> None:
    provider = keliweb(server, username="user@example.com", password="pw")
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", provider)
        await tm.get_token("k")
    assert [r.grant_type for r in server.requests] == ["password"]


async def test_no_refresh_token_and_no_password_says_reauthorize(server: FakeOAuthServer) -> None:
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server))
        with pytest.raises(InvalidGrantError, match="re-authorize"):
            await tm.get_token("k")
    assert server.token_requests == 0


# --------------------------------------------------------------------------- 7. seeding


async def test_seed_never_overwrites_a_stored_credential(server: FakeOAuthServer) -> None:
    store = MemoryStore()
    seed = server.issue_refresh_token()
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        assert await tm.add("k", keliweb(server), refresh_token=seed)
        await tm.get_token("k")
    rotated = (await store.get("k")).refresh_token  # type: ignore[union-attr]
    # "Restart" with the same configuration: the stale seed must not replace the rotated token.
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        assert not await tm.add("k", keliweb(server), refresh_token=seed)
        assert (await store.get("k")).refresh_token == rotated  # type: ignore[union-attr]
        await tm.get_token("k")
    assert server.token_requests == 1  # the stored access token was still valid
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        fresh_seed = server.issue_refresh_token()
        assert await tm.add("k", keliweb(server), refresh_token=fresh_seed, overwrite=True)
        assert (await store.get("k")).refresh_token == fresh_seed  # type: ignore[union-attr]


# --------------------------------------------------------------------------- 8. secrets


async def test_secrets_never_appear_in_reprs_logs_or_errors(
    server: FakeOAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret_provider = keliweb(server, username="user@example.com", password="pw-very-secret-1")
    seed = server.issue_refresh_token()
    with caplog.at_level(logging.DEBUG, "asynctoken"):
        async with TokenManager(retry=FAST_RETRY) as tm:
            await tm.add("k", secret_provider, refresh_token=seed)
            token = await tm.get_token("k")
            server.revoke(token.refresh_token or "", family=True)
            await tm.invalidate("k", token)
            server.fail_next(1, status=401, error="invalid_client")
            with pytest.raises(TokenError) as info:
                await tm.get_token("k")
            texts = [repr(tm), repr(token), str(token), repr(secret_provider), str(info.value)]
    texts += [r.getMessage() for r in caplog.records]
    blob = "\n".join(texts)
    for secret in (
        server.client_secret,
        "pw-very-secret-1",
        seed,
        token.access_token,
        token.refresh_token,
    ):
        assert secret
        assert secret not in blob


# --------------------------------------------------------------------------- 9. clock


async def test_expiry_counts_from_when_the_request_was_sent(server: FakeOAuthServer) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        sent_at = clock.time()
        server.hold()
        pending = asyncio.create_task(tm.get_token("k"))
        await server.wait_for_token_requests(1)
        clock.advance(50)  # the answer takes 50 s to arrive
        server.release()
        token = await pending
        assert token.expires_at == pytest.approx(sent_at + 3600)
        clock.advance(3600 - 50 - 200)  # 200 s before expiry counted from sending: stale
        server.hold()
        assert run_sync(tm.get_token("k")) is token
        await server.wait_for_token_requests(2)
        server.release()


# --------------------------------------------------------------------------- 10. sessions


async def test_user_session_pool_is_used_but_not_its_jar_nor_closed(
    fake_oauth_server: Any,
) -> None:
    server = await fake_oauth_server("erpeasy")
    provider = ERPeasyProvider(
        client_id=server.client_id, client_secret=server.client_secret, token_url=server.token_url
    )
    async with aiohttp.ClientSession() as session:
        session.cookie_jar.update_cookies(
            {"tracking": "abc"}, response_url=aiohttp.client.URL(server.token_url)
        )
        async with TokenManager(session=session, retry=FAST_RETRY) as tm:
            await tm.add("erp", provider, refresh_token=server.issue_refresh_token())
            await tm.get_token("erp")
        assert not session.closed
        assert "refresh_token" not in {c.key for c in session.cookie_jar}
    assert "tracking" not in server.requests[0].cookies


async def test_owned_session_is_closed(manager: TokenManager) -> None:
    await manager.get_token("k")
    session = manager._sessions.current
    assert session is not None
    await manager.aclose()
    assert session.closed


# --------------------------------------------------------------------------- misc API


async def test_unknown_key_and_provider_factory(server: FakeOAuthServer) -> None:
    calls: list[str] = []

    async def factory(key: str) -> KeliwebProvider | None:
        calls.append(key)
        return keliweb(server) if key.startswith("tenant-") else None

    store = MemoryStore()
    for i in range(3):
        await store.put_if_absent(
            f"tenant-{i}",
            Token(access_token="", expires_at=0, refresh_token=server.issue_refresh_token()),
        )
    async with TokenManager(store=store, provider_factory=factory, retry=FAST_RETRY) as tm:
        tokens = await asyncio.gather(*(tm.get_token(f"tenant-{i % 3}") for i in range(30)))
        with pytest.raises(KeyError):
            await tm.get_token("nobody")
    assert len({t.access_token for t in tokens}) == 3
    assert server.token_requests == 3
    assert sorted(calls) == ["nobody", "tenant-0", "tenant-1", "tenant-2"]


async def test_invalidate_drops_only_the_current_token(
    server: FakeOAuthServer, manager: TokenManager
) -> None:
    old = await manager.get_token("k")
    assert await manager.invalidate("k", old)
    new = await manager.get_token("k")
    assert new.access_token != old.access_token
    assert server.token_requests == 2
    # A late 401 for the old token must not drop the newer one.
    assert not await manager.invalidate("k", old)
    assert await manager.get_token("k") is new
    assert server.token_requests == 2


async def test_rejections_cannot_make_the_manager_refresh_in_a_loop(
    server: FakeOAuthServer,
) -> None:
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY, invalidate_interval=5) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        first = await tm.get_token("k")
        assert await tm.invalidate("k", first)
        second = await tm.get_token("k")
        # An API that rejects every token: the replacement is rejected at once.
        assert not await tm.invalidate("k", second)
        assert await tm.get_token("k") is second
        assert server.token_requests == 2
        clock.advance(5)
        assert await tm.invalidate("k", second)
        third = await tm.get_token("k")
    assert third.access_token != second.access_token
    assert server.token_requests == 3


async def test_closed_user_session_gives_a_clear_error(server: FakeOAuthServer) -> None:
    session = aiohttp.ClientSession()
    async with TokenManager(session=session, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await session.close()
        with pytest.raises(TokenError, match="session"):
            await tm.get_token("k")
    assert server.token_requests == 0


async def test_invalidated_token_is_not_picked_up_again_from_the_store(
    server: FakeOAuthServer,
) -> None:
    store = MemoryStore()
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        old = await tm.get_token("k")
        await tm.invalidate("k", old)
        new = await tm.get_token("k")
    assert new.access_token != old.access_token


async def test_remove_forgets_everywhere(server: FakeOAuthServer, manager: TokenManager) -> None:
    await manager.get_token("k")
    assert await manager.remove("k")
    assert await manager.store.get("k") is None
    with pytest.raises(KeyError):
        await manager.get_token("k")


def test_insecure_token_url_is_refused() -> None:
    from asynctoken import ConfigurationError

    with pytest.raises(ConfigurationError):
        KeliwebProvider(client_id="id", client_secret="s", token_url="http://example.com/token")
    KeliwebProvider(
        client_id="id",
        client_secret="s",
        token_url="http://example.com/token",
        allow_insecure_http=True,
    )


# --------------------------------------------------------------------------- store failures


class FlakyStore(MemoryStore):
    """A MemoryStore whose writes (or everything) fail on demand, like a store going away."""

    def __init__(self) -> None:
        super().__init__()
        self.failing_writes = 0
        self.down = False

    def _maybe_fail(self, write: bool) -> None:
        if self.down:
            raise StoreError("store unreachable", location="flaky")
        if write and self.failing_writes:
            self.failing_writes -= 1
            raise StoreError("write failed", location="flaky")

    async def get(self, key: str) -> Token | None:
        self._maybe_fail(write=False)
        return await super().get(key)

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        self._maybe_fail(write=True)
        return await super().replace(key, token, expected_refresh_token=expected_refresh_token)

    async def put_if_absent(self, key: str, token: Token) -> bool:
        self._maybe_fail(write=True)
        return await super().put_if_absent(key, token)


async def test_a_briefly_failing_save_is_retried(server: FakeOAuthServer) -> None:
    store = FlakyStore()
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        store.failing_writes = 2
        token = await tm.get_token("k")
    stored = await store.get("k")
    assert stored is not None
    assert stored.refresh_token == token.refresh_token
    assert server.is_valid_refresh_token(token.refresh_token or "")


async def test_rotated_token_survives_a_store_that_refuses_writes(
    server: FakeOAuthServer,
) -> None:
    store = FlakyStore()
    clock = FakeClock()
    seed = server.issue_refresh_token()
    async with TokenManager(store=store, clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=seed)
        store.failing_writes = 100
        first = await tm.get_token("k")  # the server rotated; the store could not take it
        assert server.is_valid_access_token(first.access_token)
        assert (await store.get("k")).refresh_token == seed  # type: ignore[union-attr]
        store.failing_writes = 0
        clock.advance(3600)
        second = await tm.get_token("k")
    # The kept refresh token was saved, then used: no reuse of the dead seed.
    assert server.reuse_detected == 0
    assert [r.refresh_token for r in server.requests] == [seed, first.refresh_token]
    stored = await store.get("k")
    assert stored is not None
    assert stored.refresh_token == second.refresh_token
    assert server.is_valid_refresh_token(second.refresh_token or "")


async def test_store_outage_spares_valid_tokens_and_recovers(server: FakeOAuthServer) -> None:
    store = FlakyStore()
    clock = FakeClock()
    async with TokenManager(store=store, clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        token = await tm.get_token("k")
        store.down = True
        clock.advance(3600 - 200)  # stale: served while the background refresh fails
        for _ in range(10):
            assert await tm.get_token("k") is token
        clock.advance(200)  # expired: the refresh must go through the store
        with pytest.raises(StoreError):
            await tm.get_token("k")
        store.down = False
        new = await tm.get_token("k")
    assert new.access_token != token.access_token
    assert server.reuse_detected == 0


class DropWatcher(TokenManager):
    """A manager that signals when its expiry timer drops an entry."""

    __slots__ = ("dropped",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dropped = asyncio.Event()

    def _drop(self, key: str, entry: Any) -> None:
        super()._drop(key, entry)
        self.dropped.set()


async def test_hot_path_serves_a_fresh_token_until_it_turns_stale(
    fake_oauth_server: Any,
) -> None:
    server = await fake_oauth_server("keliweb", expires_in=100)
    clock = FakeClock()
    async with TokenManager(clock=clock, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        token = await tm.get_token("k")
        clock.advance(74.9)  # fresh for 75 % of the lifetime
        assert run_sync(tm.get_token("k")) is token
        assert tm._peek_fresh("k") is token
        clock.advance(0.2)
        assert tm._peek_fresh("k") is None  # stale: the hot path lets go
        # Stale: the same token at once, and one background refresh.
        server.hold()
        assert run_sync(tm.get_token("k")) is token
        assert run_sync(tm.get_token("k")) is token
        await server.wait_for_token_requests(2)
        (refresh,) = refresh_tasks("k")
        server.release()
        await refresh
        new = run_sync(tm.get_token("k"))
        assert new is not token
        assert run_sync(tm.get_token("k")) is new
    assert server.token_requests == 2


async def test_a_stalled_event_loop_never_gets_an_expired_token(
    fake_oauth_server: Any,
) -> None:
    """A loop blocked past the token's expiry: the first call after it must not get it, even
    though no loop timer has run since (a hot path without a clock read would hand it out)."""
    server = await fake_oauth_server("keliweb", expires_in=2)
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        old = await tm.get_token("k")
        time.sleep(2.1)  # the stall itself: the loop runs nothing while the token expires
        new = await tm.get_token("k")
    assert new.access_token != old.access_token
    assert server.token_requests == 2


async def test_an_unused_entry_leaves_the_cache_when_its_token_expires(
    fake_oauth_server: Any,
) -> None:
    server = await fake_oauth_server("keliweb", expires_in=1)
    async with DropWatcher(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("k")
        assert tm._hot["k"].timer is not None
        await asyncio.wait_for(tm.dropped.wait(), 5)
        assert "k" not in tm._hot
        assert "k" not in tm._fresh
        # Nothing lost: the next call refreshes from the stored refresh token.
        assert server.is_valid_access_token((await tm.get_token("k")).access_token)
    assert server.token_requests == 2


async def test_evicted_and_closed_entries_leave_no_timer(server: FakeOAuthServer) -> None:
    tm = TokenManager(retry=FAST_RETRY, cache_size=2)
    for key in ("a", "b", "c"):
        await tm.add(key, keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token(key)
    timers = [e.timer for e in tm._hot.values()]
    assert len(timers) == 2
    await tm.aclose()
    assert all(t is not None and t.cancelled() for t in timers)


async def test_provider_factory_must_return_a_provider(server: FakeOAuthServer) -> None:
    from asynctoken import ConfigurationError

    def factory(key: str) -> Any:
        return "not a provider" if key == "bad" else keliweb(server)

    store = MemoryStore()
    await store.put(
        "good", Token(access_token="", expires_at=0, refresh_token=server.issue_refresh_token())
    )
    async with TokenManager(store=store, provider_factory=factory, retry=FAST_RETRY) as tm:
        with pytest.raises(ConfigurationError, match="not a Provider"):
            await tm.get_token("bad")
        with pytest.raises(ConfigurationError, match="not a Provider"):
            await tm.get_token("bad")  # the class check is cached only for good classes
        assert server.is_valid_access_token((await tm.get_token("good")).access_token)


# --------------------------------------------------------------------------- review fixes


async def test_aclose_is_idempotent_and_safe_to_cancel(server: FakeOAuthServer) -> None:
    """A cancelled aclose() (shutdown under a timeout) must not leave the refresh, the owned
    session or the store open: a later aclose() finishes the same close."""
    tm = TokenManager(retry=FAST_RETRY, close_timeout=60)
    await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
    server.hold()
    caller = asyncio.create_task(tm.get_token("k"))
    await server.wait_for_token_requests(1)
    closing = asyncio.create_task(tm.aclose())
    await asyncio.wait({closing}, timeout=0.05)  # closing waits for the held refresh
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert tm.closed
    # The close goes on: a second aclose() does not return while the refresh is pending...
    second = asyncio.create_task(tm.aclose())
    await asyncio.wait({second}, timeout=0.05)
    assert not second.done()
    server.release()
    await second  # ...and returns once it finished and everything is closed.
    assert await caller is not None
    assert refresh_tasks("k") == []
    assert tm._sessions.current is not None
    assert tm._sessions.current.closed
    await tm.aclose()  # idempotent


async def test_failures_are_bounded_by_cache_size(server: FakeOAuthServer) -> None:
    """Remembered failures never outgrow cache_size (unknown tenant ids add none at all)."""
    async with TokenManager(
        provider_factory=lambda key: None, cache_size=10, retry=FAST_RETRY
    ) as tm:
        for i in range(200):
            with pytest.raises(KeyError):
                await tm.get_token(f"unknown-{i}")
        assert len(tm._failures) <= 10, f"{len(tm._failures)} failures kept for cache_size=10"


async def test_registering_a_fixed_provider_ends_the_cooldown(
    server: FakeOAuthServer,
) -> None:
    """add() replaces the provider but leaves _failures alone (cleared only when a seed is
    actually written; add(overwrite=True) without a seed returns before clearing, although the
    README says overwrite=True clears the cooldown). After fixing a wrong client secret,
    get_token keeps failing fast with the OLD provider's error for error_cooldown seconds,
    without trying the new provider (the stored refresh token is fine: nothing to re-seed)."""
    async with TokenManager(retry=FAST_RETRY) as tm:
        wrong = KeliwebProvider(server.client_id, "wrong-secret", token_url=server.token_url)
        await tm.add("k", wrong, refresh_token=server.issue_refresh_token())
        with pytest.raises(InvalidClientError):
            await tm.get_token("k")
        await tm.add("k", keliweb(server))  # the operator fixes the secret
        await tm.add("k", keliweb(server), overwrite=True)  # ... and insists
        token = await tm.get_token("k")
        assert server.is_valid_access_token(token.access_token)


async def test_overwrite_during_a_refresh_fences_it_off(
    server: FakeOAuthServer,
) -> None:
    """add(overwrite=True) calls _forget() but, unlike remove(), does not wait for (or fence
    off) a refresh in flight: that refresh, made with the REPLACED refresh token, finishes,
    fails its compare-and-swap, and still _remember()s its token, which get_token then serves
    for up to an hour instead of using the new credential."""
    old_seed = server.issue_refresh_token()
    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=old_seed)
        server.hold()
        pending = asyncio.create_task(tm.get_token("k"))
        await server.wait_for_token_requests(1)
        new_seed = server.issue_refresh_token()
        assert await tm.add("k", keliweb(server), refresh_token=new_seed, overwrite=True)
        server.release()
        await pending
        await tm.get_token("k")
    assert [r.refresh_token for r in server.requests] == [old_seed, new_seed]


async def test_invalidate_interval_zero_disables_the_guard(
    server: FakeOAuthServer,
) -> None:
    """invalidate_interval=0 is implemented as a TTLCache with ttl=1e-9 on the manager's
    clock; an injected clock that has not moved (FakeClock, the documented test clock) keeps
    the key "recently invalidated" forever, so the second rejection is refused."""
    async with TokenManager(clock=FakeClock(), retry=FAST_RETRY, invalidate_interval=0) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        first = await tm.get_token("k")
        assert await tm.invalidate("k", first)
        second = await tm.get_token("k")
        assert second.access_token != first.access_token
        assert await tm.invalidate("k", second), "refused although invalidate_interval=0"


async def test_a_zero_cooldown_keeps_no_failure(server: FakeOAuthServer) -> None:
    async with TokenManager(clock=FakeClock(), retry=FAST_RETRY, error_cooldown=0) as tm:
        await tm.add("k", keliweb(server), refresh_token="def50200" + "0" * 40)
        for _ in range(2):
            with pytest.raises(InvalidGrantError):
                await tm.get_token("k")
    assert server.token_requests == 2


async def test_cached_tokens_do_not_keep_the_callers_context_alive(
    server: FakeOAuthServer,
) -> None:
    """The expiry timer of a cached token runs in an empty context: what the caller's context
    held (a tracing span, a request object) is not kept alive for the token's lifetime."""
    import contextvars
    import gc
    import weakref

    class Held:
        pass

    var: contextvars.ContextVar[Held] = contextvars.ContextVar("held")

    async def caller(tm: TokenManager) -> weakref.ref[Held]:
        held = Held()
        var.set(held)
        await tm.get_token("k")
        return weakref.ref(held)

    async with TokenManager(retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        task = asyncio.create_task(caller(tm))
        ref = await task
        del task  # the caller's own task holds its context, as it should
        for _ in range(3):  # until the loop let go of the finished task
            await asyncio.sleep(0)
        gc.collect()
        assert tm._hot["k"].timer is not None  # the token is cached, with its timer
        assert ref() is None


async def test_an_error_handed_out_early_names_its_credential(server: FakeOAuthServer) -> None:
    """The salvaged refresh token of an unusable answer could not be saved: callers get the
    error at once while the refresh keeps the lock and retries the save. That error already
    says which credential it is about."""
    store = FlakyStore()
    async with TokenManager(store=store, retry=FAST_RETRY, save_patience=0.5) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        store.failing_writes = 1000
        server.rewrite_next(
            lambda a: a.with_json({k: v for k, v in a.json().items() if k != "access_token"})
        )
        with pytest.raises(MalformedResponseError) as caught:
            await tm.get_token("k")
        assert caught.value.key == "k"
        assert refresh_tasks("k")  # still holding the lock, retrying the save
        store.failing_writes = 0
