"""What a credential is doing: ``TokenManager.status()`` / ``statuses()`` and ``asynctoken
status``, from facts kept in the stored record (refresh-token issue time and known death, the
refreshes that failed since the last good token) and this process's state."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from support import FAST_RETRY, keliweb
from test_cli import run_cli

from asynctoken import (
    CredentialNotFoundError,
    FileStore,
    InvalidGrantError,
    OAuth2Provider,
    RefreshFailure,
    Token,
    TokenManager,
    TransientError,
)
from asynctoken._status import stamp
from asynctoken.testing import FakeClock, FakeOAuthServer

DAY = 86_400.0


# --------------------------------------------------------------------------- the record


def test_new_fields_round_trip_and_stay_out_of_old_records() -> None:
    plain = Token(access_token="a", expires_at=2.0, refresh_token="r", issued_at=1.0)
    assert set(plain.to_dict()) == {
        "access_token",
        "token_type",
        "expires_at",
        "refresh_token",
        "scope",
        "extra",
        "issued_at",
        "provider",
    }
    full = Token(
        access_token="a",
        expires_at=2.0,
        refresh_token="r",
        refresh_token_issued_at=1.0,
        refresh_token_expires_at=1.0 + 10 * DAY,
        failure=RefreshFailure(at=3.0, error="TransientError", message="down", count=2),
    )
    assert Token.from_dict(json.loads(json.dumps(full.to_dict()))) == full


def test_damaged_bookkeeping_never_makes_a_record_unreadable() -> None:
    record = Token(access_token="a", expires_at=2.0, refresh_token="r").to_dict()
    record |= {
        "refresh_token_issued_at": "yesterday",
        "refresh_token_expires_at": float("nan"),
        "failure": {"at": "?", "error": 3},
        "from_a_newer_version": {"x": 1},
    }
    token = Token.from_dict(record)
    assert token.refresh_token == "r"
    assert token.refresh_token_issued_at is None
    assert token.refresh_token_expires_at is None
    assert token.failure is None
    odd_count = RefreshFailure.from_dict({"at": 1, "error": "E", "message": "m", "count": True})
    assert odd_count == RefreshFailure(at=1.0, error="E", message="m", count=1)


def test_stamp() -> None:
    before = Token(
        access_token="old",
        expires_at=10.0,
        refresh_token="r1",
        refresh_token_issued_at=5.0,
        refresh_token_expires_at=500.0,
        failure=RefreshFailure(at=9.0, error="TransientError", message="down"),
    )
    rotated = stamp(Token(access_token="new", expires_at=100.0, refresh_token="r2"), before, 50.0)
    assert rotated.refresh_token_issued_at == 50.0
    assert rotated.refresh_token_expires_at is None  # the new one's death is unknown
    assert rotated.failure is None
    kept = stamp(Token(access_token="new", expires_at=100.0, refresh_token="r1"), before, 50.0)
    assert (kept.refresh_token_issued_at, kept.refresh_token_expires_at) == (5.0, 500.0)
    for field, value in (("refresh_token_expires_in", 3600), ("refresh_expires_in", "1800")):
        told = Token(access_token="n", expires_at=1.0, refresh_token="r3", extra={field: value})
        assert stamp(told, before, 50.0).refresh_token_expires_at == 50.0 + float(value)
    nonsense = Token(
        access_token="n", expires_at=1.0, refresh_token="r3", extra={"refresh_expires_in": "soon"}
    )
    assert stamp(nonsense, before, 50.0).refresh_token_expires_at is None


# --------------------------------------------------------------------------- the manager


async def test_status_through_a_credential_s_life(tmp_path: Path) -> None:
    """Refreshed, failing, rejected: the stored facts are the same for a second manager on the
    same store (another process, or after a restart); cooldown and refreshing are this
    process's."""
    clock = FakeClock()
    path = tmp_path / "tokens.json"
    async with (
        FakeOAuthServer("keliweb", expires_in=3600, clock=clock) as server,
        TokenManager(store=FileStore(path), clock=clock, retry=FAST_RETRY) as tm,
        TokenManager(store=FileStore(path), clock=clock) as other,
    ):
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        seeded = await tm.status("k")
        assert seeded.access_token_state == "never_refreshed"
        assert seeded.has_refresh_token
        assert seeded.refresh_token_issued_at is None  # a seed's age is unknown
        assert seeded.refresh_token_lifetime == 10 * DAY  # Keliweb's idle limit
        assert not seeded.needs_reauthorization

        first = await tm.get_token("k")
        status = await tm.status("k")
        assert status.access_token_state == "valid"
        assert status.access_token_expires_at == first.expires_at
        assert status.last_refresh_at == first.issued_at == clock.time()
        assert status.refresh_token_issued_at == clock.time()
        assert status.refresh_token_expires_at == clock.time() + 10 * DAY
        assert status.refresh_token_remaining == 10 * DAY
        assert status.consecutive_failures == 0
        assert status.cooldown_until is None
        assert not status.refreshing

        clock.advance(3 * DAY)  # the access token expired; the endpoint is down
        server.fail_next(status=503, n=2 * FAST_RETRY.attempts)
        for _ in range(2):
            with pytest.raises(TransientError):
                await tm.get_token("k")
        status = await other.status("k")  # the other process sees the stored facts
        assert status.access_token_state == "expired"
        assert status.refresh_token_age == 3 * DAY
        assert status.refresh_token_remaining == 7 * DAY
        assert status.last_failure is not None
        assert status.last_failure.error == "TransientError"
        assert status.last_failure.at == clock.time()
        assert status.consecutive_failures == 2
        assert "503" in status.last_failure.message
        assert not status.needs_reauthorization

        second = await tm.get_token("k")  # recovered: the failures are over
        status = await other.status("k")
        assert status.last_failure is None
        assert status.refresh_token_issued_at == clock.time()
        assert second.refresh_token != first.refresh_token

        assert second.refresh_token is not None
        server.revoke(second.refresh_token)
        clock.advance(3600)
        with pytest.raises(InvalidGrantError):
            await tm.get_token("k")
        mine, theirs = await tm.status("k"), await other.status("k")
        for status in (mine, theirs):
            assert status.needs_reauthorization
            assert status.last_failure is not None
            assert status.last_failure.error == "InvalidGrantError"
        assert mine.cooldown_until == pytest.approx(clock.time() + 30.0)
        assert theirs.cooldown_until is None

        # A restart reads the same record.
    async with TokenManager(store=FileStore(path), clock=clock) as restarted:
        after = await restarted.status("k")
        assert after.needs_reauthorization
        assert after.last_failure == mine.last_failure


async def test_refreshing_and_unknown_keys(server: FakeOAuthServer) -> None:
    async with TokenManager() as tm:
        with pytest.raises(CredentialNotFoundError):
            await tm.status("nobody")
        await tm.add("registered", keliweb(server))  # no seed: nothing stored yet
        status = await tm.status("registered")
        assert not status.stored
        assert status.needs_reauthorization  # no refresh token, no password grant
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        with server.hold():
            caller = asyncio.ensure_future(tm.get_token("k"))
            await server.wait_for_token_requests(1)
            assert (await tm.status("k")).refreshing
        await caller
        assert not (await tm.status("k")).refreshing


async def test_a_refresh_token_dead_of_idleness(server: FakeOAuthServer) -> None:
    """Past Keliweb's 10 idle days the refresh token is dead: re-authorization is needed
    unless the password grant can take over."""
    clock = FakeClock()
    async with (
        FakeOAuthServer("keliweb", clock=clock, users={"me": "pw-pw-pw-pw"}) as server,
        TokenManager(clock=clock) as tm,
    ):
        await tm.add("plain", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.add(
            "with-password",
            keliweb(server, username="me", password="pw-pw-pw-pw"),
            refresh_token=server.issue_refresh_token(),
        )
        await tm.get_token("plain")
        await tm.get_token("with-password")
        clock.advance(11 * DAY)
        plain = await tm.status("plain")
        assert plain.refresh_token_remaining == -DAY
        assert plain.needs_reauthorization
        assert not (await tm.status("with-password")).needs_reauthorization


async def test_the_server_s_word_on_the_refresh_token_s_life() -> None:
    clock = FakeClock()
    async with (
        FakeOAuthServer("oauth2", clock=clock) as server,
        TokenManager(clock=clock) as tm,
    ):
        provider = OAuth2Provider(server.token_url, server.client_id, server.client_secret)
        await tm.add("k", provider, refresh_token=server.issue_refresh_token())
        server.rewrite_next(lambda a: a.with_json({**a.json(), "refresh_token_expires_in": 7200}))
        await tm.get_token("k")
        status = await tm.status("k")
        assert status.refresh_token_expires_at == clock.time() + 7200
        assert status.refresh_token_lifetime == 7200


async def test_statuses_lists_every_record_and_flags_damaged_ones(
    server: FakeOAuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    async with TokenManager(store=FileStore(path)) as tm:
        for key in ("a", "b", "c"):
            await tm.add(key, keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("b")
    document = json.loads(path.read_text())
    document["credentials"]["broken"] = {"access_token": "x"}
    path.write_text(json.dumps(document))
    async with TokenManager(store=FileStore(path)) as tm:
        statuses = {s.key: s async for s in tm.statuses()}
    assert set(statuses) == {"a", "b", "c", "broken"}
    assert statuses["b"].access_token_state == "valid"
    assert statuses["a"].access_token_state == "never_refreshed"
    assert statuses["broken"].damaged is not None
    assert "expires_at" in statuses["broken"].damaged
    assert statuses["broken"].access_token_state == "unknown"


# --------------------------------------------------------------------------- the command line


async def test_cli_status_says_when_the_refresh_token_dies(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "tokens.json"
    store = FileStore(path)
    secrets = [f"def50200secret{i:02d}" + "x" * 30 for i in range(6)]
    records = {
        "fresh": Token(
            access_token=secrets[0],
            expires_at=now + 3600,
            issued_at=now,
            refresh_token=secrets[1],
            provider="keliweb",
            refresh_token_issued_at=now - 2 * DAY,
        ),
        "dying": Token(
            access_token=secrets[2],
            expires_at=now - 3600,
            refresh_token=secrets[3],
            provider="keliweb",
            refresh_token_issued_at=now - 9 * DAY - 3600,
        ),
        "rejected": Token(
            access_token="",
            expires_at=0,
            refresh_token=secrets[4],
            provider="erpeasy",
            failure=RefreshFailure(
                at=now - 120, error="InvalidGrantError", message="refresh token revoked", count=3
            ),
        ),
        "seeded": Token(
            access_token="", expires_at=0, refresh_token=secrets[5], provider="keliweb"
        ),
    }
    for key, token in records.items():
        await store.put(key, token)
    await store.aclose()

    text = await run_cli("status", "--store", str(path))
    assert text.code == 0, text.err
    text.assert_no_secrets(*secrets)
    lines = {line.split()[0]: line for line in text.out.splitlines() if line.strip()}
    assert "refresh token dies in 8 days" in lines["fresh"]
    assert "needs re-authorization" not in lines["fresh"]
    assert "refresh token dies in 23 h" in lines["dying"]
    assert "3 failed refreshes, last 2 min ago: InvalidGrantError" in lines["rejected"]
    assert "needs re-authorization" in lines["rejected"]
    assert "refresh token of unknown age (dies after 10 days unused)" in lines["seeded"]
    assert "4 credentials in" in text.out
    assert "1 to re-authorize" in text.out

    as_json = await run_cli("status", "--store", str(path), "--json")
    assert as_json.code == 0, as_json.err
    as_json.assert_no_secrets(*secrets)
    rows = {row["key"]: row for row in json.loads(as_json.out)}
    assert rows["fresh"]["refresh_token_expires_in"] == pytest.approx(8 * DAY, abs=60)
    assert rows["fresh"]["refresh_token_age"] == pytest.approx(2 * DAY, abs=60)
    assert rows["rejected"]["needs_reauthorization"] is True
    assert rows["rejected"]["failures"] == 3
    assert rows["rejected"]["last_failure"]["error"] == "InvalidGrantError"
    assert rows["seeded"]["refresh_token_expires_at"] is None
    assert rows["fresh"]["state"] == "valid"  # the fields of before are still there


async def test_cli_status_after_a_real_refresh(server: FakeOAuthServer, tmp_path: Path) -> None:
    """A credential refreshed by a manager: the command (another process) reads its age."""
    path = tmp_path / "tokens.json"
    async with TokenManager(store=FileStore(path)) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("k")
    result = await run_cli("status", "--store", str(path))
    assert result.code == 0, result.err
    assert "refresh token dies in 10 days" in result.out
