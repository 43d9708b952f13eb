"""The web-server recipes in examples/, run for real: gunicorn with aiohttp workers and uvicorn
with FastAPI workers (2 processes each), all sharing one store, calling the protected API of a
fake OAuth server that runs in its own process (``python -m asynctoken.testing``) and hands out
short-lived, rotating tokens (a reused refresh token revokes the whole family).

Under bounded load across several expiries: zero failed gateway requests, every worker process
serving, and one token request per expiry across all of them. Also what the gateways answer
when the token endpoint is down (503) and when the credential is dead (502).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
import redis
from redis_server import free_port

from asynctoken import Margins

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
LIFETIME = 4.0  # seconds: short enough for several expiries in a few seconds
EXPIRIES = 3
CLIENTS = 12  # concurrent load clients, spread over both gateways
PAUSE = 0.02  # seconds between one client's requests: bounded load
WORKERS = 2

pytestmark = pytest.mark.slow


class FakeServerProcess:
    """``python -m asynctoken.testing`` in a child process, driven through its control routes."""

    def __init__(self) -> None:
        self.token_url = self.api_url = self.base_url = ""
        self._process: asyncio.subprocess.Process | None = None
        self.http = aiohttp.ClientSession()

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "asynctoken.testing", "--flavor", "oauth2"),
            *("--expires-in", str(LIFETIME), "--whole-second-expiry"),
            *("--port", "0", "--lifetime", "300"),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdout is not None
        self.token_url = (await asyncio.wait_for(self._process.stdout.readline(), 30)).decode()
        self.api_url = (await asyncio.wait_for(self._process.stdout.readline(), 30)).decode()
        self.token_url, self.api_url = self.token_url.strip(), self.api_url.strip()
        assert self.token_url.startswith("http://127.0.0.1:"), self.token_url
        self.base_url = self.token_url.rsplit("/oauth/token", 1)[0]

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.base_url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.control("GET", "/_fake/stats")
        return stats

    async def close(self) -> None:
        await self.http.close()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await asyncio.wait_for(self._process.wait(), 30)


class Gateway:
    """One example app under its process manager: ``WORKERS`` worker processes on a port."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/invoices"
        self._command = [arg.replace("{port}", str(self.port)) for arg in command]
        self._env = env
        self._log_path = log
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self._command, cwd=EXAMPLES, env=self._env, stdout=log, stderr=log
            )

    @property
    def log(self) -> str:
        return self._log_path.read_text(errors="replace")

    def workers(self) -> list[psutil.Process]:
        assert self._process is not None
        return psutil.Process(self._process.pid).children()

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        """Until the port answers (the answer itself is the test's business)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            assert self._process is not None
            if self._process.returncode is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log[-3000:]}")
            try:
                async with http.get(f"http://127.0.0.1:{self.port}/nothing-here") as resp:
                    assert resp.status == 404
                    return
            except aiohttp.ClientConnectionError:
                if loop.time() > deadline:
                    message = f"{self.name} never listened:\n{self.log[-3000:]}"
                    raise AssertionError(message) from None
                await asyncio.sleep(0.1)  # polling for a port: nothing to wait on instead

    async def stop(self) -> int:
        assert self._process is not None
        if self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)  # a graceful shutdown: managers aclose()
        return await asyncio.wait_for(self._process.wait(), 60)


def gateways(store: str, server: FakeServerProcess, refresh_token: str, tmp: Path) -> list[Any]:
    env = {
        **os.environ,
        "UPSTREAM_API_URL": server.api_url,
        "TOKEN_URL": server.token_url,
        "CLIENT_ID": "test-client",
        "CLIENT_SECRET": "test-secret",
        "REFRESH_TOKEN": refresh_token,
        "TOKEN_STORE": store,
    }
    gunicorn = [
        *(sys.executable, "-m", "gunicorn", "aiohttp_gateway:create_app"),
        *("--worker-class", "aiohttp.GunicornWebWorker", "--workers", str(WORKERS)),
        *("--bind", "127.0.0.1:{port}", "--preload", "--graceful-timeout", "20"),
        "--no-control-socket",  # gunicorn >= 27 would share ~/.gunicorn/gunicorn.ctl
    ]
    uvicorn = [
        *(sys.executable, "-m", "uvicorn", "fastapi_gateway:app", "--app-dir", str(EXAMPLES)),
        *("--workers", str(WORKERS), "--host", "127.0.0.1", "--port", "{port}"),
        *("--no-access-log", "--timeout-graceful-shutdown", "20"),
    ]
    return [
        Gateway("gunicorn+aiohttp", gunicorn, env, tmp / "gunicorn.log"),
        Gateway("uvicorn+fastapi", uvicorn, env, tmp / "uvicorn.log"),
    ]


@contextlib.asynccontextmanager
async def running(
    store: str, tmp: Path
) -> AsyncIterator[tuple[FakeServerProcess, list[Gateway], aiohttp.ClientSession]]:
    server = FakeServerProcess()
    # A new connection per request, so that every worker process gets its share.
    http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=60),
    )
    started: list[Gateway] = []
    try:
        await server.start()
        seed = (await server.control("POST", "/_fake/refresh-token"))["refresh_token"]
        for gateway in gateways(store, server, seed, tmp):
            await gateway.start()
            started.append(gateway)
        for gateway in started:
            await gateway.wait_ready(http)
        yield server, started, http
        for gateway in started:
            assert await gateway.stop() == 0, gateway.log[-3000:]
            assert "Traceback" not in gateway.log, gateway.log[-5000:]
    finally:
        for gateway in started:
            with contextlib.suppress(ProcessLookupError, asyncio.TimeoutError):
                await gateway.stop()
        await http.close()
        await server.close()


async def load(
    server: FakeServerProcess, targets: list[Gateway], http: aiohttp.ClientSession
) -> dict[str, list[int]]:
    """Bounded load on every gateway until the credential went through ``EXPIRIES`` expiries."""
    statuses: dict[str, list[int]] = {gateway.name: [] for gateway in targets}
    enough = asyncio.Event()
    before = (await server.stats())["token_requests"]

    async def client(gateway: Gateway) -> None:
        while not enough.is_set():
            async with http.get(gateway.url) as resp:
                await resp.read()
                statuses[gateway.name].append(resp.status)
            await asyncio.sleep(PAUSE)

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        # The first request turns the seed into a token; then one per expiry.
        while (await server.stats())["token_requests"] < before + 1 + EXPIRIES:
            assert loop.time() < deadline, "the credential did not go through its expiries"
            await asyncio.sleep(0.2)  # polling the server's counter
        enough.set()

    clients = [client(gateway) for gateway, _ in zip(itertools.cycle(targets), range(CLIENTS))]
    await asyncio.gather(watch(), *clients)
    return statuses


async def assert_one_token_request_per_expiry(server: FakeServerProcess) -> None:
    stats = await server.stats()
    assert stats["reuse_detected"] == 0
    records = [
        r
        for r in await server.control("GET", "/_fake/requests")
        if not r["outcome"].startswith("injected:")  # failures a test asked for
    ]
    assert len(records) >= 1 + EXPIRIES
    # No duplicate refresh anywhere: a second use of a refresh token would be a reuse (and
    # revoke the family); a second refresh right after another shows up as a short spacing.
    assert [r["outcome"] for r in records] == ["ok"] * len(records), records
    stale, _ = Margins().offsets(LIFETIME)
    fresh_period = LIFETIME - stale
    spacing = [b["loop_time"] - a["loop_time"] for a, b in itertools.pairwise(records)]
    assert min(spacing) > 0.5 * fresh_period, spacing


def assert_every_worker_served(gateway: Gateway, upstream_port: int) -> None:
    """Each worker process holds its own connection to the upstream: each made calls."""
    serving = [
        worker
        for worker in gateway.workers()
        if any(
            conn.raddr and conn.raddr.port == upstream_port
            for conn in worker.net_connections(kind="tcp")
        )
    ]
    assert len(serving) >= WORKERS, f"{gateway.name}: {len(serving)} worker(s) called upstream"


async def test_gateways_share_a_file_store(tmp_path: Path) -> None:
    store = str(tmp_path / "tokens.json")
    async with running(store, tmp_path) as (server, targets, http):
        # The token endpoint is down: each gateway's first request waits for the manager's
        # retries (4 attempts), then answers 503 with Retry-After.
        await server.control("POST", "/_fake/fail-next", {"n": 4 * len(targets), "status": 503})
        for gateway in targets:
            async with http.get(gateway.url) as resp:
                assert resp.status == 503, gateway.name
                assert resp.headers["Retry-After"] == "5"
                assert await resp.json() == {
                    "error": "upstream_unavailable",
                    "detail": "TransientError",
                }
        stats = await server.stats()
        assert stats["outcomes"] == {"injected:503": 4 * len(targets)}

        statuses = await load(server, targets, http)
        upstream_port = int(server.api_url.split(":")[2].split("/")[0])
        for gateway in targets:
            assert set(statuses[gateway.name]) == {200}, gateway.name
            assert_every_worker_served(gateway, upstream_port)
        await assert_one_token_request_per_expiry(server)
        assert (await server.stats())["api_unauthorized"] == 0  # no token expired in flight

        # The credential dies (refresh token revoked): a gateway's answer is 502. A worker
        # whose rejected token was replaced by one another worker had just stored (dead too)
        # returns that one 401 (a request is retried once); its next request then refreshes.
        await server.control("POST", "/_fake/expire-access-tokens")
        await server.control("POST", "/_fake/expire-refresh-tokens")
        for gateway in targets:
            answers = []
            for _ in range(WORKERS + 1):  # at most one such 401 per worker
                async with http.get(gateway.url) as resp:
                    answers.append(resp.status)
                    if resp.status == 502:
                        assert await resp.json() == {
                            "error": "upstream_credential",
                            "detail": "InvalidGrantError",
                        }
                        break
            assert answers[-1] == 502, (gateway.name, answers)
            assert set(answers[:-1]) <= {401}, (gateway.name, answers)
    stored = json.loads(Path(store).read_text())
    assert list(stored["credentials"]) == ["upstream"], stored.keys()


async def test_gateways_share_a_redis_store(tmp_path: Path, redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        stale_keys = list(client.scan_iter(match="gateway:*"))
        if stale_keys:
            client.delete(*stale_keys)
    try:
        async with running(redis_url, tmp_path) as (server, targets, http):
            statuses = await load(server, targets, http)
            for gateway in targets:
                assert set(statuses[gateway.name]) == {200}, gateway.name
            await assert_one_token_request_per_expiry(server)
            assert (await server.stats())["api_unauthorized"] == 0
    finally:
        with redis.Redis.from_url(redis_url) as client:
            keys = list(client.scan_iter(match="gateway:*"))
            assert keys  # the workers shared the credential through Redis
            client.delete(*keys)
