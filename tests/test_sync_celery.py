"""A real Celery worker (prefork pool, a real Redis broker) whose tasks call an API through
requests + TokenAuth, on a SyncTokenManager created in the worker's main process before the
pool forked. Short-lived tokens: the credential goes through several expiries meanwhile."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _worker import MARGINS
from celery import Celery
from sync_support import Process, ThreadedServer, threaded_server

from asynctoken import FileStore, Token

LIFETIME = 2.0
EXPIRIES = 2

pytestmark = pytest.mark.slow


@pytest.fixture
def short_lived_server() -> Iterator[ThreadedServer]:
    yield from threaded_server(expires_in=LIFETIME)


@pytest.fixture
def broker(redis_url: str) -> Iterator[str]:
    """The session's redis-server, database 1 (the other tests use database 0)."""
    url = redis_url.rsplit("/", 1)[0] + "/1"
    yield url
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()


def test_celery_prefork_tasks_share_one_rotating_credential(
    short_lived_server: ThreadedServer, broker: str, tmp_path: Path
) -> None:
    server = short_lived_server
    store = tmp_path / "tokens.json"
    seed = Token(access_token="", expires_at=0.0, refresh_token=server.seed())
    asyncio.run(FileStore(store).put("shared", seed))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "ASYNCTOKEN_TEST_BROKER": broker,
        "ASYNCTOKEN_TEST_STORE": str(store),
        "ASYNCTOKEN_TEST_TOKEN_URL": server.server.token_url,
        "ASYNCTOKEN_TEST_API_URL": server.server.api_url,
    }
    name = f"asynctoken-{uuid.uuid4().hex[:8]}@%h"
    worker = Process(
        "-m",
        "celery",
        "-A",
        "celery_tasks",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        "2",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        name,
        env=env,
    )
    client = Celery(broker=broker, backend=broker)
    results: list[dict[str, Any]] = []
    try:
        worker.wait_for_stderr(" ready.", timeout=60)
        deadline = time.monotonic() + 60
        while server.token_requests < 1 + EXPIRIES and time.monotonic() < deadline:
            wave = [client.send_task("celery_tasks.call_api") for _ in range(8)]
            results += [task.get(timeout=30) for task in wave]
    finally:
        client.close()
        worker.popen.send_signal(signal.SIGTERM)  # warm shutdown
    assert worker.popen.wait(30) == 0, worker.stderr
    assert "Traceback" not in worker.stderr, worker.stderr

    assert server.token_requests >= 1 + EXPIRIES
    assert [r["status"] for r in results] == [200] * len(results)
    pids = {r["pid"] for r in results}
    (created_in,) = {r["manager_created_in"] for r in results}
    assert created_in == worker.popen.pid  # the worker's main process, before the fork
    assert len(pids) == 2  # both pool processes served tasks...
    assert created_in not in pids  # ...on the manager they inherited
    records = server.on(lambda: server.server.requests)
    assert server.reuse_detected == 0
    assert [r.outcome for r in records] == ["ok"] * len(records)
    for previous, current in itertools.pairwise(records):
        assert current.refresh_token == previous.issued_refresh_token
    fresh = LIFETIME - MARGINS.offsets(LIFETIME)[0]
    spacing = [b.loop_time - a.loop_time for a, b in itertools.pairwise(records)]
    assert min(spacing) > fresh * 0.5, spacing
