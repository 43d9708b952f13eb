"""Keeping credentials alive: refresh tokens renewed before they die of idleness, once across
every manager sharing the store, in the background (``keep_alive=True``) or from cron
(``asynctoken refresh --due``)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import FAST_RETRY, keliweb
from sync_support import ThreadedServer, sync_server
from test_cli import run_cli

from asynctoken import FileStore, Token, TokenManager, TransientError
from asynctoken._status import renew_at
from asynctoken.events import Event, RefreshStarted, RefreshSucceeded
from asynctoken.sync import SyncTokenManager
from asynctoken.testing import FakeClock, FakeOAuthServer

DAY = 86_400.0

__all__ = ["sync_server"]  # the fixture, imported for pytest


def test_when_a_refresh_token_is_due() -> None:
    keliweb_token = Token(
        access_token="a",
        expires_at=0,
        refresh_token="r",
        provider="keliweb",
        refresh_token_issued_at=1000.0,
    )
    assert renew_at(keliweb_token) == 1000.0 + 8 * DAY  # 2 days before its 10 idle days
    told = Token(
        access_token="a",
        expires_at=0,
        refresh_token="r",
        provider="oauth2",
        refresh_token_issued_at=1000.0,
        refresh_token_expires_at=1000.0 + 3600,
    )
    assert renew_at(told) == 1000.0 + 2700  # a quarter of its hour
    unknown_age = Token(access_token="", expires_at=0, refresh_token="r", provider="keliweb")
    assert renew_at(unknown_age) == -float("inf")  # at once: then its age is known
    assert renew_at(Token(access_token="a", expires_at=0, refresh_token="r")) is None
    assert renew_at(Token(access_token="a", expires_at=0, provider="keliweb")) is None


async def test_due_credentials_are_renewed_once_across_managers(tmp_path: Path) -> None:
    """Two managers (two FileStore instances, as two processes) renew at once: each due
    credential costs one token request, even while its access token is still valid; the
    others cost none."""
    clock = FakeClock()
    path = tmp_path / "tokens.json"
    async with (
        FakeOAuthServer("keliweb", expires_in=20 * DAY, clock=clock) as server,
        TokenManager(store=FileStore(path), clock=clock, retry=FAST_RETRY) as first,
        TokenManager(store=FileStore(path), clock=clock, retry=FAST_RETRY) as second,
    ):
        for tm in (first, second):
            for key in ("old-1", "old-2", "young", "seeded"):
                await tm.add(key, keliweb(server))
        for key in ("old-1", "old-2"):
            await first.add(key, keliweb(server), refresh_token=server.issue_refresh_token())
            await first.get_token(key)
        clock.advance(5 * DAY)
        await first.add("young", keliweb(server), refresh_token=server.issue_refresh_token())
        await first.get_token("young")
        await first.add("seeded", keliweb(server), refresh_token=server.issue_refresh_token())
        clock.advance(3.5 * DAY)  # old-*: 8.5 idle days; young: 3.5; seeded: unknown
        before = server.token_requests
        one, two = await asyncio.gather(first.refresh_due(), second.refresh_due())
        assert server.token_requests - before == 3
        assert server.reuse_detected == 0
        renewed = {r.refresh_token for r in server.requests[before:]}
        assert len(renewed) == 3
        assert set(one) | set(two) == {"old-1", "old-2", "seeded"}
        assert all(error is None for error in (*one.values(), *two.values()))
        for key in ("old-1", "old-2", "seeded"):
            status = await second.status(key)
            assert status.refresh_token_issued_at == clock.time()
            assert status.refresh_token_remaining == 10 * DAY
        assert (await second.status("young")).refresh_token_age == 3.5 * DAY
        assert await first.refresh_due() == {}  # nothing is due any more
        assert server.token_requests - before == 3


async def test_keep_alive_in_the_background(server: FakeOAuthServer) -> None:
    clock = FakeClock()
    seen: list[Event] = []
    renewed = asyncio.Event()

    def on_event(event: Event) -> None:
        seen.append(event)
        if isinstance(event, RefreshSucceeded) and any(
            isinstance(e, RefreshStarted) and e.trigger == "keep_alive" for e in seen
        ):
            renewed.set()

    async with (
        FakeOAuthServer("keliweb", expires_in=3600, clock=clock) as server,
        TokenManager(
            clock=clock, keep_alive=True, keep_alive_interval=0.02, on_event=on_event
        ) as tm,
    ):
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        first = await tm.get_token("k")
        clock.advance(9 * DAY)
        await renewed.wait()
        assert server.token_requests == 2
        stored = await tm.store.get("k")
        assert stored is not None
        assert stored.refresh_token is not None
        assert server.is_valid_refresh_token(stored.refresh_token)
        assert (await tm.status("k")).refresh_token_issued_at == clock.time()
        assert first.refresh_token is not None
        assert not server.is_valid_refresh_token(first.refresh_token)  # rotated
    assert server.token_requests == 2  # later scans found nothing due
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "asynctoken-keep-alive"]


async def test_a_failed_renewal_is_reported_and_counted(server: FakeOAuthServer) -> None:
    clock = FakeClock()
    async with (
        FakeOAuthServer("keliweb", expires_in=3600, clock=clock) as server,
        TokenManager(clock=clock, retry=FAST_RETRY) as tm,
    ):
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("k")
        clock.advance(9 * DAY)
        server.fail_next(status=503, n=FAST_RETRY.attempts)
        results = await tm.refresh_due()
        assert isinstance(results["k"], TransientError)
        status = await tm.status("k")
        assert status.last_failure is not None
        assert status.last_failure.error == "TransientError"
        assert status.refresh_token_remaining == DAY  # still alive: the next scan retries


# --------------------------------------------------------------------------- from cron


CLIENT_SECRET = "keep-alive-client-secret-0123456789"


@pytest.fixture
async def cli_server() -> AsyncIterator[FakeOAuthServer]:
    async with FakeOAuthServer("keliweb", client_secret=CLIENT_SECRET) as srv:
        yield srv


async def test_cli_refresh_due(cli_server: FakeOAuthServer, tmp_path: Path) -> None:
    """``asynctoken refresh --due`` renews the due Keliweb credentials of the store (real
    wall clock: the records say they were issued 9 days ago), leaves the young ones and
    those of another provider alone, and a second run finds nothing due."""
    server = cli_server
    now = time.time()
    path = tmp_path / "tokens.json"
    store = FileStore(path)
    secrets: list[str] = []
    for key, age, provider in (
        ("old", 9 * DAY, "keliweb"),
        ("young", 1 * DAY, "keliweb"),
        ("seeded", None, "keliweb"),
        ("other", 9 * DAY, "oauth2"),
    ):
        refresh_token = server.issue_refresh_token()
        secrets.append(refresh_token)
        await store.put(
            key,
            Token(
                access_token="",
                expires_at=0,
                refresh_token=refresh_token,
                provider=provider,
                refresh_token_issued_at=None if age is None else now - age,
                refresh_token_expires_at=None if provider == "keliweb" else now + DAY,
            ),
        )
    await store.aclose()
    args = [
        "refresh",
        "--due",
        "--store",
        str(path),
        "--provider",
        "keliweb",
        "--client-id",
        server.client_id,
        "--token-url",
        server.token_url,
    ]
    env = {"ASYNCTOKEN_CLIENT_SECRET": CLIENT_SECRET}
    result = await run_cli(*args, env=env)
    assert result.code == 0, result.err
    result.assert_no_secrets(CLIENT_SECRET, *secrets)
    assert "renewed 'old'" in result.out
    assert "renewed 'seeded'" in result.out
    assert "young" not in result.out
    assert "3 due in" in result.out
    assert "2 renewed, 1 of another provider left alone" in result.out
    assert server.token_requests == 2
    assert sorted(r.refresh_token for r in server.requests) == sorted(secrets[0:3:2])
    records = json.loads(path.read_text())["credentials"]
    assert records["old"]["refresh_token"] != secrets[0]
    assert records["other"]["refresh_token"] == secrets[3]

    again = await run_cli(*args, env=env)
    assert again.code == 0, again.err
    assert "1 due in" in again.out  # the oauth2 one, left alone again
    assert server.token_requests == 2

    usage = await run_cli("refresh", "old", *args[1:], env=env)
    assert usage.code == 2
    assert "either NAME or --due" in usage.err
    assert os.path.exists(path)


def test_refresh_due_from_sync_code(sync_server: ThreadedServer) -> None:
    """SyncTokenManager.refresh_due() is the async one through the loop thread."""
    with SyncTokenManager() as tm:
        tm.add("seeded", sync_server.provider(), refresh_token=sync_server.seed())
        tm.add("fresh", sync_server.provider(), refresh_token=sync_server.seed())
        tm.get_token("fresh")  # refreshed now: not due
        assert tm.refresh_due() == {"seeded": None}  # a seed's age is unknown: due at once
        assert sync_server.token_requests == 2
        assert tm.refresh_due() == {}
