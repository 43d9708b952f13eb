"""Things scenarios run against: a fake token server in its own process, a real redis-server,
and worker processes started together with a ready/go handshake."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import aiohttp

from asynctoken import Token

__all__ = [
    "FakeServerProcess",
    "RedisHandle",
    "WorkerError",
    "delete_prefix",
    "run_workers",
    "worker_handshake",
]

REPO = Path(__file__).resolve().parent.parent


class FakeServerProcess:
    """``python -m asynctoken.testing`` in a child process, driven through its control routes.

    A server in its own process keeps its work off the event loop being measured, as a real
    token endpoint or API would be.

    Args:
        delay: latency of every token response, seconds.
        expires_in: access-token lifetime, seconds.
        lifetime: the child exits after this many seconds whatever happens.
    """

    def __init__(self, *, delay: float = 0.0, expires_in: float = 3600.0, lifetime: float = 900):
        self._args = [
            sys.executable,
            "-m",
            "asynctoken.testing",
            "--flavor",
            "keliweb",
            "--port",
            "0",
            "--delay",
            str(delay),
            "--expires-in",
            str(expires_in),
            "--lifetime",
            str(lifetime),
        ]
        self._process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self.token_url = ""
        self.api_url = ""
        self.base_url = ""
        self.client_id = "test-client"
        self.client_secret = "test-secret"

    async def __aenter__(self) -> FakeServerProcess:
        self._process = await asyncio.create_subprocess_exec(
            *self._args, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL
        )
        assert self._process.stdout is not None
        try:
            self.token_url = (await asyncio.wait_for(self._process.stdout.readline(), 30)).decode()
            self.api_url = (await asyncio.wait_for(self._process.stdout.readline(), 30)).decode()
        except asyncio.TimeoutError:
            await self.__aexit__(None, None, None)
            raise RuntimeError("the fake token server did not start within 30 s") from None
        self.token_url, self.api_url = self.token_url.strip(), self.api_url.strip()
        if not self.token_url.startswith("http"):
            await self.__aexit__(None, None, None)
            raise RuntimeError(f"the fake token server printed {self.token_url!r}")
        self.base_url = self.token_url.rsplit("/oauth/token", 1)[0]
        self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()

    async def _call(self, method: str, route: str) -> Any:
        assert self._http is not None
        async with self._http.request(method, f"{self.base_url}/_fake/{route}") as response:
            response.raise_for_status()
            return await response.json()

    async def refresh_token(self) -> str:
        """A valid refresh token in a new family."""
        data = await self._call("POST", "refresh-token")
        return str(data["refresh_token"])

    async def token(self) -> Token:
        """A valid access + refresh token pair in a new family."""
        return Token.from_dict(await self._call("POST", "token"))

    async def stats(self) -> dict[str, Any]:
        """Counters: ``token_requests``, ``reuse_detected``, ``api_requests``, …"""
        data: dict[str, Any] = await self._call("GET", "stats")
        return data


def _load_test_helper() -> ModuleType:
    """``tests/redis_server.py``: the one place that knows how to start a throw-away Redis."""
    path = REPO / "tests" / "redis_server.py"
    spec = importlib.util.spec_from_file_location("_asynctoken_tests_redis_server", path)
    if spec is None or spec.loader is None or not path.exists():
        raise RuntimeError(f"{path} is missing: run the benchmarks from a checkout of the repo")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RedisHandle:
    """A Redis URL: the one given, or a redis-server started on first use and stopped at exit."""

    def __init__(self, url: str | None) -> None:
        self._url = url
        self._server: Any = None

    def url(self) -> str:
        if self._url is None:
            helper = _load_test_helper()
            self._server = helper.RedisServer()
            self._server.start()
            self._url = str(self._server.url)
        return self._url

    def owned(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            shutil.rmtree(self._server.directory, ignore_errors=True)  # its log, nothing else
            self._server = None


def delete_prefix(url: str, prefix: str) -> int:
    """UNLINK every key that starts with ``prefix``; returns how many."""
    import redis

    count = 0
    with redis.Redis.from_url(url) as client:
        names: list[bytes] = []
        for name in client.scan_iter(match=f"{prefix}*", count=10_000):
            names.append(name)
            if len(names) == 10_000:
                count += client.unlink(*names)
                names = []
        if names:
            count += client.unlink(*names)
    return count


class WorkerError(RuntimeError):
    """A worker process failed; the message carries its stderr tail."""


async def run_workers(
    module: str, configs: list[dict[str, Any]], *, timeout: float
) -> list[dict[str, Any]]:
    """Start one ``python -m <module> <json config>`` per config and return their JSON results.

    Handshake: each worker prints ``ready`` once set up (imports done, connections open), and
    waits for ``go`` on stdin; all workers get ``go`` at the same moment. Each then prints one
    JSON object as its last stdout line.

    Raises:
        WorkerError: a worker exited non-zero, printed no JSON, or did not finish in ``timeout``.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO),
            env=env,
        )
        for config in configs
    ]
    try:
        stderr_tasks = [asyncio.ensure_future(_read_all(p.stderr)) for p in processes]

        async def ready(process: asyncio.subprocess.Process) -> None:
            assert process.stdout is not None
            line = await process.stdout.readline()
            if line.strip() != b"ready":
                await process.wait()
                raise WorkerError(f"{module}: expected 'ready', got {line!r}")

        try:
            await asyncio.wait_for(asyncio.gather(*(ready(p) for p in processes)), 60)
        except (WorkerError, asyncio.TimeoutError) as exc:
            tails = [await _tail(task) for task in stderr_tasks]
            raise WorkerError(f"{module} did not get ready: {exc}; stderr: {tails}") from None
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
            await process.stdin.drain()
            process.stdin.close()

        async def result(process: asyncio.subprocess.Process) -> dict[str, Any]:
            assert process.stdout is not None
            out = await process.stdout.read()
            code = await process.wait()
            lines = [line for line in out.decode().splitlines() if line.strip()]
            if code != 0 or not lines:
                raise WorkerError(f"{module} exited with {code}")
            data: dict[str, Any] = json.loads(lines[-1])
            return data

        try:
            return await asyncio.wait_for(asyncio.gather(*(result(p) for p in processes)), timeout)
        except (WorkerError, asyncio.TimeoutError, ValueError) as exc:
            tails = [await _tail(task) for task in stderr_tasks]
            raise WorkerError(f"{module} failed: {exc!r}; stderr: {tails}") from None
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _read_all(stream: asyncio.StreamReader | None) -> bytes:
    return await stream.read() if stream is not None else b""


async def _tail(task: asyncio.Future[bytes]) -> str:
    try:
        data = await asyncio.wait_for(asyncio.shield(task), 2)
    except asyncio.TimeoutError:
        return "(no stderr yet)"
    return data.decode(errors="replace")[-3000:]


async def worker_handshake() -> None:
    """Worker side of :func:`run_workers`: say ``ready``, wait for ``go``."""
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(f"expected 'go', got {line!r}")
