"""SyncTokenManager across fork: a manager created and used before a fork works in the child,
which shares no thread, connection or lock with its parent and never hangs.

The parent is tests/_sync_fork.py, a process of its own (forking the test runner itself would
copy pytest's threads and loops). The fake server runs in this process, on a loop thread.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from sync_support import ThreadedServer, sync_server

from asynctoken import FileStore, SQLiteStore, Token, TokenStore

__all__ = ["sync_server"]

PARENT = str(Path(__file__).with_name("_sync_fork.py"))

pytestmark = pytest.mark.slow


@pytest.fixture
def parent_process(
    sync_server: ThreadedServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[subprocess.Popen[str]]:
    mode, store_file = request.param
    command = [
        sys.executable,
        PARENT,
        mode,
        str(tmp_path / store_file),
        sync_server.server.token_url,
        sync_server.seed(),
    ]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert read_line(proc) == "ready"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"no more output; stderr:\n{proc.stderr.read()[-3000:]}")
    return line.strip()


def read_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(read_line(proc))
    return data


def send(proc: subprocess.Popen[str], command: str) -> None:
    stdin: IO[str] | None = proc.stdin
    assert stdin is not None
    stdin.write(command + "\n")
    stdin.flush()


def fork_during_a_refresh(server: ThreadedServer, proc: subprocess.Popen[str]) -> int:
    """Park a refresh of the parent at the server (its refresh lock held), then fork."""
    server.on(server.server.hold)
    send(proc, "refresh")
    server.wait_for_token_requests(2)  # the first token, then the parked refresh
    send(proc, "fork")
    forked = read_json(proc)
    assert forked["who"] == "parent"
    child: int = forked["forked"]
    return child


def assert_memory_store_error(result: dict[str, Any]) -> None:
    message = result["memory_error"]
    assert "MemoryStore cannot be shared with another process" in message
    assert "FileStore, SQLiteStore or RedisStore" in message
    assert "worker_process_init" in message


@pytest.mark.parametrize(
    "parent_process",
    [("refresh", "tokens.json"), ("refresh", "tokens.db")],
    ids=["FileStore", "SQLiteStore"],
    indirect=True,
)
def test_child_forked_during_a_refresh_waits_for_the_parents_lock_and_never_hangs(
    sync_server: ThreadedServer, parent_process: subprocess.Popen[str]
) -> None:
    fork_during_a_refresh(sync_server, parent_process)
    assert read_json(parent_process) == {"who": "child", "refreshing": True}
    sync_server.on(sync_server.server.release)

    lines = [read_json(parent_process) for _ in range(2)]
    (child,) = [line for line in lines if line["who"] == "child"]
    (parent,) = [line for line in lines if line["who"] == "parent"]
    assert child["same_token"] is True  # the parent's token, read from the store
    assert child["refreshed"] != parent["refreshed"]
    assert_memory_store_error(child)
    assert parent_process.wait(30) == 0
    # The parent's refresh, then the child's (behind the parent's lock): a chain, no reuse.
    records = sync_server.on(lambda: sync_server.server.requests)
    assert [r.outcome for r in records] == ["ok", "ok", "ok"]
    assert records[2].refresh_token == records[1].issued_refresh_token
    assert sync_server.reuse_detected == 0


@pytest.mark.parametrize("parent_process", [("orphan", "tokens.json")], indirect=True)
def test_child_does_not_keep_the_lock_of_a_parent_killed_while_holding_it(
    sync_server: ThreadedServer, parent_process: subprocess.Popen[str]
) -> None:
    """Had the child inherited the parent's lock (a shared file description), the lock would
    outlive the parent and the child's remove() would time out."""
    fork_during_a_refresh(sync_server, parent_process)
    parent_process.send_signal(signal.SIGKILL)
    parent_process.wait(10)
    send(parent_process, "go")  # the child shares the dead parent's stdin and stdout

    child = read_json(parent_process)
    assert child["same_token"] is True
    assert child["removed"] is True
    assert_memory_store_error(child)


async def test_a_reopened_store_has_the_same_data_and_cipher_and_nothing_shared(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """What a forked child's manager gets: the same file or server, prefix and cipher, with
    locks and connections of its own."""
    from asynctoken import RedisStore
    from asynctoken.crypto import AESGCMCipher, generate_key

    cipher = AESGCMCipher({"2026-12": generate_key()}, primary="2026-12")
    token = Token(access_token="access-secret", expires_at=2e9, refresh_token="refresh-secret")
    path = tmp_path / "tokens.json"
    file_store = FileStore(path, cipher=cipher)
    sqlite_store = SQLiteStore(tmp_path / "tokens.db", cipher=cipher)
    redis_store = RedisStore(redis_url, prefix=redis_prefix, cipher=cipher)
    stores: tuple[TokenStore, ...] = (file_store, sqlite_store, redis_store)
    for store in stores:
        await store.put("k", token)
        reopened = store._reopen()  # type: ignore[attr-defined]
        assert type(reopened) is type(store)
        assert reopened is not store
        if isinstance(store, RedisStore):
            assert reopened._client.connection_pool is not store._client.connection_pool
        assert await reopened.get("k") == token
        await reopened.put("k2", token)  # sealed with the same cipher
        assert await store.get("k2") == token
        await reopened.aclose()
        assert await store.get("k") == token  # closing the copy left the original working
        await store.aclose()
    assert b"refresh-secret" not in path.read_bytes()
