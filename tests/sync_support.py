"""Helpers for the sync facade's tests (imported by name: tests/ is not a package).

Sync code must run in a thread without an event loop, so the fake server cannot live on the
test's own loop: :class:`ThreadedServer` runs it on a loop in a thread of its own and forwards
calls to it through an anyio portal.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from anyio.from_thread import BlockingPortal, start_blocking_portal

from asynctoken import KeliwebProvider
from asynctoken.testing import FakeOAuthServer

_T = TypeVar("_T")


class ThreadedServer:
    """A :class:`FakeOAuthServer` on its own loop thread; ``on(...)`` runs code on that loop."""

    def __init__(self, portal: BlockingPortal, server: FakeOAuthServer) -> None:
        self.portal = portal
        self.server = server

    def on(self, func: Callable[..., Awaitable[_T] | _T], *args: Any) -> _T:
        """Call ``func(*args)`` on the server's loop (awaited if it is a coroutine function)."""
        return self.portal.call(func, *args)

    def provider(self, **kwargs: Any) -> KeliwebProvider:
        return KeliwebProvider(
            client_id=self.server.client_id,
            client_secret=self.server.client_secret,
            token_url=self.server.token_url,
            **kwargs,
        )

    def seed(self) -> str:
        """A new refresh token, in a new family."""
        return self.on(self.server.issue_refresh_token)

    @property
    def token_requests(self) -> int:
        return self.on(lambda: self.server.token_requests)

    @property
    def reuse_detected(self) -> int:
        return self.on(lambda: self.server.reuse_detected)

    def wait_for_token_requests(self, n: int) -> None:
        self.on(self.server.wait_for_token_requests, n)


def threaded_server(**options: Any) -> Iterator[ThreadedServer]:
    """Start a fake Keliweb server on a loop thread (``options`` go to FakeOAuthServer)."""
    with start_blocking_portal() as portal:
        server = FakeOAuthServer("keliweb", **options)
        portal.call(server.start)
        try:
            yield ThreadedServer(portal, server)
        finally:
            portal.call(server.close)


@pytest.fixture
def sync_server() -> Iterator[ThreadedServer]:
    """A fake Keliweb server (one-hour tokens) on a loop thread of its own."""
    yield from threaded_server(expires_in=3600)


class Apps:
    """Small aiohttp apps of a test, served on 127.0.0.1 from the fake server's loop thread."""

    def __init__(self, server: ThreadedServer) -> None:
        self._server = server
        self._running: list[TestServer] = []

    def start(self, app: web.Application) -> str:
        """Serve ``app``; returns its base URL (``http://127.0.0.1:<port>``)."""

        async def start() -> TestServer:
            test_server = TestServer(app, host="127.0.0.1")
            await test_server.start_server()
            return test_server

        test_server = self._server.on(start)
        self._running.append(test_server)
        return str(test_server.make_url("")).rstrip("/")

    def close(self) -> None:
        for test_server in self._running:
            self._server.on(test_server.close)


@pytest.fixture
def apps(sync_server: ThreadedServer) -> Iterator[Apps]:
    """Start small aiohttp apps of the test's own; closed at teardown."""
    started = Apps(sync_server)
    try:
        yield started
    finally:
        started.close()


class Process:
    """A child process whose stdout lines are read by a thread, so waits can have deadlines."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._stderr_seen = threading.Condition()
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        with self.popen.stdout as stdout:
            for line in stdout:
                self.lines.put(line.strip())
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        with self.popen.stderr as stderr:
            for line in stderr:
                with self._stderr_seen:
                    self._stderr.append(line)
                    self._stderr_seen.notify_all()
        with self._stderr_seen:
            self._stderr.append("")  # end of output
            self._stderr_seen.notify_all()

    def wait_for_stderr(self, text: str, timeout: float) -> None:
        """Wait until ``text`` appears in the process's stderr (a log line)."""
        with self._stderr_seen:
            found = self._stderr_seen.wait_for(
                lambda: (
                    any(text in line for line in self._stderr)
                    or (bool(self._stderr) and self._stderr[-1] == "")
                ),
                timeout=timeout,
            )
            if not found or not any(text in line for line in self._stderr):
                raise AssertionError(f"{text!r} not seen in stderr: {self.stderr}")

    def line(self, timeout: float = 60) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout} s: {self.stderr}") from None
        if line is None:
            raise AssertionError(f"exited with {self.popen.wait()}: {self.stderr}")
        return line

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)[-3000:]

    def results(self, timeout: float = 60) -> list[dict[str, Any]]:
        """Every JSON line until the process exits (which it must, with status 0)."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"did not finish within {timeout} s: {self.stderr}") from None
            if line is None:
                break
            if line.startswith("{"):
                found.append(json.loads(line))
        assert self.popen.wait(10) == 0, self.stderr
        return found

    def stop(self) -> None:
        """Kill it if it still runs; the pipes close once the readers reach their end."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        for reader in self._readers:
            reader.join(10)
