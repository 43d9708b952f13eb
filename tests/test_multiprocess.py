"""Several processes (and "hosts") sharing one rotating credential through each persisting store
(FileStore, SQLiteStore, RedisStore), and kill -9 at random moments of refresh-heavy work.

The token server rotates refresh tokens and revokes the whole family when a used one comes back,
so a single duplicate refresh anywhere shows up as ``reuse_detected`` and as failed calls.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from _worker import MARGINS
from backends import Backend

from asynctoken import FileStore, Token, TokenStore
from asynctoken.testing import FakeOAuthServer

WORKER = str(Path(__file__).with_name("_worker.py"))
LIFETIME = 3.0
EXPIRIES = 5

pytestmark = pytest.mark.slow


@pytest.fixture
async def server() -> AsyncIterator[FakeOAuthServer]:
    async with FakeOAuthServer("keliweb", expires_in=LIFETIME) as srv:
        yield srv


async def seed(store: TokenStore, server: FakeOAuthServer) -> str:
    refresh_token = server.issue_refresh_token()
    await store.put("shared", Token(access_token="", expires_at=0.0, refresh_token=refresh_token))
    return refresh_token


async def spawn(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        WORKER,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    if line != b"ready\n":
        _, err = await proc.communicate()
        raise AssertionError(f"worker did not start: {line!r} {err.decode()[-2000:]}")
    return proc


async def run_callers(
    server: FakeOAuthServer, stores: list[str], tmp_path: Path, *, callers: int
) -> list[dict[str, Any]]:
    """Run one worker per store spec until the credential went through ``EXPIRIES`` expiries."""
    stop_file = tmp_path / "stop"
    procs = await asyncio.gather(
        *(
            spawn(
                "callers",
                spec,
                server.token_url,
                server.api_url,
                "--callers",
                str(callers),
                "--pause",
                "1.0",
                "--stop-file",
                str(stop_file),
            )
            for spec in stores
        )
    )
    try:
        # The first request turns the seed into a token; then one per expiry.
        await server.wait_for_token_requests(1 + EXPIRIES, timeout=120)
        await server.wait_for_token_responses(1 + EXPIRIES, timeout=30)
    finally:
        stop_file.touch()
    results = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-3000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


def assert_one_request_per_expiry(server: FakeOAuthServer, results: list[dict[str, Any]]) -> None:
    records = server.requests
    assert server.reuse_detected == 0
    assert [r.outcome for r in records] == ["ok"] * len(records)
    # Each refresh used the refresh token the previous one issued: one request per generation.
    for previous, current in itertools.pairwise(records):
        assert current.refresh_token == previous.issued_refresh_token
    # Generations are spaced by the token's fresh period, not refreshed per call; the bound
    # leaves room for a loaded machine delaying a request.
    fresh = LIFETIME - MARGINS.offsets(LIFETIME)[0]
    spacing = [b.loop_time - a.loop_time for a, b in itertools.pairwise(records)]
    assert min(spacing) > fresh * 0.5, spacing
    assert sum(r["failed"] for r in results) == 0, results
    assert all(r["calls"] > 0 for r in results)


async def test_eight_processes_share_one_store(
    server: FakeOAuthServer, backend: Backend, tmp_path: Path
) -> None:
    """Eight worker processes; for Redis think of them as two "hosts" of four: nothing is shared
    but the store."""
    store = backend.open()
    try:
        await seed(store, server)
    finally:
        await store.aclose()
    results = await run_callers(server, [backend.spec()] * 8, tmp_path, callers=100)
    assert_one_request_per_expiry(server, results)


# --------------------------------------------------------------------------- kill -9


async def until_requests_or_exit(
    server: FakeOAuthServer, proc: asyncio.subprocess.Process, n: int
) -> None:
    """Wait for ``n`` token requests; a worker that exits meanwhile fails the test with its
    stderr."""
    waiting = asyncio.ensure_future(server.wait_for_token_requests(n, timeout=30))
    exiting = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.wait({waiting, exiting}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            assert proc.stderr is not None
            err = await proc.stderr.read()
            raise AssertionError(f"worker exited ({proc.returncode}): {err.decode()[-3000:]}")
        waiting.result()
    finally:
        waiting.cancel()
        exiting.cancel()


KILLS = 20


async def test_kill_9_during_refreshes_loses_nothing(backend: Backend) -> None:
    """Kill a refresh-looping process at random moments, 20 times per store; each time a new
    process must resume from the store, unless the kill fell between the server's rotation and
    the client's save (the only window no client can close), which is counted separately."""
    rng = random.Random(20261122)
    kills = KILLS
    lost_in_flight = 0
    resumed = 0
    # A short Redis lease: a worker killed inside the refresh lock blocks the next one that long
    # (one worker runs at a time here, so a lease lost to a stalled machine harms nobody).
    spec = backend.spec(lock_ttl=1.0)
    async with FakeOAuthServer("keliweb", expires_in=3600, delay=0.002) as server:
        store = backend.open()
        await seed(store, server)
        for _ in range(kills):
            proc = await spawn(
                "refresh-loop", spec, server.token_url, server.api_url, "--pause", "0.01"
            )
            before = server.token_requests
            # Let it make a few refreshes, then kill it at a random moment.
            await until_requests_or_exit(server, proc, before + rng.randint(1, 4))
            await asyncio.sleep(rng.uniform(0, 0.03))
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            # A request the dead process sent may still be in the server's hands: judge the
            # store only once every request was decided and its answer sent or dropped.
            await server.wait_for_token_deliveries(server.token_requests, timeout=30)
            # The store is never left half-written: it reads back.
            stored = await store.get("shared")
            assert stored is not None
            assert stored.refresh_token
            if server.is_valid_refresh_token(stored.refresh_token):
                resumed += 1
                continue
            # The stored token was already rotated by the server: the answer died with the
            # process. Check it really was that window, then re-authorize for the next round.
            used = [r for r in server.requests if r.refresh_token == stored.refresh_token]
            assert [r.outcome for r in used] == ["ok"], [r.outcome for r in used]
            lost_in_flight += 1
            await seed(store, server)
        # A last process resumes normally from what the store holds.
        proc = await spawn("once", spec, server.token_url, server.api_url)
        _out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        assert server.reuse_detected == 0
        await store.aclose()
    assert resumed + lost_in_flight == kills
    # Both kinds of moment were hit: the test exercised more than the in-flight window.
    assert resumed >= KILLS // 5, (resumed, lost_in_flight)
    print(f"kill -9: {kills} kills, {resumed} resumed, {lost_in_flight} lost in flight")


async def test_worker_script_reports_failures(server: FakeOAuthServer, tmp_path: Path) -> None:
    """The harness itself can see failures: with a dead credential, calls fail and are counted."""
    path = tmp_path / "tokens.json"
    await FileStore(path).put(
        "shared", Token(access_token="", expires_at=0.0, refresh_token="def50200" + "9" * 40)
    )
    stop_file = tmp_path / "stop"
    proc = await spawn(
        "callers",
        str(path),
        server.token_url,
        server.api_url,
        "--callers",
        "3",
        "--pause",
        "0.01",
        "--stop-file",
        str(stop_file),
    )
    await server.wait_for_token_requests(1)
    await server.wait_for_token_responses(1)
    stop_file.touch()
    out, _ = await proc.communicate()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["failed"] > 0
    assert os.path.exists(path)
