"""SyncTokenManager in one process: threads, the hot path, errors, close and interpreter exit.

The fake server runs on a loop thread of its own (sync_support.ThreadedServer): the test's
thread, like a Celery task or a Django view, has no event loop.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import logging
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sync_support import ThreadedServer, sync_server, threaded_server

from asynctoken import (
    ConfigurationError,
    CredentialNotFoundError,
    FileStore,
    InvalidGrantError,
    Margins,
    Provider,
    StoreError,
    Token,
    TokenError,
)
from asynctoken.sync import SyncTokenManager
from asynctoken.testing import FakeClock

__all__ = ["sync_server"]  # the fixture, imported for pytest

THREADS = 16


def stored(path: Path, key: str) -> Token | None:
    """What a FileStore file holds for ``key``, read with a store of its own."""
    return asyncio.run(FileStore(path).get(key))


class RefusingFileStore(FileStore):
    """A real FileStore whose writes of rotated tokens fail while ``refusing`` is set."""

    refusing = False

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        if self.refusing:
            raise StoreError("disk full (injected)", location=self.path, key=key)
        return await super().replace(key, token, expected_refresh_token=expected_refresh_token)


@pytest.fixture
def tm(tmp_path: Path) -> Iterator[SyncTokenManager]:
    with SyncTokenManager(store=FileStore(tmp_path / "tokens.json")) as manager:
        yield manager


def test_get_token_refreshes_once_then_serves_the_cached_token(
    sync_server: ThreadedServer, tm: SyncTokenManager
) -> None:
    assert tm.add("k", sync_server.provider(), refresh_token=sync_server.seed()) is True

    token = tm.get_token("k")

    assert isinstance(token, Token)
    assert sync_server.on(sync_server.server.is_valid_access_token, token.access_token)
    assert all(tm.get_token("k") is token for _ in range(1000))
    assert sync_server.token_requests == 1


def test_fresh_token_is_served_while_the_loop_thread_is_blocked(
    sync_server: ThreadedServer, tmp_path: Path
) -> None:
    """The hot path reads the cache directly: it works while the manager's loop cannot run."""
    entered, release = threading.Event(), threading.Event()

    async def blocking_factory(key: str) -> Provider | None:
        entered.set()
        release.wait(30)  # blocks the manager's event loop itself, on purpose
        return None

    manager = SyncTokenManager(
        store=FileStore(tmp_path / "t.json"), provider_factory=blocking_factory
    )
    with manager, ThreadPoolExecutor(1) as pool:
        manager.add("k", sync_server.provider(), refresh_token=sync_server.seed())
        token = manager.get_token("k")
        blocked = pool.submit(manager.get_token, "unknown")
        assert entered.wait(30)
        try:
            assert all(manager.get_token("k") is token for _ in range(1000))
        finally:
            release.set()
        with pytest.raises(CredentialNotFoundError):
            blocked.result(30)


def test_a_token_past_its_fresh_deadline_is_not_served_while_the_loop_is_stalled(
    tmp_path: Path,
) -> None:
    """Nothing on the stalled loop can take the token out of the cache; the hot path compares
    the deadline itself, so sync callers never get a token the async manager would not serve."""
    entered, release = threading.Event(), threading.Event()

    async def blocking_factory(key: str) -> Provider | None:
        entered.set()
        release.wait(30)
        return None

    for server in threaded_server(expires_in=1.0):
        manager = SyncTokenManager(
            store=FileStore(tmp_path / "t.json"), provider_factory=blocking_factory
        )
        with manager, ThreadPoolExecutor(1) as pool:
            manager.add("k", server.provider(), refresh_token=server.seed())
            manager.get_token("k")
            issued = time.monotonic()  # later than the request: the deadline comes before
            blocked = pool.submit(manager.get_token, "unknown")
            assert entered.wait(30)
            try:
                fresh_for = 1.0 - Margins().offsets(1.0)[0]
                while time.monotonic() < issued + fresh_for:  # let the token age past fresh
                    time.sleep(issued + fresh_for - time.monotonic())
                assert "k" in manager._manager._fresh  # still cached: the loop cannot run
                assert manager._manager._peek_fresh("k") is None
            finally:
                release.set()
            with pytest.raises(CredentialNotFoundError):
                blocked.result(30)
            assert manager.get_token("k").access_token


def test_an_injected_clock_decides_freshness_on_the_hot_path(tmp_path: Path) -> None:
    clock = FakeClock()
    for server in threaded_server(expires_in=3600, clock=clock):
        with SyncTokenManager(store=FileStore(tmp_path / "t.json"), clock=clock) as manager:
            manager.add("k", server.provider(), refresh_token=server.seed())
            token = manager.get_token("k")
            assert manager.get_token("k") is token
            clock.advance(3600 - 300 + 1)  # past the fresh period (300 s refresh margin)
            assert manager._manager._peek_fresh("k") is None
            assert manager.get_token("k") is token  # stale: served, one background refresh
            server.wait_for_token_requests(2)


def test_threads_share_one_refresh_per_expiry(sync_server: ThreadedServer, tmp_path: Path) -> None:
    clock = FakeClock()
    with (
        SyncTokenManager(store=FileStore(tmp_path / "t.json"), clock=clock) as manager,
        ThreadPoolExecutor(THREADS) as pool,
    ):
        manager.add("k", sync_server.provider(), refresh_token=sync_server.seed())
        for expiry in range(1, 4):
            sync_server.on(sync_server.server.hold)
            calls = [pool.submit(manager.get_token, "k") for _ in range(THREADS)]
            sync_server.wait_for_token_requests(expiry)
            sync_server.on(sync_server.server.release)
            tokens = {call.result(30).access_token for call in calls}
            assert len(tokens) == 1
            assert sync_server.token_requests == expiry
            clock.advance(3600)  # expired: the next round needs a new token
    assert sync_server.reuse_detected == 0


def test_errors_are_the_async_managers(sync_server: ThreadedServer, tm: SyncTokenManager) -> None:
    with pytest.raises(ConfigurationError):
        SyncTokenManager(cache_size=0)
    with pytest.raises(ConfigurationError):
        tm.add("k", object(), refresh_token="x")  # type: ignore[arg-type]
    with pytest.raises(CredentialNotFoundError) as missing:
        tm.get_token("nobody")
    assert isinstance(missing.value, KeyError)
    assert missing.value.key == "nobody"

    tm.add("dead", sync_server.provider(), refresh_token="def50200" + "0" * 40)
    with pytest.raises(InvalidGrantError) as dead:
        tm.get_token("dead")
    assert dead.value.key == "dead"
    with pytest.raises(InvalidGrantError):  # the cooldown: no second request
        tm.get_token("dead")
    assert sync_server.token_requests == 1


def test_invalidate_refresh_and_remove(
    sync_server: ThreadedServer, tm: SyncTokenManager, tmp_path: Path
) -> None:
    tm.add("k", sync_server.provider(), refresh_token=sync_server.seed())
    first = tm.get_token("k")

    assert tm.invalidate("k", first) is True
    second = tm.get_token("k")
    assert second.access_token != first.access_token
    assert tm.invalidate("k", first) is False  # not the current token any more

    third = tm.refresh("k")
    assert third.access_token != second.access_token
    assert tm.get_token("k") is third
    saved = stored(tmp_path / "tokens.json", "k")
    assert saved is not None
    assert saved.refresh_token == third.refresh_token

    assert tm.remove("k") is True
    assert stored(tmp_path / "tokens.json", "k") is None
    with pytest.raises(CredentialNotFoundError):
        tm.get_token("k")
    assert sync_server.token_requests == 3
    assert sync_server.reuse_detected == 0


def test_token_rejected_gives_the_token_to_retry_with(
    sync_server: ThreadedServer, tm: SyncTokenManager
) -> None:
    tm.add("k", sync_server.provider(), refresh_token=sync_server.seed())
    first = tm.get_token("k")
    with ThreadPoolExecutor(THREADS) as pool:
        retries = list(pool.map(lambda _: tm.token_rejected("k", first), range(THREADS)))
    (second,) = {retry.access_token for retry in retries if retry is not None}
    assert second != first.access_token
    assert sync_server.token_requests == 2  # many rejections of one token: one refresh
    assert tm.token_rejected("k", first) is not None  # already replaced: retry with the new one
    assert sync_server.token_requests == 2
    current = tm.get_token("k")
    assert tm.token_rejected("k", current) is None  # refused within invalidate_interval
    assert tm.get_token("k") is current


def test_provider_factory_runs_in_a_worker_thread(
    sync_server: ThreadedServer, tmp_path: Path
) -> None:
    """A sync factory may block (a database lookup; Django's ORM refuses threads that run an
    event loop): it is called where no event loop runs."""
    seen: list[tuple[str, bool]] = []
    provider = sync_server.provider()
    path = tmp_path / "t.json"
    seed = Token(access_token="", expires_at=0.0, refresh_token=sync_server.seed())
    asyncio.run(FileStore(path).put("tenant-1", seed))  # stored, never registered

    def factory(key: str) -> Provider | None:
        seen.append((key, asyncio._get_running_loop() is None))
        return provider if key == "tenant-1" else None

    with SyncTokenManager(store=FileStore(path), provider_factory=factory) as tm:
        assert tm.get_token("tenant-1").access_token
        with pytest.raises(CredentialNotFoundError):
            tm.get_token("tenant-2")
    assert seen == [("tenant-1", True), ("tenant-2", True)]


def test_blocking_calls_from_a_running_event_loop_are_refused(tm: SyncTokenManager) -> None:
    token = Token(access_token="a", expires_at=0.0)

    async def misuse() -> list[str]:
        messages = []
        for call in (
            lambda: tm.get_token("k"),
            lambda: tm.add("k", object()),  # type: ignore[arg-type]
            lambda: tm.invalidate("k", token),
            lambda: tm.token_rejected("k", token),
            lambda: tm.refresh("k"),
            lambda: tm.remove("k"),
            lambda: tm.status("k"),
            tm.statuses,
            tm.refresh_due,
            tm.close,
        ):
            with pytest.raises(RuntimeError) as refused:
                call()
            messages.append(str(refused.value))
        return messages

    messages = asyncio.run(misuse())
    assert all("running event loop" in m and "TokenManager" in m for m in messages), messages
    assert "await tm.get_token(" in messages[0]
    assert "await tm.aclose(" in messages[-1]
    assert not tm.closed


def test_close_writes_a_rotated_refresh_token_the_store_refused(
    sync_server: ThreadedServer, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    store = RefusingFileStore(path)
    with SyncTokenManager(store=store, save_patience=0) as tm:
        seed = sync_server.seed()
        tm.add("k", sync_server.provider(), refresh_token=seed)
        store.refusing = True
        token = tm.get_token("k")  # the server rotated; the store refused the new refresh token
        before = stored(path, "k")
        assert before is not None
        assert before.refresh_token == seed
        store.refusing = False
    after = stored(path, "k")
    assert after is not None
    assert after.refresh_token == token.refresh_token
    assert sync_server.on(sync_server.server.is_valid_refresh_token, token.refresh_token)


EXIT_WITHOUT_CLOSE = """
import asyncio, json, sys
from asynctoken import FileStore, KeliwebProvider, StoreError
from asynctoken.sync import SyncTokenManager

class RefusingFileStore(FileStore):
    refusing = True
    async def replace(self, key, token, *, expected_refresh_token):
        if self.refusing:
            raise StoreError("disk full (injected)", location=self.path, key=key)
        return await super().replace(key, token, expected_refresh_token=expected_refresh_token)

path, token_url, seed = sys.argv[1:]
store = RefusingFileStore(path)
tm = SyncTokenManager(store=store, save_patience=0)
tm.add("k", KeliwebProvider("test-client", "test-secret", token_url=token_url), refresh_token=seed)
token = tm.get_token("k")
stored = asyncio.run(FileStore(path).get("k"))
store.refusing = False
print(json.dumps({"stored_before_exit": stored.refresh_token, "received": token.refresh_token}))
# no close(): the interpreter exits here
"""


def test_interpreter_exit_without_close_writes_the_kept_refresh_token(
    sync_server: ThreadedServer, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    seed = sync_server.seed()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_WITHOUT_CLOSE, str(path), sync_server.server.token_url, seed],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["stored_before_exit"] == seed  # the store had refused it
    after = stored(path, "k")
    assert after is not None
    assert after.refresh_token == seen["received"]
    assert sync_server.on(sync_server.server.is_valid_refresh_token, seen["received"])


def test_close_is_idempotent_and_a_closed_manager_refuses_work(
    sync_server: ThreadedServer, tmp_path: Path
) -> None:
    tm = SyncTokenManager(store=FileStore(tmp_path / "t.json"))
    tm.add("k", sync_server.provider(), refresh_token=sync_server.seed())
    tm.get_token("k")
    with ThreadPoolExecutor(4) as pool:
        for closing in [pool.submit(tm.close) for _ in range(4)]:
            closing.result(30)
    tm.close()
    assert tm.closed
    assert "closed" in repr(tm)
    with pytest.raises(TokenError, match="closed"):
        tm.get_token("k")
    with pytest.raises(TokenError, match="closed"):
        tm.add("other", sync_server.provider())
    never_used = SyncTokenManager(store=FileStore(tmp_path / "u.json"))
    never_used.close()
    never_used.close()
    assert never_used.closed


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("asynctoken-sync-")]


def test_a_garbage_collected_manager_closes_and_stops_its_thread(
    sync_server: ThreadedServer, tmp_path: Path
) -> None:
    before = set(loop_threads())
    tm = SyncTokenManager(store=FileStore(tmp_path / "t.json"))
    tm.add("k", sync_server.provider(), refresh_token=sync_server.seed())
    tm.get_token("k")
    (thread,) = set(loop_threads()) - before
    del tm
    gc.collect()
    thread.join(30)
    assert not thread.is_alive()


def test_repr_and_pickling(sync_server: ThreadedServer, tm: SyncTokenManager) -> None:
    seed = sync_server.seed()
    assert "not started" in repr(tm)
    tm.add("k", sync_server.provider(), refresh_token=seed)
    token = tm.get_token("k")
    text = repr(tm)
    assert "running" in text
    assert "registered=1" in text
    for secret in (seed, token.access_token, token.refresh_token or "?", "test-secret"):
        assert secret not in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(tm)


def test_margins_and_options_reach_the_async_manager(
    sync_server: ThreadedServer, tmp_path: Path
) -> None:
    """Options are the async manager's: a 1 s invalidate interval is honoured."""
    options: dict[str, Any] = {"margins": Margins(refresh=10, expiry=5), "invalidate_interval": 60}
    with SyncTokenManager(store=FileStore(tmp_path / "t.json"), **options) as tm:
        tm.add("k", sync_server.provider(), refresh_token=sync_server.seed())
        first = tm.get_token("k")
        assert tm.invalidate("k", first) is True
        second = tm.get_token("k")
        assert tm.invalidate("k", second) is False  # within invalidate_interval
    assert sync_server.token_requests == 2


def test_the_module_needs_no_optional_dependency() -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("requests", "httpx", "redis", "celery"):
            sys.modules[name] = None
        import asynctoken, asynctoken.sync
        print(asynctoken.sync.SyncTokenManager.__name__)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SyncTokenManager"


def test_closing_never_waits_forever_for_a_blocked_loop(caplog: pytest.LogCaptureFixture) -> None:
    """A loop blocked by foreign code (a provider factory that blocks) cannot make close(), or
    interpreter exit, hang: the wait is bounded."""
    from asynctoken import TokenManager
    from asynctoken._sync_runtime import Runtime

    runtime = Runtime(TokenManager(), name="asynctoken-sync-test", close_within=0.3)
    entered, release = threading.Event(), threading.Event()

    def block_the_loop() -> None:
        entered.set()
        release.wait(30)

    runtime._portal.start_task_soon(block_the_loop)
    assert entered.wait(30)
    try:
        with caplog.at_level(logging.ERROR, logger="asynctoken"):
            runtime.close()  # returns after close_within, although the loop is still blocked
        assert "did not finish closing within 0.3 s" in caplog.text
    finally:
        release.set()
    runtime._thread.join(30)  # once unblocked, the loop closes the manager and ends
    assert not runtime._thread.is_alive()
    assert runtime.manager.closed


def test_the_options_are_the_async_managers() -> None:
    """Every TokenManager option (but the aiohttp session), same order, same defaults: a new
    option of the async manager fails this test until the sync one has it too."""
    from asynctoken import TokenManager

    ours = inspect.signature(SyncTokenManager.__init__).parameters
    theirs = inspect.signature(TokenManager.__init__).parameters
    assert list(ours) == [name for name in theirs if name != "session"]
    for name, parameter in ours.items():
        assert parameter.default == theirs[name].default, name
        assert parameter.kind == theirs[name].kind, name


def test_every_method_of_the_async_manager_has_a_blocking_twin() -> None:
    from asynctoken import TokenManager

    async_only = {"middleware", "httpx_auth", "aclose"}  # aiohttp / httpx.AsyncClient / close()
    theirs = {
        name
        for name, member in vars(TokenManager).items()
        if not name.startswith("_") and name not in async_only and callable(member)
    }
    missing = sorted(name for name in theirs if not callable(getattr(SyncTokenManager, name, None)))
    assert missing == []


def test_a_sync_event_subscriber_runs_in_a_worker_thread_in_order(
    sync_server: ThreadedServer, tmp_path: Path
) -> None:
    """A plain function may block (write to a database, Django's ORM): it is called where no
    event loop runs, and events arrive in the order they happened."""
    seen: list[tuple[str, bool]] = []

    def subscriber(event: object) -> None:
        seen.append((type(event).__name__, asyncio._get_running_loop() is None))

    with SyncTokenManager(store=FileStore(tmp_path / "t.json"), on_event=subscriber) as tm:
        tm.add("k", sync_server.provider(), refresh_token=sync_server.seed())
        tm.get_token("k")
    names = [name for name, _ in seen]
    assert names.index("RefreshStarted") < names.index("RefreshSucceeded"), names
    assert all(off_the_loop for _, off_the_loop in seen), seen


def test_status_and_statuses(sync_server: ThreadedServer) -> None:
    with SyncTokenManager() as tm:
        provider = sync_server.provider()
        for n in range(250):  # more than one batch of the iteration
            tm.add(f"tenant-{n:03}", provider, refresh_token=sync_server.seed())
        token = tm.get_token("tenant-007")

        status = tm.status("tenant-007")
        assert status.key == "tenant-007"
        assert status.provider == "keliweb"
        assert status.access_token_expires_at == token.expires_at
        assert status.has_refresh_token
        with pytest.raises(CredentialNotFoundError):
            tm.status("nobody")

        keys = sorted(s.key for s in tm.statuses())
        assert keys == [f"tenant-{n:03}" for n in range(250)]
        first = tm.statuses()
        assert next(first).key.startswith("tenant-")
        first.close()  # left early: its async generator is closed on the loop
        assert len(list(tm.statuses())) == 250
