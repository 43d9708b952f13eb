"""Events (``TokenManager(on_event=...)``) against the fake server: every kind is emitted where
it should be, none carries a secret, and a slow or failing subscriber never delays or breaks a
refresh."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from support import FAST_RETRY, keliweb

import asynctoken._dispatch
from asynctoken import (
    InvalidGrantError,
    MalformedResponseError,
    MemoryStore,
    StoreError,
    StoreLockTimeoutError,
    Token,
    TokenError,
    TokenManager,
    TransientError,
)
from asynctoken.events import (
    CooldownEnded,
    CooldownStarted,
    Event,
    FallbackGrantUsed,
    LockWaitedLong,
    ReauthorizationRequired,
    RefreshFailed,
    RefreshStarted,
    RefreshSucceeded,
    RefreshTokenRotated,
    RetryScheduled,
    StoreFailed,
    TokenInvalidated,
)
from asynctoken.testing import FakeClock, FakeOAuthServer

E = TypeVar("E", bound=Event)

PASSWORD = "correct-horse-battery-staple"


class Recorder:
    """A subscriber that keeps every event and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._arrived = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._arrived.set()

    def of(self, kind: type[E], key: str | None = None) -> list[E]:
        return [e for e in self.events if isinstance(e, kind) and key in (None, e.key)]

    async def wait_for(self, kind: type[E], key: str | None = None, n: int = 1) -> list[E]:
        while len(self.of(kind, key)) < n:
            self._arrived.clear()
            await self._arrived.wait()
        return self.of(kind, key)

    def clear(self) -> None:
        self.events.clear()


class SwitchableStore(MemoryStore):
    """A MemoryStore whose reads fail while ``down`` (a store going away)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def get(self, key: str) -> Token | None:
        if self.down:
            raise StoreError("store unreachable", location="switchable")
        return await super().get(key)


def secrets_seen_by(server: FakeOAuthServer) -> set[str]:
    """Every secret that went over the wire: tokens issued and presented, client secret,
    password."""
    found = {server.client_secret, PASSWORD}
    for record in server.requests:
        for value in (
            record.refresh_token,
            record.issued_access_token,
            record.issued_refresh_token,
            record.params.get("password"),
        ):
            if value:
                found.add(value)
    return found


def texts_of(value: Any, depth: int = 0) -> Iterator[str]:
    """Every text a subscriber could read from ``value``: reprs, strs, fields, attributes."""
    assert depth < 6
    yield repr(value)
    yield str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from texts_of(getattr(value, field.name), depth + 1)
    if isinstance(value, BaseException):
        assert value.__traceback__ is None
        assert value.__cause__ is None
        assert value.__context__ is None
        for item in (*value.args, *vars(value).values()):
            yield from texts_of(item, depth + 1)


def assert_every_refresh_ends_once(events: list[Event]) -> None:
    open_refreshes: dict[str, int] = {}
    for event in events:
        if isinstance(event, RefreshStarted):
            assert open_refreshes.get(event.key, 0) == 0, f"two refreshes of {event.key} at once"
            open_refreshes[event.key] = 1
        elif isinstance(event, (RefreshSucceeded, RefreshFailed)):
            assert open_refreshes.get(event.key) == 1, f"{event} without RefreshStarted"
            open_refreshes[event.key] = 0
    assert not any(open_refreshes.values()), open_refreshes


async def test_every_kind_of_event_without_a_secret() -> None:
    """One scenario through every event kind; then no field, repr or attached error of any
    event contains a token the server issued or saw, the client secret or the password."""
    clock = FakeClock()
    rec = Recorder()
    store = SwitchableStore()
    async with (
        FakeOAuthServer(
            "keliweb", expires_in=3600, clock=clock, users={"user@example.com": PASSWORD}
        ) as server,
        TokenManager(
            store=store,
            clock=clock,
            on_event=rec,
            retry=FAST_RETRY,
            lock_wait_threshold=0.0,
            lock_timeout=0.05,
            error_cooldown=30.0,
            background_retry_interval=10.0,
        ) as tm,
    ):
        # A refresh with a retry, a rotation each time, an invalidation dropped then refused.
        await tm.add("plain", keliweb(server), refresh_token=server.issue_refresh_token())
        first = await tm.get_token("plain")
        server.fail_next(status=503)
        second = await tm.refresh("plain")
        assert await tm.invalidate("plain", second)
        third = await tm.get_token("plain")
        assert not await tm.invalidate("plain", third)  # within invalidate_interval: refused
        assert first.access_token != second.access_token != third.access_token

        # A dead refresh token with a password grant: the fallback.
        with_password = keliweb(server, username="user@example.com", password=PASSWORD)
        dead = server.issue_refresh_token()
        await tm.add("fallback", with_password, refresh_token=dead)
        server.revoke(dead)
        await tm.get_token("fallback")

        # A dead refresh token without one: re-authorization, a cooldown that elapses, one
        # that ends when the credential is seeded again.
        dead = server.issue_refresh_token()
        await tm.add("dead", keliweb(server), refresh_token=dead)
        server.revoke(dead)
        with pytest.raises(InvalidGrantError):
            await tm.get_token("dead")
        clock.advance(31)
        with pytest.raises(InvalidGrantError):
            await tm.get_token("dead")  # the cooldown elapsed: asked again, failed again
        await tm.add("dead", keliweb(server), refresh_token=server.issue_refresh_token())

        # An unusable answer that still rotated: its refresh token is salvaged.
        await tm.add("malformed", keliweb(server), refresh_token=server.issue_refresh_token())
        server.rewrite_next(
            lambda answer: answer.with_json(
                {k: v for k, v in answer.json().items() if k != "access_token"}
            )
        )
        with pytest.raises(MalformedResponseError) as caught:
            await tm.get_token("malformed")
        assert caught.value.refresh_token  # the caller's error carries it; events must not

        # A failing background refresh pauses the next one; a forced refresh ends the pause.
        clock.advance(3400)  # "plain" is stale now (refresh margin 300 s)
        server.fail_next(status=503, n=FAST_RETRY.attempts)
        assert await tm.get_token("plain") == third  # served while refreshing in background
        await rec.wait_for(RefreshFailed, "plain")
        await tm.refresh("plain")

        # A store that fails, and a lock that another holder keeps too long.
        await tm.add("unreadable", keliweb(server), refresh_token=server.issue_refresh_token())
        store.down = True
        with pytest.raises(StoreError):
            await tm.get_token("unreadable")
        store.down = False
        await tm.add("locked", keliweb(server), refresh_token=server.issue_refresh_token())
        async with store.lock("locked", timeout=1.0):
            with pytest.raises(StoreLockTimeoutError):
                await tm.get_token("locked")
    events = rec.events  # aclose() delivered everything

    # Each kind where it belongs.
    assert [e.trigger for e in rec.of(RefreshStarted, "plain")] == [
        "miss",
        "forced",
        "rejected",
        "stale",
        "forced",
    ]
    succeeded = rec.of(RefreshSucceeded, "plain")
    assert len(succeeded) == 4
    assert all(e.requested and e.provider == "keliweb" for e in succeeded)
    (retry,) = rec.of(RetryScheduled, "plain")[:1]
    assert retry.attempt == 1
    assert isinstance(retry.error, TransientError)
    assert retry.delay > 0
    assert [e.dropped for e in rec.of(TokenInvalidated)] == [True, False]
    assert [e.grant for e in rec.of(FallbackGrantUsed)] == ["password"]
    assert [e.key for e in rec.of(FallbackGrantUsed)] == ["fallback"]
    assert len(rec.of(ReauthorizationRequired, "dead")) == 2
    assert all(isinstance(e.error, InvalidGrantError) for e in rec.of(RefreshFailed, "dead"))
    cooldowns = rec.of(CooldownStarted, "dead")
    assert [(c.final, c.seconds) for c in cooldowns] == [(True, 30.0), (True, 30.0)]
    assert [e.reason for e in rec.of(CooldownEnded, "dead")] == ["elapsed", "reset"]
    (malformed,) = rec.of(RefreshFailed, "malformed")
    assert isinstance(malformed.error, MalformedResponseError)
    assert malformed.error.refresh_token is None
    assert malformed.error.reason
    assert [e.saved for e in rec.of(RefreshTokenRotated, "malformed")] == [True]
    background = [e for e in rec.of(RefreshFailed, "plain") if e.background]
    assert len(background) == 1
    assert isinstance(background[0].error, TransientError)
    assert [(c.final, c.seconds) for c in rec.of(CooldownStarted, "plain")] == [(False, 10.0)]
    assert [e.reason for e in rec.of(CooldownEnded, "plain")] == ["refreshed"]
    failed_reads = [e for e in rec.of(StoreFailed) if e.operation == "get"]
    assert failed_reads
    assert failed_reads[0].key == "unreadable"
    (lock_failure,) = [e for e in rec.of(StoreFailed) if e.operation == "lock"]
    assert isinstance(lock_failure.error, StoreLockTimeoutError)
    assert lock_failure.key == "locked"
    waits = rec.of(LockWaitedLong, "locked")
    assert [w.acquired for w in waits] == [False]
    assert waits[0].seconds >= 0.05
    assert all(w.acquired for w in rec.of(LockWaitedLong, "plain"))
    rotations = rec.of(RefreshTokenRotated)
    assert len(rotations) == sum(1 for r in server.requests if r.issued_refresh_token)
    assert_every_refresh_ends_once(events)
    assert all(e.time >= 1_700_000_000.0 for e in events)  # on the manager's (fake) clock

    # No secret anywhere.
    secrets = secrets_seen_by(server)
    assert len(secrets) >= 15
    for event in events:
        for text in texts_of(event):
            leaked = [s for s in secrets if s in text]
            assert not leaked, f"{type(event).__name__} shows a secret"


async def test_concurrent_callers_see_one_refresh(server: FakeOAuthServer) -> None:
    rec = Recorder()
    async with TokenManager(on_event=rec) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        tokens = await asyncio.gather(*(tm.get_token("k") for _ in range(100)))
    assert len({t.access_token for t in tokens}) == 1
    assert server.token_requests == 1
    assert [type(e) for e in rec.events] == [RefreshStarted, RefreshTokenRotated, RefreshSucceeded]


async def test_a_token_picked_up_from_the_store_is_not_requested(server: FakeOAuthServer) -> None:
    """A second manager on the same store finds the first one's token: requested=False."""
    store = MemoryStore()
    rec = Recorder()
    async with TokenManager(store=store) as first, TokenManager(store=store, on_event=rec) as tm:
        await first.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await first.get_token("k")
        await tm.add("k", keliweb(server))
        await tm.get_token("k")
    (done,) = rec.of(RefreshSucceeded)
    assert not done.requested
    assert server.token_requests == 1
    assert not rec.of(RefreshTokenRotated)


# --------------------------------------------------------------------------- bad subscribers


async def test_a_stuck_subscriber_never_delays_a_refresh(server: FakeOAuthServer) -> None:
    """The subscriber blocks on its first event until the test ends; meanwhile every refresh
    completes and every event waits in order for it."""
    gate = asyncio.Event()
    seen: list[Event] = []

    async def stuck(event: Event) -> None:
        seen.append(event)
        await gate.wait()

    async with TokenManager(on_event=stuck) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        tokens = [await tm.refresh("k") for _ in range(10)]
        assert len({t.access_token for t in tokens}) == 10
        assert server.token_requests == 10
        assert len(seen) == 1  # still on the first event
        gate.set()
    assert len(seen) == 30  # started, rotated, succeeded per refresh: delivered at close
    assert [type(e) for e in seen[:3]] == [RefreshStarted, RefreshTokenRotated, RefreshSucceeded]
    assert_every_refresh_ends_once(seen)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_failing_subscriber_never_breaks_a_refresh(
    server: FakeOAuthServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[Event] = []

    def failing(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("subscriber bug")

    async def failing_async(event: Event) -> None:
        failing(event)

    callback: Callable[[Event], Any] = failing if kind == "sync" else failing_async
    with caplog.at_level(logging.WARNING, logger="asynctoken"):
        async with TokenManager(on_event=callback) as tm:
            await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
            for _ in range(3):
                await tm.refresh("k")
    assert server.token_requests == 3
    assert len(calls) == 9
    failures = [r for r in caplog.records if "on_event subscriber failed" in r.getMessage()]
    assert len(failures) == 9
    assert failures[0].exc_info is not None


async def test_close_gives_a_stuck_subscriber_close_timeout(
    server: FakeOAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    never = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(event: Event) -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    tm = TokenManager(on_event=stuck, close_timeout=0.05)
    await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
    await tm.get_token("k")
    with caplog.at_level(logging.WARNING, logger="asynctoken"):
        await tm.aclose()
    assert cancelled.is_set()
    assert any("did not finish within" in r.getMessage() for r in caplog.records)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "asynctoken-events"]


async def test_events_beyond_the_limit_are_dropped(
    server: FakeOAuthServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(asynctoken._dispatch, "MAX_PENDING_EVENTS", 4)
    gate = asyncio.Event()
    seen: list[Event] = []

    async def slow(event: Event) -> None:
        seen.append(event)
        await gate.wait()

    with caplog.at_level(logging.WARNING, logger="asynctoken"):
        async with TokenManager(on_event=slow) as tm:
            await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
            for _ in range(4):
                await tm.refresh("k")
            gate.set()
    assert server.token_requests == 4
    assert len(seen) == 5  # the one being delivered, then 4 waiting; 7 dropped
    messages = [r.getMessage() for r in caplog.records]
    assert sum("newer events are dropped" in m for m in messages) == 1
    assert any("7 events were dropped" in m for m in messages)


async def test_without_listeners_the_store_is_used_as_is(server: FakeOAuthServer) -> None:
    """No subscriber and no telemetry: no wrapper around the store, no event task."""
    store = MemoryStore()
    async with TokenManager(store=store, telemetry=False) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("k")
        assert tm._refresher._store is store
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "asynctoken-events"]


async def test_a_cancelled_refresh_ends_with_refresh_failed(server: FakeOAuthServer) -> None:
    """aclose() cancels a refresh stuck at the server: its callers and the subscriber both
    learn that it ended."""
    rec = Recorder()
    tm = TokenManager(on_event=rec, close_timeout=0.01)
    await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
    server.hold()
    caller = asyncio.ensure_future(tm.get_token("k"))
    await server.wait_for_token_requests(1)
    await tm.aclose()
    server.release()
    with pytest.raises(TokenError, match="closed during the refresh"):
        await caller
    (failed,) = rec.of(RefreshFailed)
    assert "closed during the refresh" in str(failed.error)
    assert_every_refresh_ends_once(rec.events)
