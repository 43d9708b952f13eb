"""One rotating credential, every kind of worker, one store: async processes (TokenManager),
threaded sync processes (SyncTokenManager) and children forked from a process that created and
used its SyncTokenManager before forking, all at once, through several expiries.

The strict fake server runs in a process of its own (``python -m asynctoken.testing``): it
rotates the refresh token on every refresh and revokes the whole family when a used one comes
back, so a single duplicate refresh anywhere shows up as reuse and as failed calls.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from _worker import MARGINS
from sync_support import Process

from asynctoken import FileStore, Token, TokenStore

HERE = Path(__file__).parent
ASYNC_WORKER = str(HERE / "_worker.py")
SYNC_WORKER = str(HERE / "_sync_worker.py")
LIFETIME = 2.5
EXPIRIES = 4

pytestmark = pytest.mark.slow


@dataclass
class RemoteServer:
    """The fake server in its own process, driven through its ``/_fake`` control routes."""

    token_url: str
    api_url: str

    @property
    def base(self) -> str:
        return self.token_url.removesuffix("/oauth/token")

    def seed(self) -> str:
        answer = requests.post(self.base + "/_fake/refresh-token", timeout=10)
        refresh_token: str = answer.json()["refresh_token"]
        return refresh_token

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = requests.get(self.base + "/_fake/stats", timeout=10).json()
        return stats

    def token_requests(self) -> list[dict[str, Any]]:
        answer = requests.get(self.base + "/_fake/requests", timeout=10)
        records: list[dict[str, Any]] = answer.json()
        return records

    def wait_for_answered_token_requests(self, n: int, timeout: float) -> None:
        """Poll until ``n`` token requests arrived and all were answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats["token_requests"] >= n and "pending" not in stats["outcomes"]:
                return
            time.sleep(0.1)
        raise AssertionError(f"{n} token requests not seen within {timeout} s: {self.stats()}")


@pytest.fixture
def remote_server() -> Iterator[RemoteServer]:
    server = Process(
        "-m",
        "asynctoken.testing",
        "--flavor",
        "keliweb",
        "--port",
        "0",
        "--expires-in",
        str(LIFETIME),
        "--lifetime",
        "300",
    )
    try:
        yield RemoteServer(token_url=server.line(), api_url=server.line())
    finally:
        server.popen.terminate()
        server.stop()


async def seed_store(store: TokenStore, refresh_token: str) -> None:
    seed = Token(access_token="", expires_at=0.0, refresh_token=refresh_token)
    try:
        await store.put("shared", seed)
    finally:
        await store.aclose()


def run_fleet(server: RemoteServer, spec: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Every kind of worker on the store ``spec`` until ``EXPIRIES`` expiries went by."""
    stop_file = str(tmp_path / "stop")
    common = [spec, server.token_url, server.api_url]
    processes = [
        *(
            Process(
                ASYNC_WORKER,
                "callers",
                *common,
                "--callers",
                "20",
                "--pause",
                "0.2",
                "--stop-file",
                stop_file,
            )
            for _ in range(2)
        ),
        *(
            Process(SYNC_WORKER, "threads", *common, "--threads", "8", "--stop-file", stop_file)
            for _ in range(2)
        ),
        Process(
            SYNC_WORKER,
            "fork",
            *common,
            "--threads",
            "8",
            "--children",
            "2",
            "--stop-file",
            stop_file,
        ),
    ]
    try:
        for process in processes:
            assert process.line() == "ready"
        # The first call turns the seed into a token; then one request per expiry.
        server.wait_for_answered_token_requests(1 + EXPIRIES, timeout=90)
        Path(stop_file).touch()
        return [result for process in processes for result in process.results()]
    finally:
        Path(stop_file).touch()
        for process in processes:
            process.stop()


def assert_one_request_per_expiry(server: RemoteServer, results: list[dict[str, Any]]) -> None:
    stats = server.stats()
    records = server.token_requests()
    assert stats["reuse_detected"] == 0
    # Each refresh was accepted: it used the one live refresh token, so the requests form a
    # single rotation chain (any duplicate would be a reuse and revoke the family).
    assert [r["outcome"] for r in records] == ["ok"] * len(records)
    assert len(records) >= 1 + EXPIRIES
    # One request per expiry: spaced by the fresh period, never back to back; the bound leaves
    # room for a loaded machine delaying a request.
    fresh = LIFETIME - MARGINS.offsets(LIFETIME)[0]
    spacing = [b["loop_time"] - a["loop_time"] for a, b in itertools.pairwise(records)]
    assert min(spacing) > fresh * 0.5, spacing
    assert sum(r["failed"] for r in results) == 0, results
    assert all(r["calls"] > 0 for r in results), results
    # 2 async processes, 2 threaded ones, the forking parent and its 2 forked children.
    assert len(results) == 7, results
    assert sum(1 for r in results if r.get("forked")) == 2, results


def test_every_kind_of_worker_shares_a_file_store(
    remote_server: RemoteServer, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    asyncio.run(seed_store(FileStore(path), remote_server.seed()))
    results = run_fleet(remote_server, str(path), tmp_path)
    assert_one_request_per_expiry(remote_server, results)


def test_every_kind_of_worker_shares_a_redis_store(
    remote_server: RemoteServer, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    from asynctoken import RedisStore

    asyncio.run(seed_store(RedisStore(redis_url, prefix=redis_prefix), remote_server.seed()))
    results = run_fleet(remote_server, f"{redis_url}|{redis_prefix}", tmp_path)
    assert_one_request_per_expiry(remote_server, results)
