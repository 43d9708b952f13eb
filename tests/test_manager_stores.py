"""The manager over real stores: rotated refresh tokens survive a store that refuses writes,
and a Redis lease outlives the slowest refresh."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from support import FAST_RETRY, keliweb

from asynctoken import (
    FileStore,
    KeliwebProvider,
    MalformedResponseError,
    RedisStore,
    RetryPolicy,
    Token,
    TokenManager,
)
from asynctoken.testing import FakeClock, FakeOAuthServer


class BrokenWrites:
    """Make every FileStore write fail for real, while reads and refresh locks keep working:
    the store-wide write lock path becomes a directory, so opening it fails with EISDIR."""

    def __init__(self, path: Path) -> None:
        self.lock_path = Path(str(path) + ".lock")

    def __enter__(self) -> BrokenWrites:
        if self.lock_path.exists():
            self.lock_path.unlink()
        self.lock_path.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock_path.rmdir()


async def test_a_refused_rotation_is_written_once_the_store_recovers(
    server: FakeOAuthServer, tmp_path: Path
) -> None:
    """The store refused the rotated refresh token, then recovered. aclose() never writes the
    kept (unsaved) token, so after a restart the store's refresh token is the dead one."""
    path = tmp_path / "tokens.json"
    tm = TokenManager(store=FileStore(path), retry=FAST_RETRY)
    await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
    with BrokenWrites(path):
        first = await tm.get_token("k")  # rotated by the server; the save fails
    assert server.is_valid_refresh_token(first.refresh_token or "")
    await tm.aclose()  # the store works again: this is the moment to write it
    stored = await FileStore(path).get("k")
    assert stored is not None
    assert stored.refresh_token == first.refresh_token, "rotated refresh token lost at close"


async def test_another_worker_never_refreshes_with_the_refused_refresh_token(
    server: FakeOAuthServer, tmp_path: Path
) -> None:
    """Manager A's save fails; the store recovers. A keeps its token in memory until ITS next
    refresh (an hour later), so manager B (another worker on the same FileStore) refreshes
    with the refresh token A already used: reuse, the whole family is revoked."""
    path = tmp_path / "tokens.json"
    clock = FakeClock()
    a = TokenManager(store=FileStore(path), clock=clock, retry=FAST_RETRY)
    b = TokenManager(store=FileStore(path), clock=clock, retry=FAST_RETRY)
    try:
        await a.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await b.add("k", keliweb(server))
        await a.get_token("k")
        await b.get_token("k")  # picks A's token up from the store
        assert server.token_requests == 1
        clock.advance(3600)
        with BrokenWrites(path):
            await a.get_token("k")  # A refreshes; the server rotates; the save fails
        # The store works again. B's cached token is expired too: B refreshes.
        await b.get_token("k")
        assert server.reuse_detected == 0
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_lease_outlives_a_slow_refresh_with_password_fallback(
    server: FakeOAuthServer, redis_url: str, redis_prefix: str
) -> None:
    """README: keep lock_ttl above "the retry deadline plus one request timeout". The lease is
    never renewed, and request_token's password fallback runs a SECOND full retry chain under
    the same lease (the save's retries too). Here lock_ttl = 1.3 s > deadline 0.1 + timeout
    1.0, yet host B takes the expired lease while A is still refreshing, and both refresh."""
    provider = keliweb(server, username="user@example.com", password="pw", timeout=1.0)
    retry = RetryPolicy(attempts=1, deadline=0.1)
    a = TokenManager(store=RedisStore(redis_url, prefix=redis_prefix, lock_ttl=1.3), retry=retry)
    b = TokenManager(store=RedisStore(redis_url, prefix=redis_prefix, lock_ttl=1.3), retry=retry)
    try:
        # A refresh token unused for 10 days: the manager logs in again with the password.
        await a.add("k", provider, refresh_token="def50200" + "0" * 40)
        await b.add("k", provider)
        server.delay_next(0.8, n=2)  # each answer within the 1 s timeout
        host_a = asyncio.create_task(a.get_token("k"))
        await server.wait_for_token_requests(1)  # A holds the refresh lock
        host_b = asyncio.create_task(b.get_token("k"))
        await asyncio.gather(host_a, host_b)
        # A's two requests (dead refresh token, then password) are this expiry's only ones.
        assert server.token_requests == 2, [r.grant_type for r in server.requests]
    finally:
        await a.aclose()
        await b.aclose()


def first_answer_unusable(presented: list[str]) -> web.Application:
    """A token endpoint that rotates on every request, but whose first answer has no
    expires_in; ``presented`` collects the refresh tokens it received."""

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        presented.append(str(form["refresh_token"]))
        n = len(presented)
        body: dict[str, Any] = {"access_token": f"at-{n}", "refresh_token": f"rt-{n}" + "x" * 30}
        if n > 1:
            body["expires_in"] = 3600
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    return app


async def test_refresh_token_of_an_unusable_answer_is_saved(tmp_path: Path) -> None:
    """A 200 answer without expires_in is unusable, but the server rotated: its new refresh
    token is saved, and the next refresh uses it instead of the dead one."""
    presented: list[str] = []
    app = first_answer_unusable(presented)
    async with TestServer(app, host="127.0.0.1") as http_server:
        provider = KeliwebProvider(
            "id", "secret", token_url=str(http_server.make_url("/oauth/token"))
        )
        store = FileStore(tmp_path / "tokens.json")
        async with TokenManager(store=store, retry=FAST_RETRY) as tm:
            await store.put(
                "k", Token(access_token="", expires_at=0, refresh_token="seed-" + "s" * 30)
            )
            await tm.add("k", provider)
            with pytest.raises(MalformedResponseError) as info:
                await tm.get_token("k")
            assert info.value.reason
            stored = await store.get("k")
            assert stored is not None
            assert stored.refresh_token == "rt-1" + "x" * 30
            token_ = await tm.refresh("k")  # get_token would fail fast: malformed cools down
    assert presented == ["seed-" + "s" * 30, "rt-1" + "x" * 30]
    assert token_.access_token == "at-2"


class SignallingFileStore(FileStore):
    """A real FileStore that only signals (for synchronisation) when a replace failed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.replace_failed = asyncio.Event()

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        try:
            return await super().replace(key, token, expected_refresh_token=expected_refresh_token)
        except BaseException:
            self.replace_failed.set()
            raise


# ---------------------------------------------------------------------------------------------
# 1. A cancellation (aclose after close_timeout) inside RotationSaver.save loses the rotated
#    refresh token: it is put in _unsaved only after the last attempt, so flush() has nothing.


async def test_a_save_cancelled_at_close_loses_no_rotation(
    server: FakeOAuthServer, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    store = SignallingFileStore(path)
    tm = TokenManager(store=store, retry=FAST_RETRY, close_timeout=0)
    await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
    with BrokenWrites(path):
        caller = asyncio.create_task(tm.get_token("k"))
        await store.replace_failed.wait()  # the server rotated; the first save attempt failed
    # The store works again; the refresh task sits in save()'s retry back-off.
    await tm.aclose()  # close_timeout=0: the refresh is cancelled; flush() should write it
    await asyncio.gather(caller, return_exceptions=True)
    stored = await FileStore(path).get("k")
    assert stored is not None
    assert server.is_valid_refresh_token(stored.refresh_token or ""), (
        "the rotated refresh token was lost: the store holds the dead one"
    )


# ---------------------------------------------------------------------------------------------
# 2. _salvage: a refused save of an unusable answer's new refresh token releases the lock at
#    once (no keep_trying), so another worker refreshes with the dead refresh token.


async def test_a_refused_salvage_keeps_the_lock(tmp_path: Path) -> None:
    presented: list[str] = []
    app = first_answer_unusable(presented)
    path = tmp_path / "tokens.json"
    async with TestServer(app, host="127.0.0.1") as http_server:
        provider = KeliwebProvider(
            "id", "secret", token_url=str(http_server.make_url("/oauth/token"))
        )
        a = TokenManager(store=FileStore(path), retry=FAST_RETRY, close_timeout=1)
        b = TokenManager(store=FileStore(path), retry=FAST_RETRY)
        try:
            seed = "seed-" + "s" * 30
            await a.add("k", provider, refresh_token=seed)
            await b.add("k", provider)
            with BrokenWrites(path), pytest.raises(MalformedResponseError):
                await a.get_token("k")  # rotated to rt-1; its save was refused
            # The store works again; worker B needs a token.
            await b.get_token("k")
        finally:
            await a.aclose()
            await b.aclose()
    assert presented.count(seed) == 1, f"dead refresh token reused: {presented}"


# ---------------------------------------------------------------------------------------------
# 3. remove() during a refresh that started with nothing stored (password grant): the fenced
#    flight's put_if_absent writes the removed credential back into the store.


async def test_remove_during_a_refresh_does_not_bring_the_credential_back(
    server: FakeOAuthServer, tmp_path: Path
) -> None:
    store = FileStore(tmp_path / "tokens.json")
    async with TokenManager(store=store, retry=FAST_RETRY) as tm:
        await tm.add("k", keliweb(server, username="user@example.com", password="pw"))
        server.hold()
        caller = asyncio.create_task(tm.get_token("k"))
        await server.wait_for_token_requests(1)
        # Off-boarding while the refresh is in flight: remove() waits for the store lock.
        removing = asyncio.create_task(tm.remove("k"))
        await asyncio.wait({removing}, timeout=0.05)
        assert not removing.done()
        server.release()
        assert not await removing  # nothing was stored yet when it was removed
        await caller
        assert await store.get("k") is None, "remove()d credential written back by the refresh"
